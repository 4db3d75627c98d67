"""The manifest's typed model: every section of `stacklock.yaml` as strict pydantic classes."""

from __future__ import annotations

import ipaddress
import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from datetime import date as _date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from stacklock.core import grammar
from stacklock.core.suggest import did_you_mean
from stacklock.errors import Problem

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
                                  "(or inside an allowed_paths folder; at most "
                                  f"{MAX_SMOKE_INPUT_BYTES // 1024} KiB)")
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
    archive: str = Field(description="https:// URL of the .mar, or its path relative to the "
                                     "manifest (or inside an allowed_paths folder)")
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
    allow_plain_http_inference: bool = Field(
        default=False,
        description="the explicit opt-out: let inference_address listen on a non-loopback "
                    "address over plain HTTP (validate refuses it otherwise: clients reach the "
                    "model over TLS through the environment's `endpoint`)")

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
    def inference_on_loopback(self) -> bool:
        return _is_loopback(self.inference_address)

    @property
    def management_on_loopback(self) -> bool:
        return _is_loopback(self.management_address)

    @property
    def metrics_on_loopback(self) -> bool:
        return _is_loopback(self.metrics_address)


class Serving(Strict):
    """How the stack's TorchServe runs on the nodes (docs/containers.md)."""

    runtime: Literal["host", "container"] = Field(
        default="host",
        description="host: TorchServe from a venv on the node (the torchserve role); container: "
                    "the serving image built from the lock (`stacklock image build`), pulled by "
                    "the digest `stacklock image push` records in the lock, run under systemd")

    @field_validator("runtime", mode="before")
    @classmethod
    def _runtime(cls, v: Any) -> Any:
        if v not in ("host", "container"):
            raise ValueError(f"{v!r} is not a serving runtime; write `runtime: host` (TorchServe "
                             "from a venv on the node, the default) or `runtime: container` (the "
                             "image built from the lock, pulled by digest)")
        return v


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
    serving: Serving = Field(default_factory=Serving,
                             description="host (default) or container: how TorchServe runs")

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
        default=None, description="URL of the armored key, or a path relative to the manifest "
                                  "(or inside an allowed_paths folder)"
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
    find_links: list[UrlOrPath] = Field(
        default_factory=list,
        description="URLs or folders of wheels; a folder (or file:// URL) is relative to the "
                    "manifest or inside an allowed_paths folder (lock reads it on the controller)")
    trusted_hosts: list[TrustedHost] = Field(default_factory=list)


class PackageSources(Strict):
    apt: Literal["official"] | list[AptRepository] = Field(
        default="official",
        description="'official' (NVIDIA CUDA + Docker repositories) or a list of repositories",
    )
    pip: PipSource = Field(default_factory=PipSource)
    ca_bundle: PlainPath | None = Field(
        default=None,
        description="a CA bundle (PEM) for the pip index, a file on the controller: relative to "
                    "the manifest's folder (or inside an allowed_paths folder); render points "
                    "the inventory at it and the torchserve role copies it to every node "
                    "(pip --cert)")


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


# --------------------------------------------------------------------------- serving endpoint
#
# What clients call (docs/serving.md): nginx on every node terminates TLS on the endpoint's
# port and proxies the inference API (/predictions/, /ping) to TorchServe on loopback, for
# clients that present one of the environment's bearer tokens. Secrets (the TLS key, the
# tokens) come from files on the controller (confined like every file path of a manifest,
# mode 0600 or 0400) or from the secret store (a variable of a vault-encrypted
# $STACKLOCK_SECRETS_FILE); the lab makes its own CA and tokens. Never in the manifest itself.

#: the name of an Ansible variable in the secret store (a vault-encrypted secrets file)
_SECRET_VAR = r"^stacklock_endpoint_[a-z0-9_]{1,48}$"
_ACM_ARN = r"^arn:aws(-[a-z]+)?:acm:[a-z]{2}(-gov)?-[a-z]+-\d:\d{12}:certificate/[0-9a-f-]{36}$"
#: a health check path: a plain absolute URL path
_HEALTH_PATH = r"^/[A-Za-z0-9._~/-]{0,127}$"


class EndpointTls(Strict):
    """Where the endpoint's certificate and key come from: exactly one of a certificate and
    key file pair, a secret, or (lab) the lab's own CA; on AWS also the load balancer's ACM
    certificate."""

    cert_file: PlainPath | None = Field(
        default=None, description="the certificate (PEM, leaf first, then its chain): a file on "
                                  "the controller, relative to the manifest (or in an "
                                  "allowed_paths folder)")
    key_file: PlainPath | None = Field(
        default=None, description="its private key (PEM): a file on the controller, relative to "
                                  "the manifest (or in an allowed_paths folder), mode 0600 or "
                                  "0400; never commit it")
    secret: Annotated[str | None, Field(pattern=_SECRET_VAR)] = Field(
        default=None, description="the name of a variable of the secret store (a vault-encrypted "
                                  "$STACKLOCK_SECRETS_FILE) holding {cert: PEM, key: PEM}")
    lab_ca: bool = Field(default=False,
                         description="lab only: the lab's own CA (made on the controller) issues "
                                     "each node's certificate for its lab address")
    acm_certificate_arn: Annotated[str | None, Field(pattern=_ACM_ARN)] = Field(
        default=None, description="AWS only: the ACM certificate of the environment's load "
                                  "balancer (the nodes behind it still get one of the above)")
    ca_file: PlainPath | None = Field(
        default=None, description="the CA certificate(s) (PEM) clients trust, which verify "
                                  "checks the served chain against: a file on the controller, "
                                  "relative to the manifest (or in an allowed_paths folder); "
                                  "default: the lab CA with lab_ca, else the controller's "
                                  "system trust store")

    @model_validator(mode="after")
    def _one_source(self) -> EndpointTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both (the certificate "
                             "and its private key)")
        sources = [n for n, on in (("cert_file/key_file", self.cert_file is not None),
                                   ("secret", self.secret is not None),
                                   ("lab_ca", self.lab_ca)) if on]
        if not sources:
            raise ValueError("name where the node certificate comes from: cert_file and "
                             "key_file, secret, or lab_ca: true")
        if len(sources) > 1:
            raise ValueError(f"the node certificate comes from one place, but "
                             f"{' and '.join(sources)} are given; keep one")
        return self


class EndpointTokens(Strict):
    """Where the clients' bearer tokens come from: exactly one source. Several tokens may be
    valid at once (rotation: add the new one, move the clients, remove the old one)."""

    file: PlainPath | None = Field(
        default=None, description="a file on the controller, relative to the manifest (or in an "
                                  "allowed_paths folder), mode 0600 or 0400: one token per line "
                                  "(32-128 characters of A-Z a-z 0-9 . _ ~ + / = -)")
    secret: Annotated[str | None, Field(pattern=_SECRET_VAR)] = Field(
        default=None, description="the name of a variable of the secret store (a vault-encrypted "
                                  "$STACKLOCK_SECRETS_FILE) holding the list of tokens")
    lab: bool = Field(default=False,
                      description="lab only: a token generated on the controller, kept in the "
                                  "lab's private state folder")

    @model_validator(mode="after")
    def _one_source(self) -> EndpointTokens:
        sources = [n for n, on in (("file", self.file is not None),
                                   ("secret", self.secret is not None), ("lab", self.lab)) if on]
        if len(sources) != 1:
            raise ValueError("name exactly one source of the client tokens: file, secret or lab"
                             + (f" (got {' and '.join(sources)})" if sources else ""))
        return self


class EndpointMetrics(Strict):
    """TorchServe's metrics API on the endpoint (`/metrics`, for a scraper's bearer token of
    its own, never a client's: docs/observability.md)."""

    tokens: EndpointTokens = Field(description="where the scrapers' bearer tokens come from "
                                               "(file, secret or lab: not the clients' tokens)")


class Endpoint(Strict):
    """The environment's inference endpoint: TLS on every node's `port`, the inference API
    only, for clients holding a token (docs/serving.md)."""

    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=443, description="the TLS port clients call on every node (and the AWS load "
                                 "balancer listens on)")
    tls: EndpointTls = Field(description="where the certificate and key come from")
    client_auth: Literal["token"] = Field(
        default="token", description="the client credential: a bearer token nginx checks "
                                     "(docs/serving.md says why not mTLS)")
    tokens: EndpointTokens = Field(description="where the clients' bearer tokens come from")
    health_check_path: Annotated[str, Field(pattern=_HEALTH_PATH)] = Field(
        default="/ping", description="the path a load balancer checks (answered without a "
                                     "token: TorchServe's /ping)")
    nginx_apt_version: DebianVersion | None = Field(
        default=None, description="the exact apt version of nginx and nginx-common; default: "
                                  "the one src/stacklock/data/packages.yaml pins for the stack's "
                                  "OS (Debian 12), required where it pins none")
    certificate_min_days: Annotated[int, Field(ge=0, le=365)] = Field(
        default=14, description="verify reports a node certificate that expires within this "
                                "many days (endpoint.certificate.expiry)")
    metrics: EndpointMetrics | None = Field(
        default=None, description="serve TorchServe's metrics on the endpoint at /metrics for a "
                                  "scrape token (default: none; the metrics stay on loopback)")


def _endpoint_fits(env: Any) -> Any:
    """The endpoint's sources that only one provider has."""
    ep = getattr(env, "endpoint", None)
    if ep is None:
        return env
    provider = env.provider
    if ep.tls.lab_ca and provider != "lab":
        raise ValueError("endpoint.tls.lab_ca is the lab's own CA: lab environments only; give "
                         "cert_file/key_file or secret")
    if (ep.tokens.lab or (ep.metrics is not None and ep.metrics.tokens.lab)) \
            and provider != "lab":
        raise ValueError("endpoint.tokens.lab is a token the lab makes: lab environments only; "
                         "give file or secret")
    if provider == "aws" and ep.tls.acm_certificate_arn is None:
        raise ValueError("endpoint.tls.acm_certificate_arn is needed on AWS: the environment's "
                         "load balancer terminates TLS with that ACM certificate")
    if provider != "aws" and ep.tls.acm_certificate_arn is not None:
        raise ValueError("endpoint.tls.acm_certificate_arn names the AWS load balancer's "
                         "certificate: AWS environments only")
    return env


class AwsEnvironment(Strict):
    provider: Literal["aws"]
    stack: str
    rollout: RolloutPolicy | None = Field(
        default=None, description="canary, batch size and failure threshold of a rollout")
    endpoint: Endpoint | None = Field(
        default=None, description="the inference endpoint clients call over TLS (default: "
                                  "none; TorchServe stays on loopback)")
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

    @model_validator(mode="after")
    def _endpoint(self) -> AwsEnvironment:
        return _endpoint_fits(self)  # type: ignore[no-any-return]


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_LIMITED_BROADCAST = ipaddress.ip_address("255.255.255.255")


def _as_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host address names (an IPv4-mapped IPv6 address as its IPv4 one);
    None for a host name."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _static_address(value: str) -> str:
    """A node's address: a host name or one host's IP address, never an address that names
    no host or many (unspecified, 'this network', multicast, the limited broadcast). A subnet's
    broadcast address cannot be told from the address alone (no prefix is given): the host
    list names hosts, and a .255 is a valid host in a /23."""
    address = grammar.host(value)
    ip = _as_ip(address)
    if ip is None:
        return address
    if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
        raise ValueError(f"{address} is the unspecified ('this network') address: it names no "
                         "host (ssh would reach this machine); write the node's own address")
    if ip.is_multicast:
        raise ValueError(f"{address} is a multicast group, not a host; write the node's own "
                         "address")
    if ip == _LIMITED_BROADCAST:
        raise ValueError(f"{address} is the broadcast address, not a host; write the node's own "
                         "address")
    return address


def is_loopback_host(address: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped), `localhost` and names under `.localhost`."""
    ip = _as_ip(address)
    if ip is not None:
        return ip.is_loopback
    name = address.rstrip(".").casefold()
    return name == "localhost" or name.endswith(".localhost")


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
        return _static_address(v)

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
    endpoint: Endpoint | None = Field(
        default=None, description="the inference endpoint clients call over TLS (default: "
                                  "none; TorchServe stays on loopback)")
    hosts: list[StaticHost] = Field(min_length=1)
    gpu: bool = Field(
        default=True,
        description="the nodes have an NVIDIA GPU (false: CPU-only hosts or a test bed; the "
                    "driver packages are installed and held, GPU-only steps are skipped, and "
                    "verify does not require a GPU or a loaded driver)")
    allow_loopback: bool = Field(
        default=False,
        description="hosts may be loopback addresses (127.0.0.0/8, ::1, localhost): this "
                    "machine itself, for tests and single-machine setups; without it a loopback "
                    "host address is refused (a manifest naming this controller as a node is "
                    "a mistake, or an attack)")

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

    @model_validator(mode="after")
    def _endpoint(self) -> StaticEnvironment:
        return _endpoint_fits(self)  # type: ignore[no-any-return]

    @property
    def count(self) -> int:
        return len(self.hosts)


class LabEnvironment(Strict):
    provider: Literal["lab"]
    stack: str
    rollout: RolloutPolicy | None = Field(
        default=None, description="canary, batch size and failure threshold of a rollout")
    endpoint: Endpoint | None = Field(
        default=None, description="the inference endpoint clients call over TLS (default: "
                                  "none; TorchServe stays on loopback)")
    count: Annotated[int, Field(ge=1, le=60)] = 1

    @model_validator(mode="after")
    def _endpoint(self) -> LabEnvironment:
        return _endpoint_fits(self)  # type: ignore[no-any-return]

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


#: a waiver's item: a component of the report (`unit.torchserve.environment.FOO`,
#: `unit.docker.drop_in./etc/systemd/system/docker.service.d/x.conf`,
#: `file:/etc/apt/sources.list.d/x.list`): printable, no blanks
_WAIVER_ITEM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+=,~%-]*$")


class Waiver(Strict):
    """A known, accepted deviation (stacklock.core.waivers): shown WAIVED, recorded in the
    ledger's evidence, a finding of its own once expired."""

    item: str = Field(min_length=1, max_length=512,
                      description="the exact component the report names")
    node: str | None = Field(default=None, min_length=1, max_length=255,
                             description="only on this node (default: every node)")
    environment: str | None = Field(default=None, min_length=1, max_length=64,
                                    description="only in this environment (default: all)")
    reason: str = Field(min_length=3, max_length=500, description="why it is accepted")
    expires: _date = Field(strict=False, description="the last day it waives (YYYY-MM-DD)")

    @field_validator("item")
    @classmethod
    def _item(cls, v: str) -> str:
        if not _WAIVER_ITEM.match(v):
            raise ValueError(f"{v!r} is not a report component (no blanks or control "
                             "characters; e.g. unit.torchserve.environment.FOO or "
                             "file:/etc/apt/sources.list.d/x.list)")
        return v

    @field_validator("node", "environment", "reason")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in v):
            raise ValueError("holds control characters")
        return v


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
    waivers: list[Waiver] = Field(
        default_factory=list, max_length=512,
        description="known, accepted deviations, each with a reason and an expiry date",
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


# --------------------------------------------------------------------------- file paths
#
# A manifest may come from a pull request; the files it names are read on the controller
# (lock hashes the model archives and copies the smoke inputs into the lock; uv reads the
# find-links folders) and copied to every node (archives, the CA bundle). So every file path
# a manifest names resolves, symbolic links followed, inside the manifest's folder, unless the
# manifest's `allowed_paths` names the folder it is in. Checked twice: here, on the text
# (absolute paths and '..'), and where the file system is known (manifest.LoadedManifest:
# load, lock and render resolve every path and check where it lands).


def _allowed_folder(value: str) -> str:
    grammar.path(value)
    norm = posixpath.normpath(value)
    if norm.strip("/") == "":
        raise ValueError(f"{value!r} would allow every file of the machine; name the folder "
                         "that holds the files (/etc/pki/tls, ../models)")
    if norm == ".":
        raise ValueError("the manifest's own folder is always allowed; name a folder outside "
                         "it, or remove the entry")
    return value


AllowedFolder = Annotated[str, AfterValidator(_allowed_folder)]


def local_path_of(value: str) -> str | None:
    """The file system path a path-or-URL value names: the value itself, the path of a
    file:// URL; None for any other URL."""
    if "://" not in value:
        return value
    parts = urllib.parse.urlsplit(value)
    return urllib.parse.unquote(parts.path) if parts.scheme.casefold() == "file" else None


def local_paths(data: Any) -> list[tuple[str, str]]:
    """Every file path a (raw) manifest names that stacklock reads: (field, path), for the
    models' archives and smoke inputs, the CA bundle, apt signing keys and pip find-links
    given as a path or a file:// URL. Works on a manifest that does not validate too (any
    value of the wrong type is skipped: its own error is reported)."""
    out: list[tuple[str, str]] = []

    def add(field: str, value: Any) -> None:
        if isinstance(value, str) and value and (path := local_path_of(value)):
            out.append((field, path))

    if not isinstance(data, dict):
        return out
    src = data.get("package_sources")
    if isinstance(src, dict):
        add("package_sources.ca_bundle", src.get("ca_bundle"))
        apt = src.get("apt")
        for i, repo in enumerate(apt if isinstance(apt, list) else []):
            if isinstance(repo, dict):
                add(f"package_sources.apt[{i}].signing_key", repo.get("signing_key"))
        pip = src.get("pip")
        links = pip.get("find_links") if isinstance(pip, dict) else None
        for i, link in enumerate(links if isinstance(links, list) else []):
            add(f"package_sources.pip.find_links[{i}]", link)
    envs = data.get("environments")
    for env_name, env in (envs.items() if isinstance(envs, dict) else []):
        endpoint = env.get("endpoint") if isinstance(env, dict) else None
        if not isinstance(endpoint, dict):
            continue
        tls, tokens = endpoint.get("tls"), endpoint.get("tokens")
        where = f"environments.{env_name}.endpoint"
        if isinstance(tls, dict):
            add(f"{where}.tls.cert_file", tls.get("cert_file"))
            add(f"{where}.tls.key_file", tls.get("key_file"))
        if isinstance(tokens, dict):
            add(f"{where}.tokens.file", tokens.get("file"))
        if isinstance(tls, dict):
            add(f"{where}.tls.ca_file", tls.get("ca_file"))
        metrics = endpoint.get("metrics")
        scrape = metrics.get("tokens") if isinstance(metrics, dict) else None
        if isinstance(scrape, dict):
            add(f"{where}.metrics.tokens.file", scrape.get("file"))
    stacks = data.get("stacks")
    for name, stack in (stacks.items() if isinstance(stacks, dict) else []):
        models = stack.get("models") if isinstance(stack, dict) else None
        for i, model in enumerate(models if isinstance(models, list) else []):
            if not isinstance(model, dict):
                continue
            where = f"stacks.{name}.models[{i}]"
            add(f"{where}.archive", model.get("archive"))
            smoke = model.get("smoke")
            if isinstance(smoke, dict):
                add(f"{where}.smoke.input_file", smoke.get("input_file"))
    return out


def allowed_folders(data: Any) -> list[str]:
    """The `allowed_paths` entries of a (raw) manifest that are strings."""
    allowed = data.get("allowed_paths") if isinstance(data, dict) else None
    return [a for a in allowed if isinstance(a, str)] if isinstance(allowed, list) else []


def _lexically_under(path: str, folder: str) -> bool:
    p, f = posixpath.normpath(path), posixpath.normpath(folder)
    return p == f or p.startswith(f.rstrip("/") + "/")


def confinement_hint(field: str, path: str) -> str:
    """How to fix a path outside the manifest's folder."""
    folder = path if "find_links" in field else posixpath.dirname(path) or path
    return ("keep the file in the manifest's folder (or a folder below it) and name it "
            "relative to the manifest; if this very file is meant to be read from where it "
            f"is, name its folder in the manifest: allowed_paths: [{folder}]")


def path_problems(data: Any) -> list[Problem]:
    """Every file path of a (raw) manifest that, as written, leaves the manifest's folder
    (absolute, or climbing out with '..') without an `allowed_paths` folder holding it."""
    allowed = allowed_folders(data)
    problems: list[Problem] = []
    for field, path in local_paths(data):
        norm = posixpath.normpath(path)
        if not (norm.startswith("/") or norm == ".." or norm.startswith("../")):
            continue
        if any(_lexically_under(path, folder) for folder in allowed):
            continue
        how = ("an absolute path" if norm.startswith("/")
               else "it climbs out of it with '..'")
        problems.append(Problem(
            field, f"{path} is outside the manifest's folder ({how}), and no allowed_paths "
                   "folder holds it", confinement_hint(field, norm), rule="schema"))
    return problems


def loopback_problems(data: Any) -> list[Problem]:
    """Static hosts on a loopback address (this machine) in an environment without
    `allow_loopback: true`. Works on a manifest that does not validate too."""
    problems: list[Problem] = []
    envs = data.get("environments") if isinstance(data, dict) else None
    for env_name, env in (envs.items() if isinstance(envs, dict) else []):
        if not isinstance(env, dict) or env.get("provider") != "static":
            continue
        if env.get("allow_loopback") is True:
            continue
        hosts = env.get("hosts")
        for i, host in enumerate(hosts if isinstance(hosts, list) else []):
            address = host.get("address") if isinstance(host, dict) else None
            if not isinstance(address, str):
                continue
            try:
                address = grammar.host(address.strip())
            except ValueError:
                continue  # its own error is reported
            if is_loopback_host(address):
                problems.append(Problem(
                    f"environments.{env_name}.hosts[{i}].address",
                    f"{address} is a loopback address: this machine, not a node",
                    "write the node's own address; to manage this machine itself on purpose "
                    f"(a test bed), set allow_loopback: true on environment {env_name}",
                    rule="schema"))
    return problems


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
    allowed_paths: list[AllowedFolder] = Field(
        default_factory=list, max_length=32,
        description="folders outside the manifest's folder whose files the manifest may name "
                    "(absolute, or relative to the manifest: ../models). Every file path of "
                    "the manifest (models[].archive, models[].smoke.input_file, "
                    "package_sources.ca_bundle, apt[].signing_key, pip.find_links, "
                    "environments.ENV.endpoint's tls and tokens files) must "
                    "resolve, symbolic links followed, inside the manifest's folder or one of "
                    "these; output_dir always stays inside the manifest's folder")

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
            near = " ".join(did_you_mean(e, self.environments) for e in unknown)
            raise ValueError(f"promotion names unknown environment(s) {', '.join(unknown)}; "
                             + near + "use: " + ", ".join(self.environments))
        if twice:
            raise ValueError(f"promotion lists {', '.join(twice)} more than once; "
                             "name each environment once")
        if len(self.promotion) == 1:
            raise ValueError("promotion needs at least two environments (from, to)")
        return self
