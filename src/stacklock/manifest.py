"""The manifest (`stacklock.yaml`): typed, strict, every error reported at once with its path."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from stacklock.core import grammar
from stacklock.errors import InvalidInput, Problem

SCHEMA_VERSION = 1

_NAME = r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$"
_DRIVER = r"^\d{3}\.\d{2,3}(\.\d{2})?$"  # 580.95.05, 570.26, 535.309.01
_CUDA = r"^\d{2}\.\d(\.\d{1,3})?$"  # 12.8, 13.0.2, 11.8.89
_SEMVER = r"^\d+\.\d+\.\d+$"
_TORCH = r"^\d+\.\d+\.\d+\+(cpu|cu\d{3})$"  # 2.9.1+cu130, 2.13.0+cpu
_SHA256 = r"^[0-9a-f]{64}$"


class Strict(BaseModel):
    # strict: a count is an integer, a switch a boolean (no `true`, "2" or 2.0 coerced)
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True,
                              strict=True)


# Every string that reaches a generated file has its own grammar (stacklock.core.grammar).
Host = Annotated[str, AfterValidator(grammar.host)]
SshUser = Annotated[str, AfterValidator(grammar.ssh_user)]
Bastion = Annotated[str, AfterValidator(grammar.bastion)]
AptPackage = Annotated[str, AfterValidator(grammar.apt_package)]
DebianVersion = Annotated[str, AfterValidator(grammar.debian_version)]
Url = Annotated[str, AfterValidator(grammar.url)]
UrlOrPath = Annotated[str, AfterValidator(grammar.url_or_path)]
PlainPath = Annotated[str, AfterValidator(grammar.path)]
AptSuite = Annotated[str, AfterValidator(grammar.apt_suite)]
AptComponent = Annotated[str, AfterValidator(grammar.apt_component)]
TrustedHost = Annotated[str, AfterValidator(grammar.trusted_host)]
Zone = Annotated[str, AfterValidator(grammar.availability_zone)]
KeyName = Annotated[str, AfterValidator(grammar.key_name)]
Bucket = Annotated[str, AfterValidator(grammar.bucket)]
DockerImage = Annotated[str, AfterValidator(grammar.docker_image)]
UrlRegex = Annotated[str, AfterValidator(grammar.url_regex)]
NameGlob = Annotated[str, AfterValidator(grammar.name_glob)]


# --------------------------------------------------------------------------- stack


class OperatingSystem(Strict):
    distribution: Literal["ubuntu", "debian"] = Field(description="Linux distribution of the nodes")
    release: Literal["22.04", "24.04", "12"] = Field(description="distribution release")

    @model_validator(mode="after")
    def _release_matches(self) -> OperatingSystem:
        valid = {"ubuntu": ("22.04", "24.04"), "debian": ("12",)}[self.distribution]
        if self.release not in valid:
            raise ValueError(
                f"release {self.release!r} is not a supported {self.distribution} release; "
                f"use one of {', '.join(valid)}"
            )
        return self

    @property
    def key(self) -> str:
        """`ubuntu2404`, `debian12`: the form NVIDIA's repositories use."""
        return f"{self.distribution}{self.release.replace('.', '')}"


class Pinned(Strict):
    """A component pinned to an exact version; `apt_version` overrides the derived apt string."""

    version: str
    apt_version: DebianVersion | None = Field(
        default=None, description="exact apt version string; derived from the OS when omitted"
    )


class NvidiaDriver(Pinned):
    version: Annotated[str, Field(pattern=_DRIVER, description="full driver version, 580.95.05")]
    kernel_module: Literal["auto", "open", "proprietary"] = Field(
        default="auto", description="open or proprietary kernel modules; auto picks by GPU"
    )

    @property
    def branch(self) -> int:
        return int(self.version.split(".")[0])


class Cuda(Pinned):
    version: Annotated[str, Field(pattern=_CUDA, description="CUDA toolkit version, 13.0.2")]
    components: Literal["toolkit", "runtime"] = Field(
        default="toolkit", description="the whole toolkit, or only the runtime libraries"
    )

    @property
    def major_minor(self) -> str:
        major, minor = self.version.split(".")[:2]
        return f"{major}.{minor}"


class Docker(Pinned):
    version: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$", description="engine version")]
    containerd_apt_version: DebianVersion | None = Field(
        default=None,
        description="Ubuntu (Docker's repository): the exact apt version of containerd.io; "
                    "derived from the engine release where stacklock knows the pairing")


class ContainerToolkit(Pinned):
    version: Annotated[str, Field(pattern=_SEMVER, description="nvidia-container-toolkit version")]


class Python(Strict):
    version: Annotated[str, Field(pattern=r"^3\.\d{1,2}$", description="Python minor version")]


class Torch(Strict):
    version: Annotated[str, Field(pattern=_TORCH, description="torch with its build, 2.9.1+cu130")]

    @property
    def release(self) -> str:
        return self.version.split("+")[0]

    @property
    def variant(self) -> str:
        return self.version.split("+")[1]

    @property
    def cuda(self) -> str | None:
        """`13.0` for a cu130 build, None for a CPU build."""
        v = self.variant
        if v == "cpu":
            return None
        digits = v[2:]
        return f"{digits[:-1]}.{digits[-1]}"


class TorchServe(Strict):
    version: Annotated[str, Field(pattern=_SEMVER, description="torchserve version")]
    model_archiver_version: Annotated[str | None, Field(pattern=_SEMVER)] = Field(
        default=None, description="torch-model-archiver version; the torchserve version if omitted"
    )

    @property
    def archiver(self) -> str:
        return self.model_archiver_version or self.version


class Java(Strict):
    version: Literal["11", "17", "21"] = Field(description="OpenJDK major version")
    package: AptPackage | None = Field(default=None,
                                       description="apt package; openjdk-N-jre-headless")
    apt_version: DebianVersion | None = Field(default=None,
                                              description="exact apt version of the package")

    @property
    def apt_package(self) -> str:
        return self.package or f"openjdk-{self.version}-jre-headless"


#: the largest smoke input (`models[].smoke.input_file`): a sample request, not a data set
MAX_SMOKE_INPUT_BYTES = 64 * 1024
#: the most numbers a smoke test may expect
MAX_SMOKE_NUMBERS = 1024
_CONTENT_TYPE = r"^[a-z]+/[a-z0-9][a-z0-9.+-]*$"


class ModelSmoke(Strict):
    """A sample request and the answer the model must give (`verify` sends it to TorchServe)."""

    input: str | None = Field(default=None, min_length=1,
                              description="the request body, inline (one line of text)")
    input_file: PlainPath | None = Field(
        default=None, description="a file holding the request body, relative to the manifest "
                                  f"(at most {MAX_SMOKE_INPUT_BYTES // 1024} KiB)")
    content_type: Annotated[str, Field(pattern=_CONTENT_TYPE)] = "application/octet-stream"
    sha256: Annotated[str | None, Field(pattern=_SHA256)] = Field(
        default=None, description="sha256 of the whole response body")
    expected: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None, min_length=1, max_length=MAX_SMOKE_NUMBERS,
        description="the numbers of the response (a JSON number or list of numbers, flattened)")
    tolerance: Annotated[float | None, Field(ge=0, allow_inf_nan=False)] = Field(
        default=None, description="largest absolute difference per number (default 1e-6)")

    @field_validator("tolerance", mode="before")
    @classmethod
    def _tolerance_text(cls, v: Any) -> Any:
        # YAML 1.1 reads `1e-6` (no dot) as text: take it as the number it means
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                raise ValueError(f"{v!r} is not a number; write 0.000001 or 1.0e-6") from None
        return v

    @model_validator(mode="after")
    def _one_of_each(self) -> ModelSmoke:
        if (self.input is None) == (self.input_file is None):
            raise ValueError("give exactly one of input (the request body inline, one line) or "
                             "input_file (a file next to the manifest)")
        if (self.sha256 is None) == (self.expected is None):
            raise ValueError("give exactly one of sha256 (of the whole response body) or "
                             "expected (the numbers of the response, with tolerance)")
        if self.tolerance is not None and self.expected is None:
            raise ValueError("tolerance applies to expected numbers only: remove it, or give "
                             "expected instead of sha256")
        return self


class Model(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
    version: Annotated[str, Field(pattern=r"^[0-9][0-9A-Za-z.]*$")]
    archive: str = Field(description="path (relative to the manifest) or https:// URL of the .mar")
    sha256: Annotated[str, Field(pattern=_SHA256, description="64 lowercase hex digits")]
    smoke: ModelSmoke | None = Field(
        default=None, description="a sample request and the answer verify expects from TorchServe")

    @field_validator("archive")
    @classmethod
    def _archive(cls, v: str) -> str:
        if not v.endswith(".mar"):
            raise ValueError("archive must be a TorchServe model archive ending in .mar")
        if "://" in v and not v.startswith("https://"):
            raise ValueError("archive URLs must use https://")
        return grammar.url(v, ("https",)) if "://" in v else grammar.path(v)


def _is_loopback(address: str) -> bool:
    host = re.sub(r"^https?://", "", address).rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TorchServeConfig(Strict):
    inference_address: str = "http://127.0.0.1:8080"
    management_address: str = "http://127.0.0.1:8081"
    metrics_address: str = "http://127.0.0.1:8082"
    default_workers_per_model: Annotated[int, Field(ge=1, le=64)] = 1
    job_queue_size: Annotated[int, Field(ge=1, le=100000)] = 100
    max_request_size: Annotated[int, Field(ge=1024)] = 6553500
    max_response_size: Annotated[int, Field(ge=1024)] = 6553500
    token_authorization: bool = True
    enable_model_api: bool = False
    allowed_urls: list[UrlRegex] = Field(
        default_factory=list, description="regexes of model URLs; empty: the model store only"
    )
    metrics_mode: Literal["prometheus", "log"] = "prometheus"
    token_expiration_min: Annotated[int | None, Field(ge=1, le=525600)] = Field(
        default=None,
        description="minutes TorchServe's inference and management keys live (TorchServe's "
                    "`token_expiration_min`; unset: its default, 60). stacklock renews an "
                    "expired key through TorchServe's token API, so verify works at any hour")

    @field_validator("inference_address", "management_address", "metrics_address")
    @classmethod
    def _address(cls, v: str) -> str:
        m = re.fullmatch(r"https?://(\[[^\]]*\]|[^:/\[\]]+):([^:/]*)", v)
        if not m:
            raise ValueError("address must look like http://HOST:PORT")
        where, port = m.groups()
        grammar.host(where[1:-1]) if where.startswith("[") else grammar.hostname_or_ipv4(where)
        grammar.port(port)
        return v

    @property
    def management_on_loopback(self) -> bool:
        return _is_loopback(self.management_address)

    @property
    def metrics_on_loopback(self) -> bool:
        return _is_loopback(self.metrics_address)


class Stack(Strict):
    os: OperatingSystem
    nvidia_driver: NvidiaDriver
    cuda: Cuda
    docker: Docker
    nvidia_container_toolkit: ContainerToolkit
    python: Python
    torch: Torch
    torchserve: TorchServe
    java: Java
    models: list[Model] = Field(default_factory=list)
    torchserve_config: TorchServeConfig = Field(default_factory=TorchServeConfig)
    ami: AmiSpec | None = Field(default=None, description="the machine image for AWS nodes")

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[Model]) -> list[Model]:
        seen: set[str] = set()
        for m in v:
            if m.name in seen:
                raise ValueError(f"model {m.name!r} is listed twice; give each model one entry")
            seen.add(m.name)
        return v


class AmiSpec(Strict):
    owner: Annotated[str, Field(pattern=r"^(\d{12}|amazon|self)$", description="AMI owner id")]
    name: str = Field(min_length=3, description="exact AMI name, no wildcards")

    @field_validator("name")
    @classmethod
    def _exact(cls, v: str) -> str:
        if any(c in v for c in "*?"):
            raise ValueError("AMI name must be exact: no wildcards (pins are exact)")
        return grammar.ami_name(v)


Stack.model_rebuild()

# --------------------------------------------------------------------------- sources


class AptRepository(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")]
    uri: Url
    suite: AptSuite = Field(description="suite, or './' style path for a flat repository")
    components: list[AptComponent] = Field(default_factory=list)
    signing_key: UrlOrPath | None = Field(
        default=None, description="URL or path (relative to the manifest) of the armored key"
    )
    trusted: bool = Field(default=False, description="accept unsigned metadata (test mirrors)")

    @model_validator(mode="after")
    def _key_or_trusted(self) -> AptRepository:
        if self.signing_key is None and not self.trusted:
            raise ValueError(
                "an apt repository needs signing_key (or trusted: true for an unsigned mirror)"
            )
        return self


class PipSource(Strict):
    index_url: Url = "https://pypi.org/simple"
    extra_index_urls: list[Url] | None = Field(
        default=None,
        description="defaults to the PyTorch index of the stack's torch build",
    )
    find_links: list[UrlOrPath] = Field(default_factory=list)
    trusted_hosts: list[TrustedHost] = Field(default_factory=list)


class PackageSources(Strict):
    apt: Literal["official"] | list[AptRepository] = Field(
        default="official",
        description="'official' (NVIDIA CUDA + Docker repositories) or a list of repositories",
    )
    pip: PipSource = Field(default_factory=PipSource)
    ca_bundle: PlainPath | None = Field(default=None,
                                        description="CA bundle (path) for the mirror")


# --------------------------------------------------------------------------- environments


def _cidr(c: str) -> str:
    try:
        ipaddress.ip_network(c, strict=True)
    except ValueError as exc:
        raise ValueError(f"{c!r} is not a CIDR block like 203.0.113.0/24") from exc
    return c


def _admin_cidr(c: str) -> str:
    # the gpu_node_aws module refuses these too: validate says so before plan does
    if ipaddress.ip_network(_cidr(c)).prefixlen == 0:
        raise ValueError(f"{c!r} opens SSH to the whole internet; name your admin networks "
                         "(203.0.113.0/24)")
    return c


Cidr = Annotated[str, AfterValidator(_cidr)]
AdminCidr = Annotated[str, AfterValidator(_admin_cidr)]


class RolloutPolicy(Strict):
    """How `stacklock rollout` moves an environment: `canary` nodes first, then batches of
    `batch` nodes (or `N%` of the environment), each verified before the next; the rollout
    halts when more than `max_failures` nodes fail."""

    canary: Annotated[int, Field(ge=0, le=1000)] = 1
    batch: Annotated[int, Field(ge=1, le=1000)] | Annotated[
        str, Field(pattern=r"^(100|[1-9][0-9]?)%$")] = "25%"
    max_failures: Annotated[int, Field(ge=0, le=1000)] = 0


class AwsEnvironment(Strict):
    provider: Literal["aws"]
    stack: str
    rollout: RolloutPolicy | None = Field(
        default=None, description="canary, batch size and failure threshold of a rollout")
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")]
    instance_type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")]
    count: Annotated[int, Field(ge=1, le=100)] = 1
    root_volume_size: Annotated[int, Field(ge=30, le=16384)] = 200
    key_name: KeyName | None = None
    admin_cidrs: list[AdminCidr] = Field(min_length=1)
    client_cidrs: list[Cidr] = Field(min_length=1)
    vpc_id: Annotated[str | None, Field(pattern=r"^vpc-[0-9a-f]{8,17}$")] = None
    subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = Field(
        default_factory=list
    )
    availability_zones: list[Zone] = Field(default_factory=list)
    account_id: Annotated[str | None, Field(pattern=r"^\d{12}$")] = None
    access: Literal["public", "bastion", "ssm"] = "public"
    bastion: Bastion | None = None
    state_bucket: Bucket | None = None
    state_region: Annotated[str | None, Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")] = None
    gpu: bool = Field(
        default=True,
        description="the nodes have an NVIDIA GPU (false: CPU-only hosts or a test bed; the "
                    "driver packages are installed and held, GPU-only steps are skipped, and "
                    "verify does not require a GPU or a loaded driver)")


    @model_validator(mode="after")
    def _bastion(self) -> AwsEnvironment:
        if self.access == "bastion" and not self.bastion:
            raise ValueError("access 'bastion' needs bastion: the jump host (user@host)")
        return self


class StaticHost(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]*$", max_length=253)]
    address: str
    user: SshUser = "root"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    host_key: str | None = Field(
        default=None,
        exclude=True,  # connection trust, not infrastructure: never rendered into Terraform
        description="the host's SSH public host key (`ssh-ed25519 AAAA...`, as in "
                    "/etc/ssh/ssh_host_ed25519_key.pub): apply pins it in the environment's "
                    "known_hosts, and `stacklock trust` never overrides it")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return grammar.host(v)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from stacklock.core.hostkeys import HostKeyError, parse_public_key

        try:
            return parse_public_key(v).line()
        except HostKeyError as exc:
            raise ValueError(f"not an OpenSSH public key line: {exc}") from None


class StaticEnvironment(Strict):
    provider: Literal["static"]
    stack: str
    rollout: RolloutPolicy | None = Field(
        default=None, description="canary, batch size and failure threshold of a rollout")
    hosts: list[StaticHost] = Field(min_length=1)
    gpu: bool = Field(
        default=True,
        description="the nodes have an NVIDIA GPU (false: CPU-only hosts or a test bed; the "
                    "driver packages are installed and held, GPU-only steps are skipped, and "
                    "verify does not require a GPU or a loaded driver)")

    @field_validator("hosts")
    @classmethod
    def _unique(cls, v: list[StaticHost]) -> list[StaticHost]:
        names = [grammar.normal_host(h.name) for h in v]
        addrs = [f"{grammar.normal_host(h.address)}:{h.port}" for h in v]
        found = []
        for label, values in (("name", names), ("address", addrs)):
            dup = sorted({x for x in values if values.count(x) > 1})
            if dup:
                found.append(f"duplicate host {label} {', '.join(dup)}")
        if found:
            raise ValueError("; ".join(found) + "; list each host once")
        return v

    @property
    def count(self) -> int:
        return len(self.hosts)


class LabEnvironment(Strict):
    provider: Literal["lab"]
    stack: str
    rollout: RolloutPolicy | None = Field(
        default=None, description="canary, batch size and failure threshold of a rollout")
    count: Annotated[int, Field(ge=1, le=60)] = 1

    @property
    def gpu(self) -> bool:
        """Lab nodes are containers on this machine: never a GPU."""
        return False


Environment = Annotated[
    AwsEnvironment | StaticEnvironment | LabEnvironment, Field(discriminator="provider")
]


class LabSettings(Strict):
    network: str = Field(default="10.213.0.0/16", description="address range the lab owns")
    image: DockerImage = Field(default="stacklock-lab:bookworm", description="local node image")
    mirror_port: Annotated[int, Field(ge=1024, le=65535)] = 8700

    @field_validator("network")
    @classmethod
    def _net(cls, v: str) -> str:
        net = ipaddress.ip_network(v, strict=True)
        if net.prefixlen > 20 or not net.is_private:
            raise ValueError("lab network must be a private range of /20 or larger")
        return v


PARITY_ALLOWED_CHOICES = ("count", "region", "availability_zones", "subnet_ids", "vpc_id",
                          "hosts", "key_name", "account_id", "admin_cidrs", "client_cidrs",
                          "access", "bastion", "state_bucket", "state_region")


class Parity(Strict):
    may_differ: list[str] = Field(
        default_factory=lambda: ["count", "region", "availability_zones", "subnet_ids",
                                 "vpc_id", "hosts", "account_id", "state_bucket",
                                 "state_region", "key_name", "bastion"],
        description="node attributes that may differ between environments",
    )
    diff_ignore: list[NameGlob] = Field(
        default_factory=list, max_length=256,
        description="globs of component or package names `stacklock diff` leaves out "
                    "(expected differences: os.kernel, linux-image-*, ...)",
    )

    @field_validator("may_differ")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for item in v:
            if item not in PARITY_ALLOWED_CHOICES:
                raise ValueError(
                    f"{item!r} cannot differ between environments; allowed: "
                    + ", ".join(PARITY_ALLOWED_CHOICES)
                )
        return v


_REGION = r"^[a-z]{2}(-gov)?-[a-z]+-\d$"


def _s3_key(value: str) -> str:
    """An S3 object key: safe characters, no leading '/', no empty, '.' or '..' segment."""
    if not re.fullmatch(r"[A-Za-z0-9!_.*'()/-]{1,512}", value) or any(
            seg in ("", ".", "..") for seg in value.split("/")):
        raise ValueError(f"{value!r} is not an S3 key like team/ledger.jsonl (letters, digits, "
                         "!_.*'()-, '/' between non-empty segments)")
    return value


S3Key = Annotated[str, AfterValidator(_s3_key)]


class LedgerSettings(Strict):
    """Where the evidence ledger lives (`stacklock.flows.ledger`). Default: the S3 state
    bucket when every environment is on AWS and they share one, else a local file."""

    store: Literal["local", "s3"] | None = Field(
        default=None, description="local: <output_dir>/.stacklock/ledger.jsonl; s3: an object "
                                  "in an S3 bucket (default: chosen from the environments)")
    bucket: Bucket | None = Field(default=None, description="s3: the bucket (default: the "
                                                            "environments' state bucket)")
    region: Annotated[str | None, Field(pattern=_REGION)] = Field(
        default=None, description="s3: the bucket's region (default: its state_region)")
    key: S3Key | None = Field(
        default=None, description="s3: the object key (default: <project>/ledger.jsonl)")

    @model_validator(mode="after")
    def _local_has_no_s3(self) -> LedgerSettings:
        given = [k for k in ("bucket", "region", "key") if getattr(self, k) is not None]
        if self.store == "local" and given:
            raise ValueError(f"{', '.join(given)} name an S3 object, but store is local; "
                             "remove them, or set store: s3")
        return self


@dataclass(frozen=True)
class LedgerLocation:
    """The ledger's home: `bucket` None means the local file."""

    bucket: str | None = None
    region: str = ""
    key: str = ""
    why: str = ""  # which setting chose it, for messages

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else ""


def ledger_location(m: Manifest) -> tuple[LedgerLocation, list[Problem]]:
    """Where the ledger of `m` lives, or the problem that leaves it without a home."""
    led = m.ledger
    key = led.key or f"{m.project}/ledger.jsonl"
    if led.store == "local":
        return LedgerLocation(why="ledger.store: local"), []
    aws = {n: e for n, e in m.environments.items() if isinstance(e, AwsEnvironment)}
    homes: dict[str, list[str]] = {}
    regions: dict[str, str] = {}
    for name, env in aws.items():
        bucket = env.state_bucket or f"{m.project}-tfstate"
        homes.setdefault(bucket, []).append(name)
        regions.setdefault(bucket, env.state_region or env.region)
    if led.bucket:
        region = led.region or regions.get(led.bucket, "")
        if not region:
            return LedgerLocation(), [Problem(
                "ledger.region", f"bucket {led.bucket!r} is no environment's state bucket, "
                "so its region is unknown", "name it: ledger.region: us-east-1", rule="schema")]
        return LedgerLocation(led.bucket, region, key, "ledger.bucket"), []
    all_aws = len(aws) == len(m.environments)
    if led.store is None and not all_aws:
        return LedgerLocation(why="not every environment is on AWS"), []
    if len(homes) != 1:
        where = "; ".join(f"{', '.join(envs)}: {b}" for b, envs in sorted(homes.items()))
        return LedgerLocation(), [Problem(
            "ledger", ("store s3 needs a bucket: no environment is on AWS" if not homes else
                       f"the environments keep their state in different buckets ({where}), "
                       "so the shared ledger has no one home"),
            "name it: ledger: {bucket: BUCKET, region: REGION} (every writer needs access), "
            "or ledger: {store: local}", rule="schema")]
    bucket = next(iter(homes))
    return LedgerLocation(bucket, led.region or regions[bucket], key,
                          "the environments' state bucket"), []


class Manifest(Strict):
    version: Literal[1] = Field(description="manifest schema version")
    project: Annotated[str, Field(pattern=_NAME, description="lowercase name, 2-32 chars")]
    output_dir: str = Field(default=".", description="where render writes, relative to manifest")
    package_sources: PackageSources = Field(default_factory=PackageSources)
    stacks: dict[Annotated[str, Field(pattern=_NAME)], Stack] = Field(min_length=1)
    environments: dict[Annotated[str, Field(pattern=_NAME)], Environment] = Field(min_length=1)
    parity: Parity = Field(default_factory=Parity)
    lab: LabSettings = Field(default_factory=LabSettings)
    promotion: list[Annotated[str, Field(pattern=_NAME)]] = Field(
        default_factory=list,
        description="promotion order of environments (dev, staging, prod): an environment "
                    "may only move to a revision the one before it verified")
    promotion_soak: Annotated[str, Field(pattern=r"^[0-9]{1,6}(s|m|h|d)$")] | None = Field(
        default=None, description="minimum age of the previous environment's evidence: 30m, 1h")
    ledger: LedgerSettings = Field(
        default_factory=LedgerSettings,
        description="where the evidence ledger lives: a local file, or an S3 object")

    @field_validator("output_dir")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in Path(v).parts:
            raise ValueError("output_dir must be a relative path inside the manifest's folder")
        return grammar.path(v)

    @model_validator(mode="after")
    def _promotion_order(self) -> Manifest:
        unknown = [e for e in self.promotion if e not in self.environments]
        twice = sorted({e for e in self.promotion if self.promotion.count(e) > 1})
        if unknown:
            raise ValueError(f"promotion names unknown environment(s) {', '.join(unknown)}; "
                             "use: " + ", ".join(self.environments))
        if twice:
            raise ValueError(f"promotion lists {', '.join(twice)} more than once; "
                             "name each environment once")
        if len(self.promotion) == 1:
            raise ValueError("promotion needs at least two environments (from, to)")
        return self


# --------------------------------------------------------------------------- loading


class LoadedManifest:
    """A validated manifest with the file it came from."""

    def __init__(self, manifest: Manifest, path: Path, raw_text: str) -> None:
        self.manifest = manifest
        self.path = path
        self.raw_text = raw_text

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def output_root(self) -> Path:
        return (self.base_dir / self.manifest.output_dir).resolve()

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def stack_of(self, env: str) -> Stack:
        return self.manifest.stacks[self.manifest.environments[env].stack]


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif i == 2 and item in ("aws", "static", "lab") and loc[0] == "environments":
            continue  # the discriminator tag of a tagged union adds nothing for the user
        elif item.startswith(("function-after[", "literal[", "union[", "list[")) or item == "[key]":
            continue  # "[key]": the error is about the mapping key itself (its name)
        else:
            parts.append(item)
    return ".".join(parts)


# What each pattern means, in words: shown instead of the raw regular expression.
_PATTERN_HELP: dict[str, tuple[str, str]] = {
    _NAME: ("a name of 2-32 lowercase letters, digits and '-', starting with a letter",
            "prod-stack"),
    _DRIVER: ("a full driver version", "580.95.05"),
    _CUDA: ("a CUDA version", "13.0.2 or 13.0"),
    _SEMVER: ("an exact version", "1.18.0"),
    _TORCH: ("a torch version with its build", "2.9.1+cu130 or 2.13.0+cpu"),
    _SHA256: ("a sha256 of 64 lowercase hex digits", "the output of sha256sum FILE"),
    r"^3\.\d{1,2}$": ("a Python minor version", '"3.12" (quoted)'),
    r"^[A-Za-z0-9][A-Za-z0-9_-]*$": ("a model name of letters, digits, '_' and '-'",
                                     "tiny-linear"),
    r"^[0-9][0-9A-Za-z.]*$": ("a model version", '"1.0" (quoted)'),
    _CONTENT_TYPE: ("a media type", "application/json or image/jpeg"),
    r"^(\d{12}|amazon|self)$": ("an AMI owner: a 12-digit account id, amazon or self",
                                '"099720109477" (quoted)'),
    r"^[a-z0-9][a-z0-9.-]*$": ("a lowercase name of letters, digits, '.' and '-'", "node-1"),
    r"^https?://\S+$": ("an http:// or https:// URL", "https://mirror.example.com/apt"),
    r"^[a-z]{2}(-gov)?-[a-z]+-\d$": ("an AWS region", "us-east-1"),
    r"^[a-z][a-z0-9-]*\.[a-z0-9]+$": ("an EC2 instance type (family.size)", "g6e.xlarge"),
    r"^vpc-[0-9a-f]{8,17}$": ("a VPC id", "vpc-0123456789abcdef0"),
    r"^subnet-[0-9a-f]{8,17}$": ("a subnet id", "subnet-0123456789abcdef0"),
    r"^\d{12}$": ("a 12-digit AWS account id", '"111122223333" (quoted)'),
}


def _hint(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "string_type" and isinstance(err.get("input"), int | float):
        return ('quote it: YAML reads an unquoted 13.0 or 3.10 as a number '
                '(write "13.0.2", "3.10")')
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return f"write {_PATTERN_HELP[ctx['pattern']][0]}, like {_PATTERN_HELP[ctx['pattern']][1]}"
    if kind == "literal_error" and isinstance(err.get("input"), int | float):
        return f"use one of {ctx.get('expected', '')}, quoted (YAML reads 17 as a number)"
    if kind == "extra_forbidden":
        return "remove it, or check its spelling against the manifest reference in the README"
    if kind == "missing":
        return "add this field"
    if kind == "literal_error":
        return f"use one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        return f"match the pattern {ctx.get('pattern', '')}"
    if kind == "union_tag_invalid":
        return "set provider to one of 'aws', 'static', 'lab'"
    if kind == "union_tag_not_found":
        return "add provider: aws | static | lab"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "give a value of the expected type"
    return ""


def _other_union_branch(err: Any) -> bool:
    """An error from the branch of `'official' | list[...]` the input evidently did not mean."""
    loc = [str(x) for x in err["loc"]]
    value = err.get("input")
    if any(x.startswith("literal[") for x in loc) and isinstance(value, list | dict):
        return True
    return (err.get("type") == "list_type" and any(x.startswith("list[") for x in loc)
            and isinstance(value, str))


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        if _other_union_branch(err):
            continue
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        kind = err.get("type")
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
            what = "name" if err["loc"] and err["loc"][-1] == "[key]" else "value"
            msg = f"{what} {err.get('input')!r} is not {_PATTERN_HELP[ctx['pattern']][0]}"
        elif kind == "string_type" and isinstance(err.get("input"), int | float):
            msg = f"expected a string, got the number {err.get('input')!r}"
        problems.append(
            Problem(path=_loc_to_path(tuple(err["loc"])), message=msg, hint=_hint(dict(err)),
                    rule="schema")
        )
    return problems


def _cross_references(m: Manifest) -> list[Problem]:
    return _raw_cross_references(m.model_dump()) + ledger_location(m)[1]


def _raw_cross_references(data: dict[str, Any]) -> list[Problem]:
    """Environments naming unknown stacks, hosts shared between environments.

    Works on the raw mapping too, so that these are reported beside schema errors."""
    problems: list[Problem] = []
    stacks = data.get("stacks")
    envs = data.get("environments")
    if not isinstance(envs, dict):
        return problems
    stack_names = sorted(str(k) for k in stacks) if isinstance(stacks, dict) else []
    for env_name, env in envs.items():
        if not isinstance(env, dict) or not stack_names:
            continue  # no stacks at all: that is the problem reported
        ref = env.get("stack")
        if isinstance(ref, str) and ref not in stack_names:
            problems.append(
                Problem(
                    path=f"environments.{env_name}.stack",
                    message=f"names stack {ref!r}, which is not defined under stacks",
                    hint="use one of: " + ", ".join(stack_names),
                    rule="schema",
                )
            )
    seen: dict[str, str] = {}
    for env_name, env in envs.items():
        if not isinstance(env, dict) or env.get("provider") != "static":
            continue
        hosts = env.get("hosts")
        if not isinstance(hosts, list):
            continue
        for i, host in enumerate(hosts):
            if not isinstance(host, dict) or not isinstance(host.get("address"), str):
                continue
            key = f"{host['address']}:{host.get('port', 22)}"
            if key in seen and seen[key] != env_name:
                problems.append(
                    Problem(
                        path=f"environments.{env_name}.hosts[{i}].address",
                        message=f"{key} is already a host of environment {seen[key]!r}",
                        hint="a host belongs to exactly one environment",
                        rule="schema",
                    )
                )
            seen.setdefault(key, env_name)
    return problems


MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB: a manifest is a page of YAML, not a data set
MAX_DEPTH = 64  # mappings and lists nested deeper than any manifest needs
MAX_NODES = 200_000  # values after expanding aliases (a billion laughs stops here)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last).

    Merge keys (`<<: *defaults`) are standard YAML and accepted: a key given explicitly
    overrides a merged one, as YAML says; only explicit keys given twice are refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # flatten_mapping (in super) merges it
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _too_deep(text: str) -> int | None:
    """The line where nesting passes MAX_DEPTH (None: it never does); the scanner is not
    recursive, so this runs before the (recursive) composer can overflow the stack."""
    depth = 0
    starts = (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken,
              yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)
    ends = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, starts):
            depth += 1
            if depth > MAX_DEPTH:
                return int(token.start_mark.line) + 1
        elif isinstance(token, ends):
            depth -= 1
    return None


def _oversized(data: Any) -> bool:
    """More than MAX_NODES values once aliases are expanded (or a recursive alias)."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_NODES:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _path_join(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _text_problems(data: Any) -> list[Problem]:
    """Every string of the raw manifest (keys too) that no output format can carry safely:
    control characters and newlines, template markers (`${`, `%{`, `{{`, `{%`, `{#`)."""
    problems: list[Problem] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and (why := grammar.text_problem(k)):
                    problems.append(Problem(path=_path_join(where, repr(k)),
                                            message=f"the key {k!r} {why}",
                                            hint="rename it", rule="schema"))
                    continue
                stack.append((_path_join(where, k), v))
        elif isinstance(item, list):
            stack.extend((_path_join(where, i), v) for i, v in enumerate(item))
        elif isinstance(item, str) and (why := grammar.text_problem(item)):
            problems.append(Problem(path=where, message=f"value {item[:80]!r} {why}",
                                    hint="remove it: write plain text on one line",
                                    rule="schema"))
    return sorted(problems, key=lambda p: p.path)


def _name_clashes(data: dict[str, Any]) -> list[Problem]:
    """Stack and environment names that differ only by surrounding space or case."""
    problems: list[Problem] = []
    for section in ("stacks", "environments"):
        names = data.get(section)
        if not isinstance(names, dict):
            continue
        seen: dict[str, str] = {}
        for name in names:
            if not isinstance(name, str):
                continue
            norm = name.strip().casefold()
            if norm in seen:
                problems.append(Problem(
                    path=f"{section}.{name.strip()}",
                    message=f"{name!r} and {seen[norm]!r} are the same name once spaces and "
                            "case are ignored",
                    hint="give each one a distinct name, or merge them", rule="schema"))
            else:
                seen[norm] = name
    return problems


def _partial_rules(data: dict[str, Any]) -> list[Problem]:
    """Compatibility errors of the parts of a manifest that did validate, so that a schema
    error and a rule error are reported together (warnings wait for a valid manifest)."""
    try:
        from stacklock import rules

        return [p for p in rules.check_raw(data) if p.severity == "error"]
    except Exception:  # the schema problems are reported whatever happens here
        return []


def _yaml_error(source: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"{source}: {message}",
        problems=[Problem(path="", message=message, hint="fix the YAML", rule="yaml")])


def parse_manifest(text: str, source: str = "stacklock.yaml") -> Manifest:
    """Parse and validate manifest text; raise InvalidInput listing every problem."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise _yaml_error(source, f"the manifest is {len(text)} characters long; at most "
                                  f"{MAX_MANIFEST_BYTES} (1 MiB)")
    try:
        line = _too_deep(text)
        if line is not None:
            raise _yaml_error(source, f"nested more than {MAX_DEPTH} levels deep at line {line}")
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InvalidInput(
            f"{source}: YAML syntax error{where}: {problem}",
            problems=[Problem(path="", message=f"YAML syntax error{where}: {problem}",
                              hint="fix the YAML syntax", rule="yaml")],
        ) from None
    except RecursionError:
        raise _yaml_error(source, "nested too deeply") from None
    if data is None:
        raise InvalidInput(
            f"{source}: the manifest is empty",
            problems=[Problem(path="", message="the manifest is empty",
                              hint="start from examples/lab.yaml", rule="schema")],
        )
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{source}: the manifest must be a mapping, got {type(data).__name__}",
            problems=[Problem(path="", message="the manifest must be a YAML mapping",
                              hint="start from examples/lab.yaml", rule="schema")],
        )
    if _oversized(data):
        raise _yaml_error(source, f"the manifest expands to more than {MAX_NODES} values "
                                  "(aliases repeated or recursive)")
    early = _text_problems(data) + _name_clashes(data)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = list(early)
        flagged = {p.path for p in problems}
        problems += [p for p in problems_from_validation(exc) if p.path not in flagged]
        known = {p.path for p in problems}
        problems += [p for p in _raw_cross_references(data) if p.path not in known]
        problems += _partial_rules(data)
        raise InvalidInput(f"{source}: {len(problems)} problem(s)", problems=problems) from None
    problems = early + _cross_references(manifest)
    if problems:
        problems += _partial_rules(data)
        raise InvalidInput(f"{source}: {len(problems)} problem(s)", problems=problems)
    return manifest


def _unreadable(p: Path, message: str, hint: str) -> InvalidInput:
    return InvalidInput(f"{p}: {message}",
                        problems=[Problem(path="", message=f"{p}: {message}", hint=hint,
                                          rule="yaml")])


def load_manifest(path: Path | str) -> LoadedManifest:
    p = Path(path)
    try:
        is_dir = p.is_dir()
        exists = p.exists()
    except OSError as exc:
        raise _unreadable(p, f"cannot be read ({exc.strerror or exc})",
                          "check the path and its permissions") from None
    if is_dir:
        raise _unreadable(p, "is a directory, not a manifest file",
                          "pass --manifest PATH/stacklock.yaml")
    if not exists:
        raise InvalidInput(
            f"{p}: no such manifest",
            problems=[Problem(path="", message=f"{p}: no such file",
                              hint="pass --manifest PATH, or run where stacklock.yaml is")],
        )
    if not p.is_file():  # a FIFO or a device would block or never end
        raise _unreadable(p, "is not a regular file", "pass the manifest file itself")
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise _unreadable(p, f"cannot be read ({exc.strerror or exc})",
                          "check the file's permissions") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _unreadable(p, f"is larger than {MAX_MANIFEST_BYTES} bytes (1 MiB)",
                          "a manifest is a page of YAML; check you passed the right file")
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        raise InvalidInput(
            f"{p}: {message}",
            problems=[Problem(path="", message=message,
                              hint="save the manifest as UTF-8", rule="yaml")],
        ) from None
    return LoadedManifest(parse_manifest(text, source=str(p)), p.resolve(), text)
