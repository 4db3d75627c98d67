"""`stacklock image build ENV`: the serving image of ENV's stack, built from the lock on the
controller, reproducibly, with its CycloneDX SBOM.

The image is assembled, not `docker build`-ed (stacklock.adapters.oci says why), in four
layers, each a folder written as a tar with every mtime at `SOURCE_DATE_EPOCH`:

1. base: the lab image's own layer, byte for byte (`docker save` of the image every lab
   node runs: the same debootstrap'd Debian 12 rootfs); pinned by its diff_id, which
   `--base-digest` can require;
2. debs: Java at the lock's pin and python3-venv, with the dependencies apt resolves
   against the base's dpkg status, all from the lab mirror's .debs; unpacked without
   maintainer scripts (they stamp times and make keystores), and registered in the dpkg
   status so the image's packages can be read like a node's; /usr/bin/java is the link the
   alternatives system would make;
3. venv: the lock's whole Python closure in /opt/torchserve/venv, `pip install
   --require-hashes --no-deps` from the mirror's wheelhouse (nothing resolved, nothing from
   the network), run in a chroot of the base plus the debs, byte-code compiled with
   checked-hash .pyc files (SOURCE_DATE_EPOCH set: no source mtime in them);
4. app: the TorchServe config (the lock's bytes, checked against its sha256), the model
   archives (each checked against the lock's sha256), the non-root user `torchserve`
   (uid/gid 10001) and its folders: TorchServe works in /run/torchserve and logs to
   /var/log/torchserve, which the runner mounts as tmpfs (the root stays read-only).

The result is an OCI image layout in OUT/STACK/oci (`oci:` in skopeo's terms), its SBOM
OUT/STACK.cdx.json (stacklock.core.sbom, as `stacklock sbom` writes a node's), and the
build record OUT/STACK.image.json (`stacklock.image/v1`: digests, sizes, seconds per step).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stacklock.adapters import docker as lab_docker
from stacklock.adapters import ecr, oci
from stacklock.adapters import mirror as lab_mirror
from stacklock.adapters.proc import run_command
from stacklock.console import info, step
from stacklock.core import sbom as sbommod
from stacklock.core import serving
from stacklock.core.files import atomic_write
from stacklock.core.lock import (
    config_text,
    dump_lock,
    fingerprint_of,
    read_lock,
    serving_runtime,
    sha256_file,
)
from stacklock.core.manifest import AwsEnvironment, LoadedManifest
from stacklock.errors import InvalidInput, Problem, ToolFailed
from stacklock.flows.run import Run, Target
from stacklock.flows.sbom import source_date

IMAGE_SCHEMA = "stacklock.image/v1"
VENV = "/opt/torchserve/venv"
#: TorchServe's working folder (key_file.json, temp files) and its logs: folders the runner
#: mounts writable (the root filesystem is read-only): core.serving says which
STATE_DIR = serving.STATE_DIR
LOG_DIR = serving.LOG_DIR
MODEL_STORE = "/var/lib/torchserve/model-store"
CONFIG_PATH = "/etc/torchserve/config.properties"
JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
USER_ID = 10001
#: Debian packages the venv needs beside the lock's Java (as the torchserve role installs)
SYSTEM_PACKAGES = ("python3-venv",)
#: merged /usr: a .deb's /lib, /bin, ... go under /usr in the layer (the base has links)
_MERGED = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass
class BuildRecord:
    """What one build made: digests, sizes and the seconds of each step."""

    environment: str
    stack: str
    ref: str
    manifest_digest: str = ""
    config_digest: str = ""
    base_image: str = ""
    base_diff_id: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0
    source_date_epoch: int = 0
    fingerprint: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    layout: str = ""
    sbom: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"schema": IMAGE_SCHEMA, "environment": self.environment, "stack": self.stack,
                "ref": self.ref, "manifest_digest": self.manifest_digest,
                "config_digest": self.config_digest, "base_image": self.base_image,
                "base_diff_id": self.base_diff_id, "layers": self.layers, "size": self.size,
                "source_date_epoch": self.source_date_epoch, "fingerprint": self.fingerprint,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
                "layout": self.layout, "sbom": self.sbom}


@contextmanager
def _timed(record: BuildRecord, name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        record.seconds[name] = time.monotonic() - start


def _stanzas(text: str) -> list[str]:
    return [s.strip("\n") for s in re.split(r"\n\s*\n", text) if s.strip()]


def _field(stanza: str, name: str) -> str:
    found = re.search(rf"^{name}: (.*)$", stanza, re.M)
    return found.group(1).strip() if found else ""


def _merge_usr(root: Path) -> None:
    """A .deb's /lib, /bin ... moved under /usr (the base's merged /usr has links there)."""
    for name in _MERGED:
        top = root / name
        if top.is_dir() and not top.is_symlink():
            target = root / "usr" / name
            target.mkdir(parents=True, exist_ok=True)
            run_command(["cp", "-a", f"{top}/.", str(target)], timeout=600)
            shutil.rmtree(top)


def _deb_layer(debs: list[Path], layer: Path, base_status: str) -> list[str]:
    """Unpack `debs` into `layer` and write the dpkg status (the base's plus theirs);
    return the status stanzas added."""
    added: dict[str, str] = {}
    info_dir = layer / "var/lib/dpkg/info"
    info_dir.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        paths = oci.deb_extract(deb, layer)
        control = oci.deb_control(deb).strip("\n")
        name, arch = _field(control, "Package"), _field(control, "Architecture")
        key = f"{name}:{arch}" if _field(control, "Multi-Arch") == "same" else name
        lines = control.splitlines()
        lines.insert(1, "Status: install ok installed")
        added[name] = "\n".join(lines)
        (info_dir / f"{key}.list").write_text("\n".join(paths) + "\n")
        md5 = oci.deb_md5sums(deb)
        if md5:
            (info_dir / f"{key}.md5sums").write_text(md5)
    _merge_usr(layer)
    kept = [s for s in _stanzas(base_status) if _field(s, "Package") not in added]
    status = sorted(kept + list(added.values()), key=lambda s: _field(s, "Package"))
    (layer / "var/lib/dpkg/status").write_text("\n\n".join(status) + "\n\n")
    java = layer / "usr/bin/java"
    if (layer / JAVA_HOME.lstrip("/") / "bin/java").exists() and not java.exists():
        java.parent.mkdir(parents=True, exist_ok=True)
        java.symlink_to(f"{JAVA_HOME}/bin/java")
    return sorted(added.values())


def requirements_text(locked: Mapping[str, Any]) -> str:
    """The lock's closure as `pip install --require-hashes --no-deps -r` reads it (the
    torchserve role's requirements.lock, less its comment)."""
    lines = []
    for pin in sorted(locked.get("pip") or [], key=lambda p: str(p["name"])):
        hashes = " ".join(f"--hash=sha256:{f['sha256']}" for f in pin.get("files") or [])
        lines.append(f"{pin['name']}=={pin['version']} {hashes}".rstrip())
    return "\n".join(lines) + "\n"


def _venv_layer(rootfs: Path, layer: Path, locked: Mapping[str, Any], wheels: Path,
                epoch: int, log_file: Path) -> None:
    env = {"SOURCE_DATE_EPOCH": str(epoch), "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8",
           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    stage = rootfs / "tmp/stacklock-wheels"
    stage.mkdir(parents=True, exist_ok=True)
    wanted = {f["file"] for p in locked.get("pip") or [] for f in p.get("files") or []}
    for name in sorted(wanted):  # pip checks each against the lock's --hash
        src = wheels / name
        if not src.is_file():
            raise ToolFailed(f"{src}: the lab mirror lacks a file of the lock (run: stacklock "
                             "lab mirror)")
        try:
            os.link(src, stage / name)
        except OSError:
            shutil.copyfile(src, stage / name)
    (rootfs / "tmp/requirements.lock").write_text(requirements_text(locked))
    run_command(["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", VENV], env=env,
                capture=False, log_file=log_file, timeout=600)
    run_command(["chroot", str(rootfs), f"{VENV}/bin/python", "-m", "pip", "install",
                 "--no-index", "--find-links", "/tmp/stacklock-wheels", "--require-hashes",
                 "--no-deps", "-r", "/tmp/requirements.lock"], env=env, capture=False,
                log_file=log_file, timeout=1800)
    shutil.rmtree(stage)
    (rootfs / "tmp/requirements.lock").unlink()
    target = layer / VENV.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    (rootfs / VENV.lstrip("/")).rename(target)
    # the venv's own pip run may leave caches behind: none of them belongs in the image
    for cache in sorted(target.rglob("__pycache__")):
        for pyc in cache.glob("*.pyc"):
            if pyc.read_bytes()[4:8] == b"\0\0\0\0":  # a timestamp .pyc (flags 0)
                pyc.unlink()


def _app_layer(layer: Path, rootfs: Path, locked: Mapping[str, Any],
               loaded: LoadedManifest) -> None:
    ts = locked.get("torchserve") or {}
    text = config_text({str(k): str(v) for k, v in (ts.get("config") or {}).items()})
    want = ts.get("config_sha256")
    got = hashlib.sha256(text.encode()).hexdigest()
    if want and got != want:
        raise ToolFailed(f"TorchServe's config from the lock has sha256 {got}, the lock says "
                         f"{want}: run `stacklock lock` again")
    conf = layer / CONFIG_PATH.lstrip("/")
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    conf.chmod(0o644)
    store = layer / MODEL_STORE.lstrip("/")
    store.mkdir(parents=True)
    for i, model in enumerate(locked.get("models") or []):
        src = loaded.local_file(f"models[{i}].archive", str(model["archive"]))
        digest = sha256_file(src)
        if digest != model["sha256"]:
            raise InvalidInput(f"{src}: sha256 {digest}, the lock says {model['sha256']}",
                               problems=[Problem(f"models[{i}].archive",
                                                 "the archive is not the locked one",
                                                 "put the locked archive back, or lock again")])
        shutil.copyfile(src, store / str(model["file"]))
        (store / str(model["file"])).chmod(0o644)
    for rel in ("etc/passwd", "etc/group"):
        base = (rootfs / rel).read_text()
        line = (f"torchserve:x:{USER_ID}:{USER_ID}:TorchServe:{STATE_DIR}:/usr/sbin/nologin"
                if rel == "etc/passwd" else f"torchserve:x:{USER_ID}:")
        (layer / rel).write_text(base.rstrip("\n") + "\n" + line + "\n")
        (layer / rel).chmod(0o644)
    for folder in (layer / STATE_DIR.lstrip("/"), layer / LOG_DIR.lstrip("/")):
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, USER_ID, USER_ID)
        folder.chmod(0o750)
    for parent in (layer / "etc", layer / "etc/torchserve", layer / "var", layer / "var/lib",
                   layer / "var/log", layer / "var/lib/torchserve", store, layer / "run"):
        parent.chmod(0o755)


def image_facts(rootfs: Path, venv: Path, app: Path, locked: Mapping[str, Any]) -> dict[str, Any]:
    """The facts `stacklock sbom` reads from a node, read from the image's files instead:
    `rootfs` the base with the debs, `venv` the venv's folder, `app` the app layer's."""
    osr = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', (rootfs / "etc/os-release").read_text(), re.M))
    packages = []
    for stanza in _stanzas((rootfs / "var/lib/dpkg/status").read_text()):
        if "installed" in _field(stanza, "Status"):
            packages.append({"name": _field(stanza, "Package"),
                             "version": _field(stanza, "Version"),
                             "architecture": _field(stanza, "Architecture"),
                             "status": _field(stanza, "Status")})
    dists: dict[str, str] = {}
    for meta in sorted(venv.glob("lib/python3*/site-packages/*.dist-info/METADATA")):
        text = meta.read_text("utf-8", errors="replace")
        dists[_field(text, "Name")] = _field(text, "Version")
    cfg = dict(re.findall(r"^(\S+) = (.*)$", (venv / "pyvenv.cfg").read_text(), re.M))
    java = next((p["version"] for p in packages if p["name"] == "openjdk-17-jre-headless"), None)
    ts = locked.get("torchserve") or {}
    archives = {p.name: sha256_file(p) for p in sorted((app / MODEL_STORE.lstrip("/")).glob("*"))}
    conf = app / CONFIG_PATH.lstrip("/")
    return {
        "os": {"distribution": osr.get("ID"), "release": osr.get("VERSION_ID"),
               "codename": osr.get("VERSION_CODENAME"), "pretty_name": osr.get("PRETTY_NAME"),
               "architecture": "amd64"},
        "os_packages": sorted(packages, key=lambda p: (p["name"], p["version"])),
        "torchserve": {"venv": {"path": VENV, "python": cfg.get("version"),
                                "distributions": dists},
                       "config": {"path": CONFIG_PATH, "sha256": sha256_file(conf)},
                       "model_store": {"path": MODEL_STORE, "archives": archives},
                       "version": dists.get("torchserve"), "config_lock": ts.get("config_sha256")},
        "java": {"version": java, "major": "17" if java else None, "source": "dpkg"},
        "nvidia_driver": {},
    }


def _base(image: str, cache: Path) -> tuple[Path, str]:
    """The lab image's layer tar (cached by image id) and the image id."""
    lab_docker.ensure_daemon()
    lab_docker.build_image(image)
    image_id = run_command(["docker", "image", "inspect", "-f", "{{.Id}}", image],
                           timeout=60).stdout.strip()
    tar = cache / f"base-{image_id.split(':', 1)[-1][:16]}.tar"
    if not tar.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        oci.docker_save_layer(image, tar)
    return tar, image_id


def build(loaded: LoadedManifest, lock: Mapping[str, Any], env: str, out_dir: Path, *,
          base_image: str | None = None, base_digest: str | None = None,
          load: bool = False) -> BuildRecord:
    """Build ENV's serving image into `out_dir`; see the module docstring."""
    stack = loaded.manifest.environments[env].stack
    locked = lock["stacks"][stack]
    project = loaded.manifest.project
    epoch = int(source_date().timestamp())
    created = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fingerprint = str(locked.get("fingerprint", ""))
    tag = f"{project}-serving:{stack}-{fingerprint.split(':', 1)[-1][:12]}"
    record = BuildRecord(env, stack, tag, source_date_epoch=epoch, fingerprint=fingerprint)
    if base_image is None:
        lab = loaded.manifest.lab
        base_image = lab.image if lab is not None else lab_docker.LAB_IMAGE
    record.base_image = base_image
    cache = lab_docker.cache_dir() / "image"
    log_file = lab_docker.cache_dir() / "logs" / f"image-{project}-{stack}.log"
    mirror_root = lab_mirror.mirror_dir()
    work = Path(tempfile.mkdtemp(prefix="stacklock-image-", dir="/var/tmp"))
    try:
        rootfs, blobs = work / "rootfs", work / "blobs"
        with _timed(record, "base"):
            step(f"base: the layer of {base_image} (the lab nodes' Debian rootfs)")
            base_tar, _ = _base(base_image, cache)
            base = oci.layer_from_tar(base_tar, blobs, comment=f"base {base_image}")
            if base_digest and base.diff_id != base_digest:
                raise InvalidInput(
                    f"the base layer of {base_image} is {base.diff_id}, not {base_digest}",
                    problems=[Problem("--base-digest", f"{base_image} has another layer",
                                      "rebuild the lab image, or give its digest")])
            record.base_diff_id = base.diff_id
            oci.extract_tar(base_tar, rootfs)
        with _timed(record, "debs"):
            java = [f"{p['name']}={p['version']}" for p in
                    (locked.get("apt") or {}).get("java") or []]
            step(f"debs: {', '.join(java + list(SYSTEM_PACKAGES))} from the lab mirror")
            debs = oci.resolve_debs(mirror_root / "apt", rootfs / "var/lib/dpkg/status",
                                    [*java, *SYSTEM_PACKAGES], work)
            deb_dir = work / "debs"
            _deb_layer(debs, deb_dir, (rootfs / "var/lib/dpkg/status").read_text())
            layer_debs = oci.write_layer(deb_dir, blobs, epoch=epoch,
                                         comment=f"{len(debs)} .debs unpacked")
            run_command(["cp", "-a", f"{deb_dir}/.", str(rootfs)], timeout=600)
        with _timed(record, "venv"):
            step(f"venv: {len(locked.get('pip') or [])} locked distributions, "
                 "--require-hashes, from the mirror's wheelhouse")
            venv_dir = work / "venv"
            _venv_layer(rootfs, venv_dir, locked, mirror_root / "wheels", epoch, log_file)
            layer_venv = oci.write_layer(venv_dir, blobs, epoch=epoch,
                                         comment="the lock's Python closure")
        with _timed(record, "app"):
            step("app: TorchServe's config, the model archives (sha256 checked), the user")
            app_dir = work / "app"
            _app_layer(app_dir, rootfs, locked, loaded)
            layer_app = oci.write_layer(app_dir, blobs, epoch=epoch,
                                        comment="config, models, user")
        with _timed(record, "layout"):
            layers = [base, layer_debs, layer_venv, layer_app]
            config = oci.image_config(layers, created=created, config={
                "User": f"{USER_ID}:{USER_ID}",
                "WorkingDir": STATE_DIR,
                "Env": [f"PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin",
                        f"JAVA_HOME={JAVA_HOME}", "LANG=C.UTF-8",
                        f"LOG_LOCATION={LOG_DIR}", f"METRICS_LOCATION={LOG_DIR}",
                        f"TEMP={STATE_DIR}", f"HOME={STATE_DIR}",
                        "PYTHONDONTWRITEBYTECODE=1"],
                "Entrypoint": [f"{VENV}/bin/torchserve", "--start", "--foreground", "--ncs",
                               "--ts-config", CONFIG_PATH, "--model-store", MODEL_STORE],
                "Labels": {"org.opencontainers.image.created": created,
                           "org.opencontainers.image.title": f"{project} serving ({stack})",
                           "stacklock.project": project, "stacklock.stack": stack,
                           "stacklock.fingerprint": fingerprint,
                           "stacklock.base": f"{base_image}@{base.diff_id}"},
            })
            layout = out_dir / stack / "oci"
            if layout.exists():
                shutil.rmtree(layout)
            image = oci.write_layout(layout, layers, config, ref=tag)
        record.manifest_digest, record.config_digest = image.manifest_digest, image.config_digest
        record.size = image.size
        record.layers = [{"digest": la.digest, "diff_id": la.diff_id, "size": la.size,
                          "comment": la.comment} for la in image.layers]
        record.layout = str(layout)
        with _timed(record, "sbom"):
            facts = image_facts(rootfs, venv_dir / VENV.lstrip("/"), app_dir, locked)
            # the image itself is the document's root (a container named and hashed by its
            # manifest digest, with the purl a node's document gives the image it runs)
            bom = sbommod.image_bom(facts, locked, project=project, environment=env,
                                    stack=stack, tag=tag, digest=image.manifest_digest,
                                    config_digest=image.config_digest,
                                    timestamp=datetime.fromtimestamp(epoch, tz=UTC))
            sbom_path = atomic_write(out_dir / f"{stack}.cdx.json", sbommod.to_json(bom))
            record.sbom = str(sbom_path)
        if load:
            with _timed(record, "docker load"):
                step(f"loading {tag} into Docker")
                oci.docker_load(image, work, tag=tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    atomic_write(out_dir / f"{stack}.image.json",
                 json.dumps(record.as_dict(), indent=2, sort_keys=True) + "\n")
    info(f"{tag}: manifest {record.manifest_digest}, {record.size / 2**20:.0f} MiB in "
         f"{sum(record.seconds.values()):.0f} s; layout {record.layout}, SBOM {record.sbom}")
    return record


#: the root output naming an aws environment's repository (templates/terraform/aws/outputs.tf.j2)
ECR_OUTPUT = "ecr_repository_url"


def ecr_from_outputs(env: str, region: str, outputs: Mapping[str, Any]) -> tuple[str, str]:
    """(registry URL `https://ACCOUNT.dkr.ecr.REGION.amazonaws.com`, repository) from an aws
    root's Terraform outputs (`ecr_repository_url`); exit 2 naming --registry when the root
    has none (a host-mode stack: no repository; or never applied) or it is no ECR URL of the
    environment's region."""
    url = str(outputs.get(ECR_OUTPUT) or "").strip()
    fix = (f"run: stacklock apply {env} (its root creates the repository for a stack with "
           "serving.runtime: container), or give --registry https://ACCOUNT.dkr.ecr."
           f"{region}.amazonaws.com")
    if not url:
        raise InvalidInput(
            f"{env}: no --registry given and its Terraform outputs hold no {ECR_OUTPUT}",
            problems=[Problem("--registry", f"the ECR repository of {env} is not known: no "
                              f"{ECR_OUTPUT} in its Terraform outputs", fix)])
    host, _, repository = url.split("://", 1)[-1].partition("/")
    match = serving.ECR_REGISTRY.match(host)
    if match is None or not repository or f".dkr.ecr.{region}." not in host:
        raise InvalidInput(
            f"{env}: Terraform output {ECR_OUTPUT} = {url!r} is not an ECR repository of "
            f"{region}", problems=[Problem("--registry", f"{ECR_OUTPUT} {url!r} names no ECR "
                                           f"repository in {region}", fix)])
    return f"https://{host}", repository


def push_target(run: Run, target: Target, registry: str | None,
                repository: str | None) -> tuple[str, str | None]:
    """Where `image push` goes: --registry (and --repository) as given; for an aws
    environment without --registry, its ECR repository from its Terraform outputs (the
    repository gpu_node_aws created: `terraform output`, as apply writes the inventory from
    them); a lab or static environment needs --registry (exit 2)."""
    if registry:
        return registry, repository
    if not isinstance(target.spec, AwsEnvironment):
        raise InvalidInput(
            f"{target.name} is a {target.provider} environment: image push needs --registry",
            problems=[Problem("--registry", f"no registry for {target.name}: only an aws "
                              "environment has one of its own (its ECR repository)",
                              "give --registry http://HOST:PORT (the lab's: "
                              "scripts/lab-registry.sh start ADDR PORT DIR)")])
    tf = run.terraform(target)
    tf.init()
    url, found = ecr_from_outputs(target.name, target.spec.region, tf.output())
    step(f"{target.name}: ECR repository {url.split('://', 1)[1]}/{found} (Terraform outputs)")
    return url, repository or found


def push_image(loaded: LoadedManifest, env: str, out_dir: Path, registry: str,
               repository: str | None = None) -> tuple[str, str]:
    """Push the image `build` wrote for ENV's stack to `registry` (http://HOST:PORT);
    return (repository, manifest digest): what a node pulls, `REGISTRY/REPOSITORY@DIGEST`."""
    stack = loaded.manifest.environments[env].stack
    layout = out_dir / stack / "oci"
    if not (layout / "index.json").is_file():
        raise InvalidInput(f"{layout}: no image built for {env}",
                           problems=[Problem("image", f"no OCI layout in {layout}",
                                             f"run: stacklock image build {env}")])
    image = oci.read_layout(layout)
    spec = loaded.manifest.environments[env]
    if isinstance(spec, AwsEnvironment):  # ECR, immutable tag = the fingerprint (adapters/ecr)
        repository = repository or ecr.repository_name(loaded.manifest.project, env)
        step(f"pushing {image.ref} to ECR {repository} in {spec.region}")
        pushed = ecr.push(image, spec.region, repository, registry=registry)
        info(f"{pushed.registry.split('://', 1)[-1]}/{repository}:{pushed.tag} = {pushed.digest}"
             + ("" if pushed.stored else " (the tag named this image already)"))
        return repository, pushed.digest
    repository = repository or f"{loaded.manifest.project}/serving"
    start = time.monotonic()
    step(f"pushing {image.ref} to {registry}/{repository}")
    digest = oci.push(image, registry, repository, tag=stack)
    oci.fetch_manifest(registry, repository, digest)
    host = registry.split("://", 1)[-1].rstrip("/")
    info(f"{host}/{repository}@{digest} ({image.size / 2**20:.0f} MiB, "
         f"{time.monotonic() - start:.1f} s)")
    return repository, digest


def image_record(layout: Path, registry: str, repository: str, digest: str) -> dict[str, Any]:
    """The lock's `image` of a stack: where nodes pull it (`registry` as pushed to), its
    manifest and config digests, the user it runs as and the fingerprint it was built from
    (its config's label `stacklock.fingerprint`)."""
    image = oci.read_layout(layout)
    blob = layout / "blobs" / "sha256" / image.config_digest.split(":", 1)[1]
    config = json.loads(blob.read_bytes()).get("config") or {}
    host = registry.split("://", 1)[-1].rstrip("/")
    return {"config_digest": image.config_digest, "digest": digest,
            "fingerprint": str((config.get("Labels") or {}).get("stacklock.fingerprint", "")),
            "reference": f"{host}/{repository}@{digest}", "registry": host,
            "registry_url": registry.rstrip("/"), "repository": repository,
            "user": str(config.get("User") or "")}


def check_image_for_lock(loaded: LoadedManifest, env: str, out_dir: Path) -> str:
    """Before a push that records the image: the image `build` wrote must be of this lock's
    stack as it is now (its fingerprint label), and run as a numeric non-root user; returns
    the lock's fingerprint. Exit 2 otherwise, nothing pushed."""
    stack = loaded.manifest.environments[env].stack
    lock = read_lock(loaded.lock_path) or {}
    locked = (lock.get("stacks") or {}).get(stack) or {}
    if not locked:
        raise InvalidInput(f"{loaded.lock_path.name}: no stack {stack}",
                           problems=[Problem(loaded.lock_path.name, f"no stack {stack}",
                                             "run: stacklock lock")])
    fingerprint = fingerprint_of(locked)
    layout = out_dir / stack / "oci"
    if not (layout / "index.json").is_file():
        raise InvalidInput(f"{layout}: no image built for {env}",
                           problems=[Problem("image", f"no OCI layout in {layout}",
                                             f"run: stacklock image build {env}")])
    record = image_record(layout, "http://registry", "repository", "")
    if record["fingerprint"] != fingerprint:
        raise InvalidInput(
            f"the image in {layout} was built from stack fingerprint {record['fingerprint']}, "
            f"the lock's is {fingerprint}",
            problems=[Problem(f"stacks.{stack}.image", "the built image is not of this lock",
                              f"run: stacklock image build {env}")])
    uid, _, gid = record["user"].partition(":")
    if not (uid.isdigit() and gid.isdigit() and int(uid) != 0):
        raise InvalidInput(f"the image runs as {record['user']!r}, not a numeric non-root UID:GID",
                           problems=[Problem(f"stacks.{stack}.image", "not a non-root user",
                                             f"run: stacklock image build {env}")])
    return fingerprint


def merge_push(old: Mapping[str, Any] | None, env: str,
               record: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The lock's `stacks.STACK.image` after `record` was pushed for ENV, and the environments
    whose own entries it drops. The entry holds one digest: its top-level registry/repository
    are the latest push (what an environment without an entry of its own pulls, outside ECR:
    core.serving.pull_location), and `pushed.ENV` where ENV pulls it. The entries of other
    environments are kept for the same image (digest and config digest); another image
    replaces the entry as before, and their entries go with it: their repositories hold the
    other digest (`render` then asks for their push again)."""
    pushed: dict[str, Any] = {}
    dropped: list[str] = []
    old = old if isinstance(old, Mapping) else {}
    before = old.get("pushed")
    if isinstance(before, Mapping):
        if all(old.get(k) == record.get(k) for k in ("digest", "config_digest")):
            pushed = {str(e): dict(w) for e, w in before.items() if isinstance(w, Mapping)}
        else:
            dropped = sorted(str(e) for e in before if e != env)
    pushed[env] = {k: str(record[k]) for k in serving.PULL_KEYS}
    entry = {**record, "pushed": dict(sorted(pushed.items()))}
    return dict(sorted(entry.items())), dropped


def record_in_lock(loaded: LoadedManifest, env: str, record: Mapping[str, Any]) -> Path:
    """Write `record`, pushed for ENV, into the lock's `stacks.STACK.image` (`merge_push`;
    the rest of the lock byte for byte: the image is outside the fingerprint,
    core.lock.UNFINGERPRINTED)."""
    stack = loaded.manifest.environments[env].stack
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    entry, dropped = merge_push(lock["stacks"][stack].get("image"), env, record)
    if dropped:
        info(f"stacks.{stack}.image: {record['digest']} replaces the image recorded before; "
             f"{', '.join(dropped)} pulled that one from their own repositories: run "
             + "; ".join(f"stacklock image push {e}" for e in dropped))
    lock["stacks"][stack]["image"] = entry
    return atomic_write(loaded.lock_path, dump_lock(lock))


def push_and_record(loaded: LoadedManifest, env: str, out_dir: Path, registry: str,
                    repository: str | None = None) -> tuple[str, str, bool]:
    """`stacklock image push`: push ENV's built image; for a container-mode stack
    (serving.runtime: container) first check the image is of the current lock, then record
    it in the lock (what `render` turns into the nodes' serving_container). Returns
    (repository, digest, recorded)."""
    stack = loaded.manifest.environments[env].stack
    lock = read_lock(loaded.lock_path) or {}
    locked = (lock.get("stacks") or {}).get(stack) or {}
    container = serving_runtime(locked) == "container"
    if container:
        check_image_for_lock(loaded, env, out_dir)
    repository, digest = push_image(loaded, env, out_dir, registry, repository)
    if not container:
        info(f"stack {stack} serves from the host (serving.runtime): the image is not "
             "recorded in the lock")
        return repository, digest, False
    record = image_record(out_dir / stack / "oci", registry, repository, digest)
    path = record_in_lock(loaded, env, record)
    info(f"{path.name}: stacks.{stack}.image.pushed.{env} = {record['reference']} "
         "(run: stacklock render)")
    return repository, digest, True
