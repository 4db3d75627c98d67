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
import json
import os
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

from stacklock.adapters import ecr, oci
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "099720109477"  # the moto server's account (tests/integration/conftest.py)
REGION = "us-east-1"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
NAME = "acme-serving/dev/serving"
FINGERPRINT = "sha256:" + "ab" * 32
EPOCH = 1767225600


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


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "stacklock"),
                           "-m", str(REPO_ROOT / "stacklock.yaml"), *args],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, NO_COLOR="1"), cwd=REPO_ROOT)


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
