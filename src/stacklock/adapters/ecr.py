"""Amazon ECR: push a serving image built by `stacklock image build` into the environment's
repository, with an immutable tag, and read back the digest the lock records.

How a push goes (`push`):

1. the repository (`DescribeRepositories`) must exist and have IMMUTABLE tags (the
   gpu_node_aws module creates `<project>/<environment>/serving` so, `ecr.tf`), else exit 2;
2. the tag is the lock fingerprint the image was built from (its config's label
   `stacklock.fingerprint`: `fp-<64 hex>`). `DescribeImages` says what the tag names already:
   the same manifest digest means the push is done already (nothing uploaded); another digest
   is exit 2 naming the tag and the fix, before anything is uploaded (ECR would refuse it);
3. the login (before 2): `GetAuthorizationToken` gives a Basic credential for the registry's
   data plane (`https://ACCOUNT.dkr.ecr.REGION.amazonaws.com`, which --registry must name).
   It lives in memory only, for this push: never logged, never written, never in an error
   message;
4. the blobs (config and layers) go over the registry's HTTP API (Docker Registry v2, as
   `oci.push` does for the lab registry), each by its digest, skipped when the registry holds
   it already: POST an upload, PATCH the bytes, PUT with `?digest=`;
5. the manifest goes through ECR's own API, `PutImage`, with its exact bytes, its media type,
   its digest (ECR checks the bytes against it) and the tag; a tag taken meanwhile is the
   same exit 2 as in 2;
6. `BatchGetImage` by digest reads the manifest back: its sha256 must be the digest.

Credentials and the endpoint come from the AWS chain, as for every AWS call of stacklock
(stacklock.adapters.aws); AWS's errors are exit 3 with AWS's code, except the refusals above.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stacklock.adapters import aws, oci
from stacklock.errors import InvalidInput, Problem, ToolFailed

#: the repository the gpu_node_aws module creates for an environment (ecr.tf)
REPOSITORY_FORMAT = "{project}/{environment}/serving"
#: ECR's error codes for a tag an immutable repository holds already (ECR's registry API
#: says ImageTagAlreadyExistsException; moto 5 says ImageAlreadyExistsException)
_TAKEN_CODES = ("ImageTagAlreadyExistsException", "ImageAlreadyExistsException")


def repository_name(project: str, environment: str) -> str:
    """The environment's repository as gpu_node_aws names it."""
    return REPOSITORY_FORMAT.format(project=project, environment=environment)


def image_tag(fingerprint: str) -> str:
    """The immutable tag of an image built from a stack with this lock fingerprint."""
    algo, _, hexdigest = fingerprint.partition(":")
    if algo != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef"
                                                            for c in hexdigest):
        raise InvalidInput(f"the image's stacklock.fingerprint label is {fingerprint!r}",
                           problems=[Problem("image", "no lock fingerprint in the image's config",
                                             "run: stacklock image build ENV")])
    return f"fp-{hexdigest}"


def image_fingerprint(image: oci.Image) -> str:
    """The lock fingerprint the image was built from (its config's `stacklock.fingerprint`)."""
    blob = image.layout / "blobs" / "sha256" / image.config_digest.split(":", 1)[1]
    labels = (json.loads(blob.read_bytes()).get("config") or {}).get("Labels") or {}
    return str(labels.get("stacklock.fingerprint", ""))


def ecr_client(region: str) -> Any:
    """An ECR client for `region` (AWS chain; AWS_ENDPOINT_URL for moto)."""
    return aws._client("ecr", region)


# --------------------------------------------------------------------------- control plane


@dataclass(frozen=True)
class Repository:
    name: str
    uri: str  # ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME
    arn: str
    mutability: str
    scan_on_push: bool
    encryption: str

    @property
    def registry(self) -> str:
        """The registry host of the repository."""
        return self.uri.split("/", 1)[0]


def repository(region: str, name: str) -> Repository:
    """The repository `name`; exit 2 when it is missing or its tags are mutable."""
    client = ecr_client(region)
    found = aws._call(region, "ecr:DescribeRepositories", client.describe_repositories,
                      absent_codes=("RepositoryNotFoundException",), repositoryNames=[name])
    repos = (found or {}).get("repositories") or []
    if not repos:
        raise InvalidInput(f"ECR repository {name} does not exist in {region}", problems=[
            Problem("--repository", f"no ECR repository {name} in {region}",
                    "apply the environment (gpu_node_aws creates <project>/<environment>/serving "
                    "when ecr_enabled: serving.runtime container), or name an existing one with "
                    "--repository")])
    repo = repos[0]
    got = Repository(
        name=str(repo["repositoryName"]), uri=str(repo["repositoryUri"]),
        arn=str(repo["repositoryArn"]),
        mutability=str(repo.get("imageTagMutability", "MUTABLE")),
        scan_on_push=bool((repo.get("imageScanningConfiguration") or {}).get("scanOnPush")),
        encryption=str((repo.get("encryptionConfiguration") or {}).get("encryptionType", "")))
    if got.mutability != "IMMUTABLE":
        raise InvalidInput(f"ECR repository {name} in {region} has {got.mutability} tags", problems=[
            Problem("--repository", f"{name}: image tags are {got.mutability}, so a tag could "
                    "later name another image than the lock's",
                    "apply gpu_node_aws (image_tag_mutability = IMMUTABLE), or: aws ecr "
                    f"put-image-tag-mutability --repository-name {name} "
                    "--image-tag-mutability IMMUTABLE")])
    return got


def tag_digest(region: str, name: str, tag: str) -> str | None:
    """The manifest digest the tag names in the repository, or None."""
    client = ecr_client(region)
    found = aws._call(region, "ecr:DescribeImages", client.describe_images,
                      absent_codes=("ImageNotFoundException",), repositoryName=name,
                      imageIds=[{"imageTag": tag}])
    details = (found or {}).get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def describe_digest(region: str, name: str, digest: str) -> dict[str, Any] | None:
    """`DescribeImages` of one manifest digest: its tags and digest, or None."""
    client = ecr_client(region)
    found = aws._call(region, "ecr:DescribeImages", client.describe_images,
                      absent_codes=("ImageNotFoundException",), repositoryName=name,
                      imageIds=[{"imageDigest": digest}])
    details = (found or {}).get("imageDetails") or []
    return dict(details[0]) if details else None


def read_manifest(region: str, name: str, digest: str) -> bytes:
    """The manifest ECR holds under `digest` (`BatchGetImage`), its bytes checked against it."""
    client = ecr_client(region)
    got = aws._call(region, "ecr:BatchGetImage", client.batch_get_image, repositoryName=name,
                    imageIds=[{"imageDigest": digest}],
                    acceptedMediaTypes=[oci.MEDIA_MANIFEST])
    images = got.get("images") or []
    if not images:
        failures = got.get("failures") or []
        why = failures[0].get("failureReason", "") if failures else "not found"
        raise ToolFailed(f"ECR {name}@{digest} in {region}: {why}")
    body = str(images[0]["imageManifest"]).encode("utf-8")
    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
        raise ToolFailed(f"ECR {name}@{digest} in {region} holds other manifest bytes")
    return body


def _taken(name: str, tag: str, there: str, ours: str) -> InvalidInput:
    return InvalidInput(
        f"ECR repository {name}: tag {tag} names {there}, not this image ({ours})",
        problems=[Problem(
            f"tag {tag}",
            f"the repository's tags are immutable and {tag} (the lock fingerprint the image was "
            f"built from) already names another image, {there}; nothing was pushed",
            "rebuild the image that tag names (the same lab image, --base-digest, "
            "SOURCE_DATE_EPOCH and mirror give the same digest) and push again; or, if the "
            "image under that tag is wrong, remove it deliberately (aws ecr batch-delete-image "
            f"--repository-name {name} --image-ids imageTag={tag}) and push again")])


def put_manifest(region: str, name: str, image: oci.Image, tag: str) -> bool:
    """`PutImage` of the image's manifest under `tag`; True when ECR stored it, False when the
    tag already named this very manifest. A tag naming another image is exit 2."""
    manifest_bytes = (image.layout / "blobs" / "sha256" /
                      image.manifest_digest.split(":", 1)[1]).read_bytes()
    media_type = str(json.loads(manifest_bytes).get("mediaType") or oci.MEDIA_MANIFEST)
    client = ecr_client(region)
    try:
        got = aws._call(region, "ecr:PutImage", client.put_image, repositoryName=name,
                        imageManifest=manifest_bytes.decode("utf-8"),
                        imageManifestMediaType=media_type, imageDigest=image.manifest_digest,
                        imageTag=tag)
    except aws.AwsError as exc:
        if exc.code not in _TAKEN_CODES:
            raise
        there = tag_digest(region, name, tag)
        if there == image.manifest_digest:
            return False
        raise _taken(name, tag, str(there), image.manifest_digest) from None
    stored = str(((got.get("image") or {}).get("imageId") or {}).get("imageDigest", ""))
    if stored != image.manifest_digest:
        raise ToolFailed(f"ECR stored {name}:{tag} as {stored}, not {image.manifest_digest}")
    return True


# --------------------------------------------------------------------------- data plane


@dataclass(frozen=True)
class Login:
    """A login to a registry's data plane. `authorization` is a credential: it is kept out of
    repr() and never printed or written."""

    registry: str  # https://ACCOUNT.dkr.ecr.REGION.amazonaws.com
    expires: str
    authorization: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization}


def login(region: str) -> Login:
    """`GetAuthorizationToken`: the registry of the account in `region` and a credential for
    it (valid 12 hours on AWS)."""
    client = ecr_client(region)
    got = aws._call(region, "ecr:GetAuthorizationToken", client.get_authorization_token)
    data = (got.get("authorizationData") or [{}])[0]
    token, endpoint = str(data.get("authorizationToken", "")), str(data.get("proxyEndpoint", ""))
    if not token or not endpoint:
        raise ToolFailed(f"AWS ecr:GetAuthorizationToken in {region} answered no token")
    return Login(registry=endpoint.rstrip("/"), expires=str(data.get("expiresAt", "")),
                 authorization=f"Basic {token}")


def _absolute(endpoint: str, location: str) -> str:
    return endpoint.rstrip("/") + location if location.startswith("/") else location


def upload_blobs(image: oci.Image, endpoint: str, name: str,
                 headers: Mapping[str, str] | None = None) -> list[str]:
    """Upload the image's config and layers to the registry at `endpoint` (Docker Registry
    HTTP API v2), each by its digest, skipping blobs it holds already; `headers` carry the
    login. Returns the digests uploaded. A 401/403 is exit 3 without the credential."""
    auth = dict(headers or {})
    base = f"{endpoint.rstrip('/')}/v2/{name}"
    blobs = image.layout / "blobs" / "sha256"
    manifest = json.loads((blobs / image.manifest_digest.split(":", 1)[1]).read_bytes())
    uploaded = []

    def check(status: int, want: int, what: str, text: bytes) -> None:
        if status in (401, 403):
            raise ToolFailed(f"{endpoint}: {what} was refused ({status}): the login expired or "
                             "the caller may not push to "
                             f"{name} (fix: ecr:InitiateLayerUpload, UploadLayerPart, "
                             "CompleteLayerUpload, BatchCheckLayerAvailability on it)")
        if status != want:
            raise ToolFailed(f"{endpoint}: {what} answered {status}: {text[:200]!r}")

    for desc in [manifest["config"], *manifest["layers"]]:
        digest = str(desc["digest"])
        status, _, text = oci._request("HEAD", f"{base}/blobs/{digest}", headers=auth,
                                       timeout=60)
        if status == 200:
            continue
        if status != 404:
            check(status, 200, f"HEAD of blob {digest}", text)
        status, hdrs, text = oci._request("POST", f"{base}/blobs/uploads/", data=b"",
                                          headers=auth, timeout=60)
        check(status, 202, "starting an upload", text)
        location = _absolute(endpoint, hdrs.get("Location", ""))
        path = blobs / digest.split(":", 1)[1]
        size = path.stat().st_size
        status, hdrs, text = oci._request(
            "PATCH", location, data=path,
            headers={**auth, "Content-Type": "application/octet-stream",
                     "Content-Range": f"0-{max(size - 1, 0)}"})
        check(status, 202, f"uploading {digest}", text)
        location = _absolute(endpoint, hdrs.get("Location", location))
        sep = "&" if "?" in location else "?"
        status, _, text = oci._request("PUT", f"{location}{sep}digest={digest}", data=b"",
                                       headers=auth, timeout=120)
        check(status, 201, f"completing {digest}", text)
        uploaded.append(digest)
    return uploaded


# --------------------------------------------------------------------------- the push


@dataclass(frozen=True)
class Pushed:
    registry: str  # https://ACCOUNT.dkr.ecr.REGION.amazonaws.com
    repository: str
    tag: str
    digest: str
    stored: bool  # False: the tag named this image already, nothing was uploaded
    uploaded: tuple[str, ...]


def push(image: oci.Image, region: str, name: str, *, registry: str | None = None,
         endpoint: str | None = None) -> Pushed:
    """Push `image` to ECR repository `name` in `region` (see the module docstring).

    `registry`, when given (the CLI's --registry), must be the account's ECR registry.
    `endpoint` is the registry the blobs go to: the login's registry unless given (the tests
    give a lab registry on 127.0.0.1: moto implements ECR's API, not the registry protocol)."""
    repo = repository(region, name)
    tag = image_tag(image_fingerprint(image))
    auth = login(region)
    host = auth.registry.split("://", 1)[-1]
    if registry is not None and registry.split("://", 1)[-1].rstrip("/") != host:
        raise InvalidInput(f"--registry {registry} is not the ECR registry of {region}",
                           problems=[Problem("--registry",
                                             f"{registry} is not {host}, the registry ECR "
                                             f"names for this account in {region}",
                                             f"--registry https://{host}")])
    if host != repo.registry:
        raise ToolFailed(f"ECR: the login is for {host}, the repository {name} is in "
                         f"{repo.registry}")
    there = tag_digest(region, name, tag)
    if there is not None and there != image.manifest_digest:
        raise _taken(name, tag, there, image.manifest_digest)
    if there == image.manifest_digest:
        read_manifest(region, name, image.manifest_digest)
        return Pushed(auth.registry, name, tag, image.manifest_digest, False, ())
    uploaded = upload_blobs(image, endpoint or auth.registry, name, auth.headers())
    stored = put_manifest(region, name, image, tag)
    read_manifest(region, name, image.manifest_digest)
    return Pushed(auth.registry, name, tag, image.manifest_digest, stored, tuple(uploaded))
