"""AWS through boto3: AMI ids for the lock, instance-type preflight, live inventory.

Credentials and the endpoint come from the standard AWS chain only (environment variables,
shared config and credentials files, SSO, an instance role; `AWS_ENDPOINT_URL` for a local
endpoint such as moto). stacklock never reads credentials from the manifest and never prints
them: errors name the region, the call and AWS's own error code and message.

Every call names its region explicitly, so environments in different regions get the same
image by name and their own AMI id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stacklock.core.manifest import AwsEnvironment, Manifest
from stacklock.errors import InvalidInput, Problem, ToolFailed

#: the tags the gpu_node_aws module puts on every resource (see terraform/modules/gpu_node_aws)
TAG_PROJECT = "project"
TAG_ENVIRONMENT = "environment"
TAG_STACK = "stack"
TAG_FINGERPRINT = "fingerprint"
TAG_MANAGED_BY = "managed-by"
MANAGED_BY = "stacklock"

#: instance states that still count as a node (terminated ones are gone)
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")

#: AWS error codes that mean "your credentials are missing, wrong or not allowed"
_AUTH_CODES = frozenset({
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
})

_CREDENTIALS_HINT = (
    "provide AWS credentials the standard way (AWS_PROFILE, ~/.aws/credentials, "
    "AWS SSO, or an instance role); stacklock never reads them from the manifest"
)


class AwsError(ToolFailed):
    """An AWS API error (exit 3) that keeps AWS's error code, for callers that tell them apart."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- clients


def _client(service: str, region: str) -> Any:
    """A boto3 client of `service` for `region`; `AWS_ENDPOINT_URL(_SERVICE)` and credentials
    from the AWS chain; bounded timeouts and retries."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        connect_timeout=5,
        read_timeout=30,
        retries={"max_attempts": 3, "mode": "standard"},
        user_agent_extra="stacklock",
    )
    try:
        return boto3.session.Session().client(service, region_name=region, config=config)
    except Exception as exc:  # botocore raises many types for a broken configuration
        raise ToolFailed(f"AWS: cannot create an {service.upper()} client for region {region}: "
                         f"{type(exc).__name__}: {_safe(exc)}") from None


def ec2_client(region: str) -> Any:
    """An EC2 client for `region`."""
    return _client("ec2", region)


def _safe(exc: BaseException) -> str:
    """An exception's message without anything that looks like a credential."""
    text = str(exc)
    for marker in ("aws_secret_access_key", "SecretAccessKey", "aws_session_token"):
        if marker.lower() in text.lower():
            return "(message withheld: it mentions credentials)"
    return text


def _call(
    region: str,
    what: str,
    fn: Callable[..., Any],
    *,
    absent_codes: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """Run one boto3 call; credential, endpoint and API failures become ToolFailed (exit 3).

    An AWS error whose code starts with one of `absent_codes` means "no such thing": None.
    """
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    try:
        return fn(**kwargs)
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ToolFailed(f"AWS {what} in {region}: {type(exc).__name__}: no usable credentials; "
                         f"{_CREDENTIALS_HINT}") from None
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as exc:
        raise ToolFailed(f"AWS {what} in {region}: cannot reach the AWS endpoint "
                         f"({_safe(exc)}); check the network, the region name and "
                         "AWS_ENDPOINT_URL") from None
    except NoRegionError:
        raise ToolFailed(f"AWS {what}: no region given") from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = str(err.get("Message", "")).strip()
        if absent_codes and code.startswith(absent_codes):
            return None
        if code in _AUTH_CODES:
            raise AwsError(f"AWS {what} in {region} was refused: {code}: {message} "
                           f"(fix: {_CREDENTIALS_HINT}, with permission for {what})",
                           code) from None
        raise AwsError(f"AWS {what} in {region} failed: {code}: {message}", code) from None
    except BotoCoreError as exc:
        raise ToolFailed(f"AWS {what} in {region} failed: {type(exc).__name__}: "
                         f"{_safe(exc)}") from None


# --------------------------------------------------------------------------- AMIs


def resolve_amis(
    owner: str, name: str, regions: Iterable[str], *, where: str = "ami"
) -> dict[str, str]:
    """The AMI id of the image `name` of `owner` in every region: {region: ami_id}, sorted.

    The name is matched exactly (the manifest forbids wildcards), deprecated images are
    included (a pin outlives Canonical's deprecation date), and exactly one available image
    must match in each region. Every missing or ambiguous region is reported at once as
    InvalidInput (exit 2) whose problems sit at `where` (e.g. `stacks.prod-stack.ami`).
    """
    out: dict[str, str] = {}
    problems: list[Problem] = []
    bad: list[str] = []
    for region in sorted(set(regions)):
        client = ec2_client(region)
        response = _call(
            region, "ec2:DescribeImages", client.describe_images,
            Owners=[owner],
            Filters=[{"Name": "name", "Values": [name]}],
            IncludeDeprecated=True,
        )
        images = [
            img for img in response.get("Images", [])
            if img.get("Name") == name and img.get("State", "available") == "available"
        ]
        if not images:
            problems.append(Problem(
                path=where,
                message=f"image {name!r} of owner {owner} does not exist in region {region}",
                hint=(f"copy the image to {region} (or pick one published there), fix the "
                      "owner or name, or move the environment to a region that has it"),
                rule="aws-ami",
            ))
            bad.append(region)
            continue
        if len(images) > 1:
            ids = ", ".join(sorted(str(i["ImageId"]) for i in images))
            problems.append(Problem(
                path=where,
                message=(f"{len(images)} images named {name!r} of owner {owner} in region "
                         f"{region} ({ids}); a pin must match exactly one"),
                hint="name the owner account id (not an alias) that publishes exactly one",
                rule="aws-ami",
            ))
            bad.append(region)
            continue
        out[region] = str(images[0]["ImageId"])
    if problems:
        raise InvalidInput(
            f"AMI {name!r} (owner {owner}) cannot be pinned in {', '.join(bad)}",
            problems=problems,
        )
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- instance types


@dataclass(frozen=True)
class GpuTable:
    """stacklock's own table: EC2 family -> GPU key, GPU key -> name (data/compatibility.yaml)."""

    families: dict[str, str]
    gpu_names: dict[str, str]

    def expected_gpu(self, instance_type: str) -> str | None:
        return self.families.get(instance_type.split(".", 1)[0])


def gpu_table() -> GpuTable:
    """The GPU table the compatibility rules validated the stack against."""
    from stacklock.core.rules import load_compatibility

    data = load_compatibility()
    return GpuTable(
        families={fam: str(fact["gpu"]) for fam, fact in data.families.items()},
        gpu_names={key: str(fact["name"]) for key, fact in data.gpus.items()},
    )


def _norm(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


def gpu_matches(table_key: str, table_name: str, manufacturer: str, aws_name: str) -> bool:
    """Whether AWS's GPU (`NVIDIA`, `A100`) is the table's (`A100-40GB`, `NVIDIA A100 40GB`)."""
    if manufacturer and _norm(manufacturer) != "NVIDIA":
        return False
    aws = _norm(aws_name)
    base = _norm(table_key.split("-", 1)[0])
    return aws in (base, _norm(table_key)) or aws == _norm(table_name.removeprefix("NVIDIA "))


def check_instance_types(
    env: AwsEnvironment, env_name: str = "", *, table: GpuTable | None = None
) -> list[Problem]:
    """Preflight of one AWS environment: the type is offered where it runs and has the GPU
    the stack was validated for. Problems (errors) are returned, AWS failures raise ToolFailed."""
    table = table or gpu_table()
    path = f"environments.{env_name}.instance_type" if env_name else "instance_type"
    itype = env.instance_type
    family = itype.split(".", 1)[0]
    problems: list[Problem] = []

    # 1. our own table first: moto, and a typo in a real account, would accept anything
    expected = table.expected_gpu(itype)
    if expected is None:
        return [Problem(
            path=path,
            message=(f"{itype}: family {family!r} is not in stacklock's GPU table, so no stack "
                     "was validated for it"),
            hint="use an instance type of one of: " + ", ".join(sorted(table.families)),
            rule="aws-instance-family",
        )]
    client = ec2_client(env.region)

    # 2. offered in the region, and in each named zone
    if env.availability_zones:
        resp = _call(
            env.region, "ec2:DescribeInstanceTypeOfferings",
            client.describe_instance_type_offerings,
            LocationType="availability-zone",
            Filters=[{"Name": "instance-type", "Values": [itype]},
                     {"Name": "location", "Values": list(env.availability_zones)}],
        )
        offered = {o["Location"] for o in resp.get("InstanceTypeOfferings", [])
                   if o.get("InstanceType") == itype}
        missing = [z for z in env.availability_zones if z not in offered]
        if missing:
            problems.append(Problem(
                path=path,
                message=f"{itype} is not offered in availability zone(s) {', '.join(missing)}",
                hint="pick zones that offer it (aws ec2 describe-instance-type-offerings "
                     "--location-type availability-zone), or another instance type",
                rule="aws-offering",
            ))
    else:
        resp = _call(
            env.region, "ec2:DescribeInstanceTypeOfferings",
            client.describe_instance_type_offerings,
            LocationType="region",
            Filters=[{"Name": "instance-type", "Values": [itype]}],
        )
        if not any(o.get("InstanceType") == itype
                   for o in resp.get("InstanceTypeOfferings", [])):
            problems.append(Problem(
                path=path,
                message=f"{itype} is not offered in region {env.region}",
                hint="choose a region that offers it, or another instance type of the family",
                rule="aws-offering",
            ))

    # 3. the GPU AWS reports is the one our table (and so `validate`) assumed
    info = _call(env.region, "ec2:DescribeInstanceTypes", client.describe_instance_types,
                 absent_codes=("InvalidInstanceType",), InstanceTypes=[itype]) or {}
    types = [t for t in info.get("InstanceTypes", []) if t.get("InstanceType") == itype]
    if not types:
        problems.append(Problem(
            path=path,
            message=f"AWS does not know instance type {itype} in {env.region}",
            hint="check the spelling (aws ec2 describe-instance-types)",
            rule="aws-instance-type",
        ))
        return problems
    gpus = (types[0].get("GpuInfo") or {}).get("Gpus") or []
    table_name = table.gpu_names.get(expected, expected)
    if not gpus:
        problems.append(Problem(
            path=path,
            message=(f"{itype} has no GPU according to AWS, but stacklock's table says "
                     f"family {family!r} has {table_name}"),
            hint="use a GPU instance type, or correct ec2_families in data/compatibility.yaml",
            rule="aws-gpu",
        ))
        return problems
    reported = [f"{g.get('Manufacturer', '')} {g.get('Name', '')}".strip() for g in gpus]
    if not all(gpu_matches(expected, table_name, str(g.get("Manufacturer", "")),
                           str(g.get("Name", ""))) for g in gpus):
        problems.append(Problem(
            path=path,
            message=(f"{itype}: AWS reports GPU {', '.join(reported)}, but the stack was "
                     f"validated for {table_name} (stacklock's table, family {family!r})"),
            hint="correct ec2_families in data/compatibility.yaml and validate again",
            rule="aws-gpu",
        ))
    return problems


def check_environments(manifest: Manifest, *, table: GpuTable | None = None) -> list[Problem]:
    """`validate --online` / provision preflight: check_instance_types for every AWS env."""
    table = table or gpu_table()
    problems: list[Problem] = []
    for name, env in manifest.environments.items():
        if isinstance(env, AwsEnvironment):
            problems += check_instance_types(env, name, table=table)
    return problems


# --------------------------------------------------------------------------- live inventory


@dataclass(frozen=True)
class Instance:
    """One EC2 instance as AWS reports it now."""

    instance_id: str
    region: str
    state: str
    instance_type: str
    image_id: str
    availability_zone: str = ""
    private_ip: str | None = None
    public_ip: str | None = None
    launch_time: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.tags.get("Name", self.instance_id)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "name": self.name,
            "region": self.region,
            "state": self.state,
            "instance_type": self.instance_type,
            "image_id": self.image_id,
            "availability_zone": self.availability_zone,
            "private_ip": self.private_ip,
            "public_ip": self.public_ip,
            "launch_time": self.launch_time,
            "tags": dict(sorted(self.tags.items())),
        }


def _instance(region: str, raw: Mapping[str, Any]) -> Instance:
    launch: Any = raw.get("LaunchTime")
    return Instance(
        instance_id=str(raw["InstanceId"]),
        region=region,
        state=str((raw.get("State") or {}).get("Name", "unknown")),
        instance_type=str(raw.get("InstanceType", "")),
        image_id=str(raw.get("ImageId", "")),
        availability_zone=str((raw.get("Placement") or {}).get("AvailabilityZone", "")),
        private_ip=raw.get("PrivateIpAddress"),
        public_ip=raw.get("PublicIpAddress"),
        launch_time=str(launch.isoformat()) if hasattr(launch, "isoformat") else str(launch or ""),
        tags={str(t["Key"]): str(t["Value"]) for t in raw.get("Tags", []) or []},
    )


def _describe(region: str, filters: list[dict[str, Any]]) -> list[Instance]:
    client = ec2_client(region)
    paginator = client.get_paginator("describe_instances")
    pages = _call(region, "ec2:DescribeInstances",
                  lambda: list(paginator.paginate(Filters=filters)))
    out = [
        _instance(region, inst)
        for page in pages
        for reservation in page.get("Reservations", [])
        for inst in reservation.get("Instances", [])
    ]
    return sorted(out, key=lambda i: (i.name, i.instance_id))


def _state_filter() -> dict[str, Any]:
    return {"Name": "instance-state-name", "Values": list(LIVE_STATES)}


def live_inventory(project: str, environment: str, region: str) -> list[Instance]:
    """The live (not terminated) nodes of one environment, found by their stacklock tags."""
    return _describe(region, [
        {"Name": f"tag:{TAG_PROJECT}", "Values": [project]},
        {"Name": f"tag:{TAG_ENVIRONMENT}", "Values": [environment]},
        _state_filter(),
    ])


def project_instances(project: str, region: str) -> list[Instance]:
    """Every live instance tagged with the project, whatever its environment."""
    return _describe(region, [
        {"Name": f"tag:{TAG_PROJECT}", "Values": [project]},
        _state_filter(),
    ])


def unmanaged_instances(
    project: str,
    region: str,
    managed_ids: Iterable[str],
    *,
    environment: str | None = None,
) -> list[Instance]:
    """Live instances tagged for the project (and environment) that Terraform does not manage.

    `managed_ids` are the instance ids from the environments' `terraform output -json`
    (`instance_ids`); anything else carrying the tags was made by hand or left behind.
    """
    managed = set(managed_ids)
    found = (live_inventory(project, environment, region) if environment
             else project_instances(project, region))
    return [i for i in found if i.instance_id not in managed]


def inventory_deviations(
    instances: Iterable[Instance],
    *,
    ami_id: str,
    instance_type: str,
    fingerprint: str,
    environment: str,
) -> list[Problem]:
    """Live nodes that differ from the lock: another AMI, type or stack fingerprint tag."""
    problems: list[Problem] = []
    for inst in instances:
        where = f"environments.{environment}.nodes.{inst.name}"
        if inst.image_id != ami_id:
            problems.append(Problem(where, f"{inst.instance_id} runs AMI {inst.image_id}, "
                                    f"the lock pins {ami_id}", "re-apply the environment",
                                    rule="aws-drift"))
        if inst.instance_type != instance_type:
            problems.append(Problem(where, f"{inst.instance_id} is a {inst.instance_type}, "
                                    f"the manifest says {instance_type}",
                                    "re-apply the environment", rule="aws-drift"))
        tag = inst.tags.get(TAG_FINGERPRINT)
        if tag != fingerprint:
            problems.append(Problem(where, f"{inst.instance_id} is tagged fingerprint {tag}, "
                                    f"the lock says {fingerprint}",
                                    "apply, then configure the environment", rule="aws-drift"))
    return problems


__all__ = [
    "LIVE_STATES",
    "MANAGED_BY",
    "TAG_ENVIRONMENT",
    "TAG_FINGERPRINT",
    "TAG_MANAGED_BY",
    "TAG_PROJECT",
    "TAG_STACK",
    "GpuTable",
    "Instance",
    "check_environments",
    "check_instance_types",
    "ec2_client",
    "gpu_matches",
    "gpu_table",
    "inventory_deviations",
    "live_inventory",
    "project_instances",
    "resolve_amis",
    "unmanaged_instances",
]


# --------------------------------------------------------------------------- S3 objects
#
# The shared evidence ledger (stacklock.flows.ledger) is one S3 object, appended to with
# conditional writes: PutObject with If-Match on the ETag that was read (If-None-Match: * for
# the first write), so of two writers that read the same head only one wins; the other gets
# 412 PreconditionFailed (or 409 ConditionalRequestConflict while the first is in flight),
# reads again and retries.

#: AWS error codes of a conditional write that lost to another writer
CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey")


def s3_client(region: str) -> Any:
    """An S3 client for `region`."""
    return _client("s3", region)


def s3_read(region: str, bucket: str, key: str) -> tuple[bytes, str] | None:
    """The object's bytes and ETag; None when there is no such key. A missing bucket raises
    AwsError with code NoSuchBucket; other failures ToolFailed (exit 3)."""
    client = s3_client(region)

    def get() -> tuple[bytes, str]:
        resp = client.get_object(Bucket=bucket, Key=key)
        return resp["Body"].read(), str(resp["ETag"])

    got: tuple[bytes, str] | None = _call(region, f"s3:GetObject s3://{bucket}/{key}", get,
                                          absent_codes=("NoSuchKey",))
    return got


def s3_write_if(region: str, bucket: str, key: str, body: bytes, etag: str | None) -> str | None:
    """Replace the object only if it is still the one with `etag` (None: only if there is no
    object yet). The new ETag, or None when another writer changed it first."""
    client = s3_client(region)
    cond: dict[str, str] = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
    resp = _call(region, f"s3:PutObject s3://{bucket}/{key}", client.put_object,
                 absent_codes=CONFLICT_CODES, Bucket=bucket, Key=key, Body=body,
                 ContentType="application/x-ndjson", **cond)
    return None if resp is None else str(resp.get("ETag", ""))


# --------------------------------------------------------------------------- load balancer
#
# An AWS environment with an endpoint has one Application Load Balancer whose target group
# (terraform/modules/gpu_node_aws/endpoint.tf, `aws_lb_target_group.endpoint`) holds every
# node. A rollout takes each batch out of it before the batch is configured (TorchServe and
# nginx restart, a driver change may reboot the node) and puts back only the nodes that
# configured, verified and then passed the load balancer's own health check.
#
# What ELB reports (DescribeTargetHealth, AWS documentation "Health checks for Application Load
# Balancer target groups"): a registered target is `initial` (registering, first checks),
# `healthy`, `unhealthy`, `unused` (e.g. a stopped instance) or `unavailable`; a deregistered
# one is `draining` for up to the group's deregistration delay (in-flight requests finish),
# then it is no longer listed (asked for by id: `unused`, reason Target.NotRegistered).

#: seconds added to the deregistration delay before a drain counts as stuck
DRAIN_MARGIN_S = 30
#: seconds added to the time the health check needs (interval x (healthy threshold + 1) +
#: timeout) before a registered node counts as not healthy; generous, since AWS takes a while
#: to register a target (`initial`, Elb.RegistrationInProgress) before its first check
HEALTHY_MARGIN_S = 180
#: seconds between two DescribeTargetHealth calls while waiting
LB_POLL_S = 5.0


def elbv2_client(region: str) -> Any:
    """An Elastic Load Balancing v2 client for `region`."""
    return _client("elbv2", region)


@dataclass(frozen=True)
class TargetHealth:
    """One registered target as DescribeTargetHealth reports it."""

    target_id: str
    port: int | None
    state: str
    reason: str = ""
    description: str = ""

    @property
    def out(self) -> bool:
        """Takes no client traffic any more: deregistration done (`unused` with
        Target.NotRegistered; not listed at all is handled by the caller)."""
        return self.state == "unused" and self.reason == "Target.NotRegistered"

    def describe(self) -> str:
        """'unhealthy (Target.ResponseCodeMismatch: Health checks failed ...)'."""
        why = ": ".join(x for x in (self.reason, self.description) if x)
        return f"{self.state} ({why})" if why else self.state


@dataclass(frozen=True)
class LbTiming:
    """How long the target group's own settings make a drain and a registration take."""

    deregistration_delay: int
    health_interval: int
    health_timeout: int
    healthy_threshold: int

    @property
    def drain_bound(self) -> float:
        return float(self.deregistration_delay + DRAIN_MARGIN_S)

    @property
    def healthy_bound(self) -> float:
        return float(self.health_interval * (self.healthy_threshold + 1) + self.health_timeout
                     + HEALTHY_MARGIN_S)


def target_group_timing(region: str, arn: str) -> LbTiming:
    """The target group's deregistration delay and health check settings."""
    client = elbv2_client(region)
    groups = _call(region, "elasticloadbalancing:DescribeTargetGroups",
                   client.describe_target_groups, TargetGroupArns=[arn],
                   absent_codes=("TargetGroupNotFound", "ValidationError")) or {}
    found = groups.get("TargetGroups") or []
    if not found:
        raise ToolFailed(f"AWS: the inventory's target group {arn} does not exist in {region} "
                         "(fix: run stacklock apply for the environment: it writes the target "
                         "group of its load balancer into the inventory)")
    tg = found[0]
    attrs = _call(region, "elasticloadbalancing:DescribeTargetGroupAttributes",
                  client.describe_target_group_attributes, TargetGroupArn=arn)
    values = {str(a.get("Key")): str(a.get("Value")) for a in attrs.get("Attributes") or []}
    delay = values.get("deregistration_delay.timeout_seconds", "300")
    return LbTiming(
        deregistration_delay=int(delay) if delay.isdigit() else 300,
        health_interval=int(tg.get("HealthCheckIntervalSeconds") or 30),
        health_timeout=int(tg.get("HealthCheckTimeoutSeconds") or 5),
        healthy_threshold=int(tg.get("HealthyThresholdCount") or 5),
    )


def target_health(region: str, arn: str) -> dict[str, TargetHealth]:
    """Every target registered in the group (draining ones too), by id."""
    client = elbv2_client(region)
    resp = _call(region, "elasticloadbalancing:DescribeTargetHealth",
                 client.describe_target_health, TargetGroupArn=arn)
    out: dict[str, TargetHealth] = {}
    for d in resp.get("TargetHealthDescriptions") or []:
        target = d.get("Target") or {}
        health = d.get("TargetHealth") or {}
        port = target.get("Port")
        tid = str(target.get("Id", ""))
        out[tid] = TargetHealth(tid, int(port) if port is not None else None,
                                str(health.get("State", "")), str(health.get("Reason") or ""),
                                str(health.get("Description") or ""))
    return out


def _targets(ids: Iterable[str], ports: Mapping[str, int | None]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in ids:
        port = ports.get(i)
        out.append({"Id": i} if port is None else {"Id": i, "Port": port})
    return out


def deregister(region: str, arn: str, ids: Iterable[str],
               ports: Mapping[str, int | None] | None = None) -> None:
    """Take targets out of the group (ELB drains them for the deregistration delay)."""
    targets = _targets(ids, ports or {})
    if targets:
        client = elbv2_client(region)
        _call(region, "elasticloadbalancing:DeregisterTargets", client.deregister_targets,
              TargetGroupArn=arn, Targets=targets)


def register(region: str, arn: str, ids: Iterable[str],
             ports: Mapping[str, int | None] | None = None) -> None:
    """Put targets (back) into the group."""
    targets = _targets(ids, ports or {})
    if targets:
        client = elbv2_client(region)
        _call(region, "elasticloadbalancing:RegisterTargets", client.register_targets,
              TargetGroupArn=arn, Targets=targets)


def _wait(done: Callable[[], bool], bound: float, *, poll: float,
          clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    """Poll `done` until it holds (True) or `bound` seconds have passed (False)."""
    deadline = clock() + bound
    while True:
        if done():
            return True
        left = deadline - clock()
        if left <= 0:
            return False
        sleep(min(poll, left))


def wait_drained(region: str, arn: str, ids: Iterable[str], bound: float, *,
                 poll: float = LB_POLL_S, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> dict[str, TargetHealth]:
    """Wait until none of `ids` takes traffic (not listed, or `unused` Target.NotRegistered);
    the ones still listed after `bound` seconds (empty: all drained)."""
    import time

    wanted = list(ids)
    left: dict[str, TargetHealth] = {}
    if not wanted:
        return {}

    def done() -> bool:
        health = target_health(region, arn)
        left.clear()
        left.update({i: health[i] for i in wanted if i in health and not health[i].out})
        return not left

    _wait(done, bound, poll=poll, clock=clock or time.monotonic, sleep=sleep or time.sleep)
    return dict(left)


def wait_healthy(region: str, arn: str, ids: Iterable[str], bound: float, *,
                 poll: float = LB_POLL_S, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None) -> dict[str, TargetHealth]:
    """Wait until every one of `ids` is `healthy`; the others after `bound` seconds with their
    last state (a target no longer listed: state `unregistered`)."""
    import time

    wanted = list(ids)
    left: dict[str, TargetHealth] = {}
    if not wanted:
        return {}

    def done() -> bool:
        health = target_health(region, arn)
        left.clear()
        for i in wanted:
            h = health.get(i) or TargetHealth(i, None, "unregistered", "",
                                              "not in the target group")
            if h.state != "healthy":
                left[i] = h
        return not left

    _wait(done, bound, poll=poll, clock=clock or time.monotonic, sleep=sleep or time.sleep)
    return dict(left)


def out_of_service(
    region: str,
    arn: str,
    instances: Mapping[str, str],
    action: Callable[[], Mapping[str, str]],
    *,
    progress: Callable[[str], None] | None = None,
    timing: LbTiming | None = None,
    poll: float = LB_POLL_S,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> dict[str, str]:
    """Run `action` on nodes taken out of the load balancer, then put back the ones it did not
    fail. `instances`: node -> instance id; `action`: the batch's work, returning the nodes it
    failed (node -> why). The result: every failed node (the action's, and those that did not
    become healthy within the bound, with their state and reason); each stays out of the
    target group. Nodes that were not registered before (left out by an earlier rollout) are
    registered once the action passes them.

    A drain that does not finish within the deregistration delay plus DRAIN_MARGIN_S puts the
    batch back and raises ToolFailed (the action never ran). When the action raises, the
    batch stays out of the load balancer (it may be half configured) and the error goes on.
    """
    say = progress or (lambda _line: None)
    ids = dict(instances)
    timing = timing or target_group_timing(region, arn)
    before = target_health(region, arn)
    ports = {i: h.port for i, h in before.items()}
    listed = [n for n, i in ids.items() if i in before and not before[i].out]
    already = [n for n in ids if n not in listed]
    short = arn.rsplit(":", 1)[-1]
    if listed:
        say(f"drain {', '.join(listed)} from the load balancer ({short}; deregistration delay "
            f"{timing.deregistration_delay} s, waiting up to {timing.drain_bound:.0f} s)"
            + (f"; already out: {', '.join(already)}" if already else ""))
    else:
        say(f"nothing to drain from the load balancer ({short}); already out: "
            f"{', '.join(already)}")
    try:
        deregister(region, arn, [ids[n] for n in listed], ports)
    except AwsError as exc:
        raise ToolFailed(f"{exc.message}; the batch was not configured (fix: give the "
                         "credentials elasticloadbalancing:DeregisterTargets and "
                         "RegisterTargets on the target group, then run the rollout "
                         "again)") from None
    stuck = wait_drained(region, arn, [ids[n] for n in listed], timing.drain_bound, poll=poll,
                         clock=clock, sleep=sleep)
    if stuck:
        names = [n for n in listed if ids[n] in stuck]
        register(region, arn, [ids[n] for n in listed], ports)
        raise ToolFailed(
            "the load balancer did not drain " + ", ".join(
                f"{n} ({ids[n]}: {stuck[ids[n]].describe()})" for n in names)
            + f" within {timing.drain_bound:.0f} s; the batch was not configured and is back "
            f"in target group {arn} (fix: look at the target group's health in the EC2 "
            "console or with `aws elbv2 describe-target-health`, then run the rollout again)")
    try:
        bad = dict(action())
    except BaseException:
        say(f"{', '.join(ids)} stay out of the load balancer: the batch did not finish")
        raise
    good = [n for n in ids if n not in bad]
    for n in ids:
        if n in bad:
            bad[n] = f"{bad[n]}; kept out of the load balancer"
    back: list[str] = []
    for n in good:  # one by one: a refused node (e.g. stopped) must not keep the others out
        try:
            register(region, arn, [ids[n]], ports)
        except AwsError as exc:
            bad[n] = f"not registered in the load balancer again: {exc.message}"
            continue
        back.append(n)
    if back:
        say(f"register {', '.join(back)} in the load balancer again (waiting up to "
            f"{timing.healthy_bound:.0f} s for healthy)")
    sick = wait_healthy(region, arn, [ids[n] for n in back], timing.healthy_bound, poll=poll,
                        clock=clock, sleep=sleep)
    out_again = [n for n in back if ids[n] in sick]
    for n in out_again:
        bad[n] = (f"not healthy in the load balancer after {timing.healthy_bound:.0f} s: "
                  f"{sick[ids[n]].describe()}; taken out again")
    if out_again:
        deregister(region, arn, [ids[n] for n in out_again], ports)
    if back:
        say(f"in the load balancer and healthy: {', '.join(n for n in back if n not in bad)}"
            if len(out_again) < len(back) else "no node of the batch became healthy")
    return {n: bad[n] for n in ids if n in bad}
