"""ECR for the serving image: what moto implements, and the registry protocol on a real registry.

moto (a real moto server on 127.0.0.1, this project's AWS) implements ECR's API —
repositories, GetAuthorizationToken, PutImage, DescribeImages, BatchGetImage — but not the
registry's data plane (the Docker Registry HTTP API at ACCOUNT.dkr.ecr.REGION.amazonaws.com).
So the blobs go to a lab registry (Debian's docker-registry, scripts/lab-registry.sh, on
127.0.0.1) standing in for that endpoint, with the ECR login's Authorization header on every
request; everything else of the push is moto's ECR. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from stacklock.adapters import ecr, oci
from stacklock.core import serving
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "099720109477"  # the moto server's account (tests/integration/conftest.py)
REGION = "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
NAME = "acme-serving/dev/serving"
FINGERPRINT = "sha256:" + "ab" * 32
EPOCH = 1767225600
HELPER_STAND_IN = {"name": "amazon-ecr-credential-helper", "version": "0.0-stand-in"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def lab_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """scripts/lab-registry.sh on 127.0.0.1, standing in for ECR's registry endpoint."""
    if shutil.which("docker-registry") is None and os.geteuid() != 0:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    folder = tmp_path_factory.mktemp("ecr-registry")
    script = REPO_ROOT / "scripts/lab-registry.sh"
    url = subprocess.run([str(script), "start", "127.0.0.1", str(_free_port()), str(folder)],
                         capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([str(script), "stop", str(folder)], capture_output=True, check=False,
                       timeout=60)


def _image(root: Path, content: str, *, fingerprint: str = FINGERPRINT) -> oci.Image:
    """A small OCI layout as `image build` writes one: a layer, a config with the lock
    fingerprint label and a non-root user."""
    tree = root / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/served").write_text(content)
    blobs = root / "blobs"
    layer = oci.write_layer(tree, blobs, epoch=EPOCH, comment="test layer")
    config = oci.image_config([layer], created="2026-01-01T00:00:00Z", config={
        "User": "10001:10001", "Labels": {"stacklock.fingerprint": fingerprint}})
    return oci.write_layout(root / "oci", [layer], config, ref="acme-serving-serving:test")


def _ecr() -> Any:
    return boto3.client("ecr", region_name=REGION)


def _create(mutability: str = "IMMUTABLE", name: str = NAME) -> None:
    """The repository as gpu_node_aws's ecr.tf declares it (KMS needs a key: AES256 here)."""
    _ecr().create_repository(repositoryName=name, imageTagMutability=mutability,
                             imageScanningConfiguration={"scanOnPush": True},
                             encryptionConfiguration={"encryptionType": "AES256"})


def _blob_in(registry: str, digest: str) -> int:
    req = urllib.request.Request(f"{registry}/v2/{NAME}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_repository_is_immutable_scanned_and_encrypted(moto: str) -> None:
    _create()
    repo = ecr.repository(REGION, NAME)
    assert (repo.mutability, repo.scan_on_push, repo.encryption) == ("IMMUTABLE", True, "AES256")
    assert repo.uri == f"{REGISTRY}/{NAME}"


def test_login_gives_the_registry_and_keeps_the_token_out_of_repr(moto: str) -> None:
    got = ecr.login(REGION)
    assert got.registry == f"https://{REGISTRY}"
    user, _, password = base64.b64decode(got.authorization.split(" ", 1)[1]).decode().partition(":")
    assert user == "AWS" and password
    assert got.authorization.startswith("Basic ")
    assert password not in repr(got) and got.authorization not in repr(got)


def test_push_uploads_by_digest_and_ecr_holds_the_manifest(
        moto: str, lab_registry: str, tmp_path: Path) -> None:
    _create()
    image = _image(tmp_path / "a", "model v1\n")
    pushed = ecr.push(image, REGION, NAME, registry=f"https://{REGISTRY}", endpoint=lab_registry)
    assert pushed.stored and pushed.digest == image.manifest_digest
    assert pushed.tag == "fp-" + "ab" * 32
    assert set(pushed.uploaded) == {image.config_digest, *(la.digest for la in image.layers)}
    for digest in pushed.uploaded:  # the blobs are in the registry, under the repository
        assert _blob_in(lab_registry, digest) == 200
    # ECR's API: the tag names the manifest digest; the manifest bytes are the layout's
    described = _ecr().describe_images(repositoryName=NAME,
                                       imageIds=[{"imageTag": pushed.tag}])["imageDetails"]
    assert [d["imageDigest"] for d in described] == [image.manifest_digest]
    assert described[0]["imageTags"] == [pushed.tag]
    body = ecr.read_manifest(REGION, NAME, image.manifest_digest)
    assert body == (image.layout / "blobs/sha256" /
                    image.manifest_digest.split(":", 1)[1]).read_bytes()
    assert json.loads(body)["config"]["digest"] == image.config_digest


def test_the_same_image_again_is_a_no_op(moto: str, lab_registry: str, tmp_path: Path) -> None:
    _create()
    image = _image(tmp_path / "a", "model v1 (again)\n")
    first = ecr.push(image, REGION, NAME, endpoint=lab_registry)
    again = ecr.push(image, REGION, NAME, endpoint=lab_registry)
    assert first.stored and not again.stored and again.uploaded == ()
    assert again.digest == first.digest
    # and PutImage of the same manifest under its tag: put_manifest says "already there"
    assert ecr.put_manifest(REGION, NAME, image, first.tag) is False


def test_another_image_under_the_tag_is_refused_before_any_upload(
        moto: str, lab_registry: str, tmp_path: Path) -> None:
    _create()
    first = _image(tmp_path / "a", "model v1 (first)\n")
    ecr.push(first, REGION, NAME, endpoint=lab_registry)
    other = _image(tmp_path / "b", "model v2, same fingerprint label\n")
    with pytest.raises(InvalidInput) as err:
        ecr.push(other, REGION, NAME, endpoint=lab_registry)
    text = err.value.problems[0].render()
    assert f"tag fp-{'ab' * 32}" in text and first.manifest_digest in text
    assert "batch-delete-image" in text and err.value.exit_code == 2
    assert _blob_in(lab_registry, other.layers[0].digest) == 404  # nothing uploaded


def test_moto_enforces_tag_immutability_on_put_image(moto: str, tmp_path: Path) -> None:
    """PutImage of another manifest under a taken tag: moto refuses it (with
    ImageAlreadyExistsException; ECR's documented code is ImageTagAlreadyExistsException:
    stacklock takes both), and put_manifest turns it into exit 2 naming the tag."""
    _create()
    first, other = _image(tmp_path / "a", "one\n"), _image(tmp_path / "b", "two\n")
    tag = ecr.image_tag(FINGERPRINT)
    assert ecr.put_manifest(REGION, NAME, first, tag) is True
    manifest = (other.layout / "blobs/sha256" / other.manifest_digest.split(":", 1)[1]).read_text()
    with pytest.raises(_ecr().exceptions.ClientError) as raw:
        _ecr().put_image(repositoryName=NAME, imageManifest=manifest, imageTag=tag,
                         imageManifestMediaType=oci.MEDIA_MANIFEST,
                         imageDigest=other.manifest_digest)
    assert raw.value.response["Error"]["Code"] in ("ImageAlreadyExistsException",
                                                   "ImageTagAlreadyExistsException")
    with pytest.raises(InvalidInput) as err:
        ecr.put_manifest(REGION, NAME, other, tag)
    assert f"tag {tag}" in err.value.problems[0].render()
    # a mutable repository takes the second image under the same tag: that is what IMMUTABLE
    # prevents (and why push refuses a mutable repository)
    _create("MUTABLE", "acme-serving/mutable")
    client = _ecr()
    for img in (first, other):
        body = (img.layout / "blobs/sha256" / img.manifest_digest.split(":", 1)[1]).read_text()
        client.put_image(repositoryName="acme-serving/mutable", imageManifest=body, imageTag=tag,
                         imageManifestMediaType=oci.MEDIA_MANIFEST, imageDigest=img.manifest_digest)
    got = client.describe_images(repositoryName="acme-serving/mutable",
                                 imageIds=[{"imageTag": tag}])["imageDetails"]
    assert [d["imageDigest"] for d in got] == [other.manifest_digest]


def test_moto_takes_the_digest_from_the_caller(moto: str, tmp_path: Path) -> None:
    """What moto does not check: without imageDigest it names the image by a hash of the layer
    digests, not the manifest's sha256 as ECR does; with it, it stores what it is told. So the
    digest equality here rests on stacklock passing imageDigest and reading the bytes back."""
    _create()
    image = _image(tmp_path / "a", "x\n")
    body = (image.layout / "blobs/sha256" / image.manifest_digest.split(":", 1)[1]).read_text()
    got = _ecr().put_image(repositoryName=NAME, imageManifest=body, imageTag="no-digest",
                           imageManifestMediaType=oci.MEDIA_MANIFEST)
    assert got["image"]["imageId"]["imageDigest"] != image.manifest_digest


def test_a_missing_or_mutable_repository_is_exit_2(moto: str, tmp_path: Path) -> None:
    image = _image(tmp_path / "a", "x\n")
    with pytest.raises(InvalidInput) as err:
        ecr.push(image, REGION, NAME)
    assert err.value.problems[0].path == "--repository" and "does not exist" in err.value.message
    _create("MUTABLE")
    with pytest.raises(InvalidInput) as err:
        ecr.push(image, REGION, NAME)
    assert "put-image-tag-mutability" in err.value.problems[0].render()


def test_a_registry_that_is_not_the_accounts_is_exit_2(moto: str, tmp_path: Path) -> None:
    _create()
    with pytest.raises(InvalidInput) as err:
        ecr.push(_image(tmp_path / "a", "x\n"), REGION, NAME, registry="http://127.0.0.1:5000")
    assert err.value.problems[0].render().endswith(f"(fix: --registry https://{REGISTRY})")


# --------------------------------------------------------------------------- the command


def _cli(*args: str, manifest: bool = True) -> subprocess.CompletedProcess[str]:
    default = ["-m", str(REPO_ROOT / "stacklock.yaml")] if manifest else []
    return subprocess.run([str(Path(sys.executable).parent / "stacklock"), *default, *args],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, NO_COLOR="1", COLUMNS="300"), cwd=REPO_ROOT)


def test_image_push_on_an_aws_environment(moto: str, lab_registry: str, tmp_path: Path) -> None:
    """`stacklock image push dev` of the AWS example (host mode: nothing recorded) against moto:
    the image pushed before (its blobs to the stand-in registry) is a no-op, exit 0, printing
    what nodes pull; another image under the tag is exit 2 naming it, without a traceback;
    a --registry other than the account's is exit 2."""
    _create()
    out = tmp_path / "images"
    image = _image(out / "serving-2026-11", "model\n")
    ecr.push(image, REGION, NAME, endpoint=lab_registry)
    res = _cli("image", "push", "dev", "--registry", f"https://{REGISTRY}", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == f"{REGISTRY}/{NAME}@{image.manifest_digest}"
    assert "the tag named this image already" in res.stderr + res.stdout
    assert "Basic " not in res.stderr + res.stdout

    shutil.rmtree(out)
    _image(out / "serving-2026-11", "another model\n")
    res = _cli("image", "push", "dev", "--registry", f"https://{REGISTRY}", "--out", str(out))
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"fp-{'ab' * 32}" in res.stderr and "Traceback" not in res.stderr

    res = _cli("image", "push", "dev", "--registry", "http://127.0.0.1:5000", "--out", str(out))
    assert res.returncode == 2 and "--registry" in res.stderr and "Traceback" not in res.stderr


def _outputs_root(case: Path, outputs: dict[str, str]) -> None:
    """The dev root of a copy of the AWS example, standing in for the rendered one (whose
    hashicorp/aws provider cannot be installed here): a real Terraform root with a local state
    holding `outputs`, applied, so that `terraform output -json` reads them as it reads an
    applied AWS root's."""
    from stacklock.adapters.terraform import LibTerraformEngine, Terraform

    root = case / "terraform" / "environments" / "dev"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    (root / "main.tf").write_text("".join(
        f'output "{k}" {{\n  value = "{v}"\n}}\n' for k, v in outputs.items()) or
        'output "hosts" {\n  value = "none"\n}\n', "utf-8")
    tf = Terraform(root, engine=LibTerraformEngine(), timeout=180)
    tf.init()
    tf.apply(auto_approve=True)


def test_image_push_without_registry_reads_the_ecr_repository_from_terraform(
        moto: str, lab_registry: str, tmp_path: Path) -> None:
    """`stacklock image push dev` of the AWS example without --registry: the repository is
    the dev root's Terraform output ecr_repository_url (read with `terraform output -json`);
    a root without it (host mode, never applied) is exit 2 naming --registry."""
    _create()
    case = tmp_path / "case"
    case.mkdir()
    for name in ("stacklock.yaml", "stacklock.lock", "stacklock.signers"):
        if (REPO_ROOT / name).is_file():
            shutil.copy(REPO_ROOT / name, case / name)
    out = tmp_path / "images"
    image = _image(out / "serving-2026-11", "model via terraform outputs\n")
    ecr.push(image, REGION, NAME, endpoint=lab_registry)  # the blobs: see the module docstring
    _outputs_root(case, {"ecr_repository_url": f"{REGISTRY}/{NAME}"})
    res = _cli("-m", str(case / "stacklock.yaml"), "image", "push", "dev", "--out", str(out),
               manifest=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == f"{REGISTRY}/{NAME}@{image.manifest_digest}"
    assert f"ECR repository {REGISTRY}/{NAME} (Terraform outputs)" in res.stderr + res.stdout
    assert "Basic " not in res.stderr + res.stdout

    _outputs_root(case, {})
    res = _cli("-m", str(case / "stacklock.yaml"), "image", "push", "dev", "--out", str(out),
               manifest=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--registry" in res.stderr and "ecr_repository_url" in res.stderr
    assert "apply dev" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- Terraform: ecr.tf

MODULE = REPO_ROOT / "terraform" / "modules" / "gpu_node_aws"
STACK = "serving-2026-11"
FAKE_AMIS = {"us-east-1": "ami-0a1b2c3d4e5f60718", "us-west-2": "ami-0f1e2d3c4b5a69788"}


def _hcl(path: Path) -> dict[str, Any]:
    import hcl2

    with path.open(encoding="utf-8") as fh:
        return dict(hcl2.load(fh))


def _u(value: Any) -> Any:
    """python-hcl2 keeps string literals quoted: the value without its quotes."""
    if isinstance(value, list):
        return [_u(v) for v in value]
    if isinstance(value, str) and len(value) > 1 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _named(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block in doc.get(kind, []):
        for rtype, named in block.items():
            for name, body in named.items():
                out[f"{rtype.strip(chr(34))}.{name.strip(chr(34))}"] = body
    return out


def test_module_ecr_repository_is_immutable_scanned_encrypted_and_pull_only() -> None:
    doc = _hcl(MODULE / "ecr.tf")
    res, data = _named(doc, "resource"), _named(doc, "data")
    repo = res["aws_ecr_repository.serving"]
    assert repo["count"] == "${var.ecr_enabled ? 1 : 0}"
    assert _u(repo["image_tag_mutability"]) == "IMMUTABLE" and repo["force_delete"] is False
    assert repo["image_scanning_configuration"][0]["scan_on_push"] is True
    enc = repo["encryption_configuration"][0]
    assert enc["encryption_type"] == '${var.ecr_kms_key_arn == null ? "AES256" : "KMS"}'
    assert enc["kms_key"] == "${var.ecr_kms_key_arn}"
    # the lifecycle policy only ever selects untagged images
    policy = res["aws_ecr_lifecycle_policy.serving"]["policy"]
    assert re.findall(r'tagStatus = "(\w+)"', policy) == ["untagged"]
    # the nodes' role: the login (no resource-level permission exists) and pulls from this
    # repository alone
    statements = {_u(s["sid"]): s for s in data["aws_iam_policy_document.ecr_pull"]["statement"]}
    assert _u(statements["EcrLogin"]["actions"]) == ["ecr:GetAuthorizationToken"]
    assert _u(statements["EcrLogin"]["resources"]) == ["*"]
    assert sorted(_u(statements["EcrPullServingImage"]["actions"])) == [
        "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    assert statements["EcrPullServingImage"]["resources"] == [
        "${aws_ecr_repository.serving[0].arn}"]
    assert res["aws_iam_role_policy.ecr_pull"]["role"] == "${aws_iam_role.this.id}"
    variables = {_u(k): v for block in _hcl(MODULE / "variables.tf")["variable"]
                 for k, v in block.items()}
    for name in ("ecr_enabled", "ecr_kms_key_arn", "ecr_untagged_days"):
        body = variables[name]
        assert body["type"] and len(body["description"]) > 20, name
    assert variables["ecr_enabled"]["default"] is False
    outputs = {_u(k) for block in _hcl(MODULE / "outputs.tf")["output"] for k in block}
    assert {"ecr_repository_url", "ecr_repository_arn"} <= outputs


def test_the_lifecycle_policy_is_one_ecr_takes(moto: str) -> None:
    """The lifecycle policy as ecr.tf writes it (jsonencode of the HCL), put through moto's
    ECR API, which checks its schema; the repository settings replayed too."""
    _create()
    policy_hcl = _named(_hcl(MODULE / "ecr.tf"), "resource")["aws_ecr_lifecycle_policy.serving"]
    text = (MODULE / "ecr.tf").read_text("utf-8")
    assert "var.ecr_untagged_days" in str(policy_hcl["policy"])
    days = re.search(r'variable "ecr_untagged_days".*?default\s+=\s+(\d+)',
                     (MODULE / "variables.tf").read_text("utf-8"), re.S)
    assert days and "jsonencode" in text
    policy = {"rules": [{"rulePriority": 1, "description": "Expire untagged images",
                         "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                                       "countUnit": "days", "countNumber": int(days.group(1))},
                         "action": {"type": "expire"}}]}
    _ecr().put_lifecycle_policy(repositoryName=NAME, lifecyclePolicyText=json.dumps(policy))
    got = json.loads(_ecr().get_lifecycle_policy(repositoryName=NAME)["lifecyclePolicyText"])
    assert got["rules"][0]["selection"]["tagStatus"] == "untagged"


def _container_manifest(folder: Path, test: str) -> None:
    """The AWS example (stacklock.yaml) in container mode in `folder`, its models' archive a
    stand-in file whose sha256 the manifest pins."""
    archive = folder / "examples" / "models" / "tiny-linear.mar"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(f"a stand-in model archive for the ECR {test} test\n".encode())
    data = yaml.safe_load((REPO_ROOT / "stacklock.yaml").read_text("utf-8"))
    for stack in data["stacks"].values():
        stack["serving"] = {"runtime": "container"}
        for model in stack.get("models", []):
            model["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    (folder / "stacklock.yaml").write_text(yaml.safe_dump(data, sort_keys=False), "utf-8")


@pytest.fixture(scope="module")
def container_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stacklock.yaml with serving.runtime container, an image in the lock, rendered."""
    from stacklock.core.lock import build_lock
    from stacklock.core.manifest import load_manifest
    from stacklock.core.render import render_tree, write_tree

    root = tmp_path_factory.mktemp("ecr-render")
    shutil.copytree(MODULE, root / "terraform" / "modules" / "gpu_node_aws")
    _container_manifest(root, "render")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STACKLOCK_HOME", str(root))
        # the AWS example runs Ubuntu 24.04, for which stacklock records no version of the
        # ECR credential helper (render refuses an ECR image there: test_serving_ecr.py); a
        # stand-in pin lets this Terraform test render the container-mode roots
        mp.setitem(serving.ECR_LOGIN_PACKAGES, "ubuntu2404", (HELPER_STAND_IN,))
        loaded = load_manifest(root / "stacklock.yaml")
        lock = build_lock(loaded, {STACK: dict(FAKE_AMIS)})
        digest = "sha256:" + "cd" * 32
        lock["stacks"][STACK]["image"] = {
            "config_digest": "sha256:" + "ef" * 32, "digest": digest,
            "fingerprint": lock["stacks"][STACK]["fingerprint"],
            "reference": f"{REGISTRY}/{NAME}@{digest}", "registry": REGISTRY,
            "registry_url": f"https://{REGISTRY}", "repository": NAME, "user": "10001:10001"}
        write_tree(loaded, render_tree(loaded, lock))
    return root


def test_the_container_mode_group_vars_log_the_nodes_in_to_ecr(container_tree: Path) -> None:
    gv = yaml.safe_load((container_tree / "inventories/dev/group_vars/dev/stacklock.yml")
                        .read_text("utf-8"))
    spec = gv["serving_container"]
    assert (spec["registry"], spec["registry_auth"]) == (REGISTRY, "ecr")
    assert spec["image"].startswith(f"{REGISTRY}/{NAME}@sha256:")
    assert gv["docker_packages"][-1] == HELPER_STAND_IN
    assert "docker_daemon_options" not in gv  # ECR is TLS: nothing insecure


def test_a_container_mode_root_enables_ecr_and_outputs_its_url(container_tree: Path) -> None:
    from stacklock.adapters.terraform import LibTerraformEngine, Terraform

    root = container_tree / "terraform" / "environments" / "dev"
    call = {_u(k): v for block in _hcl(root / "main.tf")["module"] for k, v in block.items()}
    assert call["gpu_nodes"]["ecr_enabled"] is True
    outputs = {_u(k): v for block in _hcl(root / "outputs.tf")["output"]
               for k, v in block.items()}
    assert outputs["ecr_repository_url"]["value"] == "${module.gpu_nodes.ecr_repository_url}"
    tf = Terraform(container_tree, engine=LibTerraformEngine())
    assert tf.fmt_check([container_tree / "terraform" / "environments", MODULE]) == []


def _checkov() -> str:
    for c in (os.environ.get("STACKLOCK_CHECKOV", ""),
              str(REPO_ROOT / ".cache" / "checkov-venv" / "bin" / "checkov"),
              shutil.which("checkov") or ""):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    pytest.skip("checkov is not installed (make .cache/checkov-venv, or STACKLOCK_CHECKOV)")


def _scan(folder: Path) -> dict[str, Any]:
    run = subprocess.run([_checkov(), "-d", str(folder), "--framework", "terraform",
                          "--skip-download", "-o", "json"], capture_output=True, text=True,
                         timeout=600, check=False,
                         env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"})
    assert run.returncode in (0, 1), run.stderr[-3000:]
    data = json.loads(run.stdout)
    if isinstance(data, list):
        data = next(d for d in data if d.get("check_type") == "terraform")
    return dict(data)


@pytest.mark.slow
def test_checkov_passes_the_repository_and_catches_mutable_tags(container_tree: Path,
                                                                 tmp_path: Path) -> None:
    report = _scan(container_tree / "terraform" / "environments" / "dev")
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert report["summary"]["failed"] == 0 and not failed, failed
    passed = {(c["check_id"], c["resource"]) for c in report["results"]["passed_checks"]}
    repo = "module.gpu_nodes.aws_ecr_repository.serving[0]"
    assert {("CKV_AWS_51", repo), ("CKV_AWS_163", repo)} <= passed  # immutable, scan on push
    assert ("CKV_AWS_356", "module.gpu_nodes.aws_iam_policy_document.ecr_pull") in passed
    skipped = {c["check_id"]: (c.get("check_result") or {}).get("suppress_comment", "")
               for c in report["results"]["skipped_checks"] if c["resource"] == repo}
    assert set(skipped) == {"CKV_AWS_136"} and "AES256" in skipped["CKV_AWS_136"]

    shutil.copytree(container_tree / "terraform", tmp_path / "terraform")
    ecr_tf = tmp_path / "terraform/modules/gpu_node_aws/ecr.tf"
    ecr_tf.write_text(ecr_tf.read_text("utf-8").replace('"IMMUTABLE"', '"MUTABLE"'), "utf-8")
    report = _scan(tmp_path / "terraform" / "environments" / "dev")
    assert ("CKV_AWS_51", repo) in {(c["check_id"], c["resource"])
                                    for c in report["results"]["failed_checks"]}


# --------------------------------------------------------------------------- per environment

WEST = "us-west-2"  # prod's region in the AWS example: another registry host, same account


def test_one_digest_pushed_to_each_environments_repository_renders_each_its_own(
        moto: str, lab_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS example in container mode: `stacklock image push dev` and `image push prod`
    (us-west-2) into their own repositories (`<project>/<env>/serving`, as gpu_node_aws makes
    them), each recorded in the lock under stacks.STACK.image.pushed.ENV with the one digest;
    render refuses staging (not pushed, exit 2 naming its push) until it is pushed too, and
    then writes every environment its own repository, registry and ECR login."""

    from stacklock.core.lock import build_lock, dump_lock, fingerprint_of, read_lock
    from stacklock.core.manifest import load_manifest
    from stacklock.core.render import render_tree

    case = tmp_path / "case"
    _container_manifest(case, "push")
    monkeypatch.setenv("STACKLOCK_HOME", str(REPO_ROOT))
    monkeypatch.setitem(serving.ECR_LOGIN_PACKAGES, "ubuntu2404", (HELPER_STAND_IN,))
    loaded = load_manifest(case / "stacklock.yaml")
    (case / "stacklock.lock").write_text(dump_lock(build_lock(loaded, {STACK: dict(FAKE_AMIS)})))
    fingerprint = (read_lock(loaded.lock_path) or {})["stacks"][STACK]["fingerprint"]

    out = tmp_path / "images"
    image = _image(out / STACK, "one image, every environment\n", fingerprint=fingerprint)
    hosts = {"dev": REGISTRY, "staging": REGISTRY, "prod": f"{ACCOUNT}.dkr.ecr.{WEST}.amazonaws.com"}
    regions = {"dev": REGION, "staging": REGION, "prod": WEST}

    def push(env: str) -> None:
        name = f"acme-serving/{env}/serving"
        boto3.client("ecr", region_name=regions[env]).create_repository(
            repositoryName=name, imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"})
        ecr.push(image, regions[env], name, endpoint=lab_registry)  # the blobs: module docstring
        res = _cli("-m", str(case / "stacklock.yaml"), "image", "push", env, "--registry",
                   f"https://{hosts[env]}", "--out", str(out), manifest=False)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.strip() == f"{hosts[env]}/{name}@{image.manifest_digest}"
        assert f"stacks.{STACK}.image.pushed.{env} = " in res.stderr

    push("dev")
    push("prod")
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    entry = lock["stacks"][STACK]["image"]
    assert entry["digest"] == image.manifest_digest and entry["fingerprint"] == fingerprint
    assert entry["pushed"] == {
        env: {"registry": hosts[env], "registry_url": f"https://{hosts[env]}",
              "repository": f"acme-serving/{env}/serving"} for env in ("dev", "prod")}
    assert fingerprint_of(lock["stacks"][STACK]) == fingerprint  # outside the fingerprint
    for env in ("dev", "prod"):  # ECR: each repository's tag names the one digest
        assert ecr.tag_digest(regions[env], f"acme-serving/{env}/serving",
                              ecr.image_tag(fingerprint)) == image.manifest_digest
    with pytest.raises(InvalidInput) as err:
        render_tree(loaded, lock)
    (problem,) = err.value.problems
    assert problem.path == f"stacks.{STACK}.image" and err.value.exit_code == 2
    assert problem.hint.startswith("run: stacklock image push staging ")

    push("staging")
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    tree = render_tree(loaded, lock)
    for env in ("dev", "staging", "prod"):
        gv = yaml.safe_load(tree[f"inventories/{env}/group_vars/{env}/stacklock.yml"])
        spec = gv["serving_container"]
        assert spec["image"] == (f"{hosts[env]}/acme-serving/{env}/serving"
                                 f"@{image.manifest_digest}"), env
        assert (spec["registry"], spec["registry_auth"]) == (hosts[env], "ecr")
        assert spec["digest"] == image.manifest_digest
