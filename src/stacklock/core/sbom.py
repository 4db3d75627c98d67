"""The inventory of a node or an environment as a CycloneDX 1.6 SBOM. Pure: facts in, JSON out.

Input is a node's `stacklock.facts/v1` gathered with `inventory: true` (so `os_packages`
lists every installed dpkg package) and the lock of its stack. The document is built with
the CycloneDX Python library (`cyclonedx-python-lib`) and is reproducible: the same facts and
lock give byte-identical JSON. Components are sorted by the library, every `bom-ref` is
derived from names (never random), the timestamp is a fixed one given by the caller (the
flow passes `SOURCE_DATE_EPOCH`, default 1970-01-01T00:00:00Z) and the serial number is a
UUIDv5 of the document's own content.

What a node's document holds (each a component; refs are prefixed by the node's name):

* `operating-system`: distribution and release, with kernel and architecture as properties;
* `library` per installed OS package: name, version, `pkg:deb/<distro>/NAME@VERSION?arch=ARCH&
  distro=<distro>-<release>`, the architecture as a property;
* `library` per distribution of the serving venv: `pkg:pypi/NAME@VERSION`, and, when the
  installed version is the locked one, the lock's sha256 (component hash when the lock has one
  file, and each locked file as a `distribution` external reference with its hash);
* `device-driver` `nvidia-driver`: the driver as it is loaded (NVML, nvidia-smi or /proc:
  facts `nvidia_driver.running_version`), the kernel module flavour as a property; when no
  driver is loaded, no version and the property `stacklock:driver:loaded=false`;
* `device` per GPU; `framework` `cuda`; `application` `docker`, `nvidia-container-toolkit`,
  `java` and `python` (the venv's interpreter);
* `file` TorchServe's config.properties with its sha256;
* `machine-learning-model` per model archive in the model store, with its sha256.

Container mode (the lock's `serving.runtime: container`; the facts then hold the `container`
section, docs/facts.md): there is no serving venv, config or model store on the host. In their
place the node's document holds the serving image as it runs, from the facts:

* `container` named by its repository (`stacklock-lab/serving`), version the manifest digest it
  was pulled by (one of the image's RepoDigests), that digest as its sha256 hash, purl
  `pkg:oci/serving@sha256:...?repository_url=REGISTRY/REPOSITORY`; properties: the reference the
  container was started with, every RepoDigest, the image id (config digest) it runs, whether
  it runs (`stacklock:container:running`, verify's words: `true`, `false (exited, ...)`,
  `not found (...)`), and `stacklock:lock` / `stacklock:image:id:lock`: `matches` or
  `differs (locked ...)`, compared with the lock's `image`;
* inside it (nested, and its dependencies): the Python closure read in the running container
  (`docker exec`), each `pkg:pypi/...` with the same lock state as a venv's, and its `python`.
  A stopped container's closure cannot be read: `stacklock:closure` says so and nothing is
  listed; a missing container is a `container` component named after it, without a version.
  The lock's values never stand in for what was not read;
* every other running container (`stacklock:kind=other-container`), by the reference it was
  started with and its image id.

The config, the model archives and Java are in the image (the image's own document,
`image_bom`, lists them with their sha256 under the same purl); the host's Java is listed only
where one is still installed, and a venv left on the host from host mode is not the serving
closure and is not listed. Host mode is unchanged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.tool import ToolRepository
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from packageurl import PackageURL

from stacklock import __version__
from stacklock.core import container as containermod

#: the fixed timestamp used when the caller gives none (reproducible output)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SPEC_VERSION = "1.6"
PROP = "stacklock"
HOST, CONTAINER = "host", "container"


class IncompleteFacts(ValueError):
    """The facts lack what an SBOM needs (not gathered with `inventory: true`)."""


def normalize_pypi(name: str) -> str:
    """PEP 503 normalized name (also the purl form of a PyPI name)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _props(pairs: Iterable[tuple[str, Any]]) -> list[Property]:
    return [Property(name=f"{PROP}:{k}", value=str(v)) for k, v in pairs
            if v is not None and v != ""]


def _sha256(digest: Any) -> list[HashType]:
    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        return [HashType(alg=HashAlgorithm.SHA_256, content=digest)]
    return []


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def distro_of(facts: Mapping[str, Any], locked: Mapping[str, Any]) -> tuple[str, str]:
    """(`debian`, `12`) from the facts' /etc/os-release, else from the lock."""
    dist = _get(facts, "os", "distribution") or _get(locked, "os", "distribution") or "debian"
    release = _get(facts, "os", "release") or _get(locked, "os", "release") or ""
    return str(dist), str(release)


def deb_purl(name: str, version: str, arch: str | None, dist: str, release: str) -> PackageURL:
    qualifiers = {"distro": f"{dist}-{release}" if release else dist}
    if arch:
        qualifiers["arch"] = arch
    return PackageURL(type="deb", namespace=dist, name=name, version=version,
                      qualifiers=qualifiers)


def pypi_purl(name: str, version: str | None) -> PackageURL:
    return PackageURL(type="pypi", name=normalize_pypi(name), version=version)


def _locked_pip(locked: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {normalize_pypi(str(p.get("name"))): p for p in locked.get("pip") or []
            if isinstance(p, Mapping) and p.get("name")}


def os_package_components(facts: Mapping[str, Any], locked: Mapping[str, Any],
                          ref: str) -> list[Component]:
    packages = facts.get("os_packages")
    if not isinstance(packages, list):
        raise IncompleteFacts("the facts hold no os_packages (gather them with inventory: true)")
    dist, release = distro_of(facts, locked)
    out = []
    for entry in packages:
        name, version = str(entry.get("name")), str(entry.get("version"))
        arch = entry.get("architecture") or None
        purl = deb_purl(name, version, arch, dist, release)
        out.append(Component(
            name=name, version=version, type=ComponentType.LIBRARY, purl=purl,
            bom_ref=f"{ref}/{purl.to_string()}",
            properties=_props([("architecture", arch), ("kind", "os-package"),
                               ("dpkg:status", entry.get("status"))])))
    return out


def python_components(facts: Mapping[str, Any], locked: Mapping[str, Any],
                      ref: str) -> list[Component]:
    venv = _get(facts, "torchserve", "venv") or {}
    dists = venv.get("distributions")
    if not isinstance(dists, Mapping):
        dists = venv.get("packages")
    if not isinstance(dists, Mapping):
        raise IncompleteFacts("the facts hold no distributions of the serving venv")
    return distribution_components(dists, locked, ref, [("venv", venv.get("path"))])


def distribution_components(dists: Mapping[str, Any], locked: Mapping[str, Any], ref: str,
                            where: Sequence[tuple[str, Any]]) -> list[Component]:
    """One `library` per distribution (`dists`: name -> version), with its state against the
    lock; `where`: the properties saying where it was read (a venv, a container)."""
    pins = _locked_pip(locked)
    out = []
    for raw_name, version in sorted(dists.items()):
        if version is None:
            continue
        name = normalize_pypi(str(raw_name))
        pin = pins.get(name)
        hashes: list[HashType] = []
        refs: list[ExternalReference] = []
        if pin is None:
            state = "not locked"
        elif str(pin.get("version")) == str(version):
            state = "locked"
            files = [f for f in pin.get("files") or [] if isinstance(f, Mapping)]
            if len(files) == 1:
                hashes = _sha256(files[0].get("sha256"))
            for f in files:
                if f.get("url"):
                    refs.append(ExternalReference(
                        type=ExternalReferenceType.DISTRIBUTION, url=XsUri(str(f["url"])),
                        comment=str(f.get("file") or ""), hashes=_sha256(f.get("sha256"))))
        else:
            state = f"other version (locked {pin.get('version')})"
        purl = pypi_purl(name, str(version))
        out.append(Component(
            name=name, version=str(version), type=ComponentType.LIBRARY, purl=purl,
            bom_ref=f"{ref}/{purl.to_string()}", hashes=hashes, external_references=refs,
            properties=_props([("kind", "python-distribution"), ("lock", state), *where])))
    return out


def driver_component(facts: Mapping[str, Any], ref: str) -> Component:
    drv = _get(facts, "nvidia_driver") or {}
    running = drv.get("running_version")
    props: list[tuple[str, Any]] = [("driver:loaded", "true" if running else "false")]
    if running:
        props += [("driver:source", drv.get("running_source")),
                  ("driver:kernel_module", drv.get("kernel_module"))]
    else:
        props.append(("driver:state", "no NVIDIA driver is loaded (NVML, nvidia-smi and "
                                      "/proc/driver/nvidia/version saw none)"))
    props.append(("driver:package_version", drv.get("package_version")))
    missing = drv.get("kernels_without_module")
    if isinstance(missing, list):
        props.append(("driver:kernels_without_module", ",".join(map(str, missing)) or "none"))
    return Component(
        name="nvidia-driver", version=str(running) if running else None,
        type=ComponentType.DEVICE_DRIVER, bom_ref=f"{ref}/nvidia-driver",
        description="the NVIDIA kernel driver as it is loaded", properties=_props(props))


def gpu_components(facts: Mapping[str, Any], ref: str) -> list[Component]:
    gpu = _get(facts, "gpu") or {}
    if not gpu.get("present"):
        return []
    devices = gpu.get("devices") or [{"index": i, "name": gpu.get("name")}
                                      for i in range(int(gpu.get("count") or 1))]
    out = []
    for dev in devices:
        idx = dev.get("index")
        out.append(Component(
            name=str(dev.get("name") or "NVIDIA GPU"), type=ComponentType.DEVICE,
            bom_ref=f"{ref}/gpu/{idx}",
            properties=_props([("gpu:index", idx),
                               ("gpu:compute_capability", dev.get("compute_capability")),
                               ("gpu:memory_mib", dev.get("memory_mib")),
                               ("gpu:driver_version", dev.get("driver_version")),
                               ("gpu:source", gpu.get("source"))])))
    return out


def _simple(ref: str, name: str, ctype: ComponentType, version: Any,
            props: Sequence[tuple[str, Any]]) -> Component:
    return Component(name=name, version=str(version) if version else None, type=ctype,
                     bom_ref=f"{ref}/{name}", properties=_props(props))


def stack_components(facts: Mapping[str, Any], locked: Mapping[str, Any],
                     ref: str, runtime: str = HOST) -> list[Component]:
    """The pinned stack's components; in container mode without the host's python, config
    and model archives, and Java only where the host still has one (they are in the image)."""
    cuda = _get(facts, "cuda") or {}
    docker = _get(facts, "docker") or {}
    toolkit = _get(facts, "nvidia_container_toolkit") or {}
    java = _get(facts, "java") or {}
    venv = _get(facts, "torchserve", "venv") or {}
    docker_pkg = _map(docker.get("package"))
    out = [
        _simple(ref, "cuda", ComponentType.FRAMEWORK,
                cuda.get("full_version") or cuda.get("version"),
                [("source", cuda.get("source")), ("cuda:major_minor", cuda.get("version"))]),
        _simple(ref, "docker", ComponentType.APPLICATION, docker.get("version"),
                [("source", docker.get("source")),
                 ("docker:default_runtime", docker.get("default_runtime")),
                 ("docker:runtimes", ",".join(map(str, docker.get("runtimes") or [])) or None),
                 ("docker:package", docker_pkg.get("name"))]),
        _simple(ref, "nvidia-container-toolkit", ComponentType.APPLICATION,
                toolkit.get("version"), [("source", toolkit.get("source"))]),
    ]
    if runtime != CONTAINER or java.get("version"):  # container mode: Java is in the image
        out.append(_simple(ref, "java", ComponentType.PLATFORM, java.get("version"),
                           [("source", java.get("source")), ("java:major", java.get("major"))]))
    if runtime != CONTAINER:
        out.append(_simple(ref, "python", ComponentType.PLATFORM, venv.get("python"),
                           [("python:venv", venv.get("path"))]))
        out += _serving_files(facts, locked, ref)
    osf = _get(facts, "os") or {}
    dist, release = distro_of(facts, locked)
    out.append(Component(
        name=dist, version=release or None, type=ComponentType.OPERATING_SYSTEM,
        bom_ref=f"{ref}/os", description=osf.get("pretty_name"),
        properties=_props([("os:codename", osf.get("codename")),
                           ("os:kernel", osf.get("kernel")),
                           ("os:architecture", osf.get("architecture"))])))
    return out


def _serving_files(facts: Mapping[str, Any], locked: Mapping[str, Any],
                   ref: str) -> list[Component]:
    """TorchServe's config and the model archives of the store (host mode, and the image's
    own document)."""
    out = []
    ts = _get(facts, "torchserve") or {}
    config = _map(ts.get("config"))
    want = _get(locked, "torchserve", "config_sha256")
    have = config.get("sha256")
    out.append(Component(
        name=str(config.get("path") or "/etc/torchserve/config.properties"),
        type=ComponentType.FILE, bom_ref=f"{ref}/torchserve-config", hashes=_sha256(have),
        description="TorchServe's config.properties",
        properties=_props([("kind", "torchserve-config"),
                           ("lock", None if not want else
                            ("matches" if want == have else f"differs (locked {want})"))])))
    models = {str(m.get("file")): m for m in locked.get("models") or [] if isinstance(m, Mapping)}
    served = _map(ts.get("models"))
    store = _map(ts.get("model_store"))
    for file, digest in sorted(_map(store.get("archives")).items()):
        pin = models.get(str(file)) or {}
        name = str(pin.get("name") or re.sub(r"\.mar$", "", str(file)))
        version = _get(served, name, "version") or pin.get("version")
        out.append(Component(
            name=name, version=str(version) if version else None,
            type=ComponentType.MACHINE_LEARNING_MODEL, bom_ref=f"{ref}/model/{file}",
            hashes=_sha256(digest),
            properties=_props([("model:archive", f"{store.get('path')}/{file}"),
                               ("lock", None if not pin else
                                ("matches" if pin.get("sha256") == digest
                                 else f"differs (locked {pin.get('sha256')})"))])))
    return out


# --------------------------------------------------------------------------- container mode


def split_reference(reference: str) -> tuple[str, str]:
    """(registry, repository) of an image reference: `127.0.0.1:5299/lab/serving@sha256:...`
    -> (`127.0.0.1:5299`, `lab/serving`); Docker Hub's short names -> (`docker.io`,
    `library/NAME`)."""
    name = reference.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag
        name = name[:colon]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "docker.io", name if sep else f"library/{name}"


def oci_purl(repository_url: str | None, name: str, digest: str,
             tag: str | None = None) -> PackageURL:
    """`pkg:oci/NAME@sha256:...?repository_url=REGISTRY/REPOSITORY` (the purl spec's oci type:
    the name is the repository's last segment, lowercased; the version the manifest digest)."""
    qualifiers = {}
    if repository_url:
        qualifiers["repository_url"] = repository_url
    if tag:
        qualifiers["tag"] = tag
    return PackageURL(type="oci", name=name.rsplit("/", 1)[-1].lower(), version=digest,
                      qualifiers=qualifiers)


def _digest_hash(digest: str | None) -> list[HashType]:
    return _sha256(digest.partition(":")[2] if digest and digest.startswith("sha256:") else None)


def _pulled_by(c: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(registry/repository, digest) of every RepoDigest, the one of the reference the
    container was started with first."""
    started = str(c.get("image") or "")
    want = "/".join(split_reference(started)) if started else ""
    pairs = []
    for entry in c.get("repo_digests") or []:
        repo, _, digest = str(entry).rpartition("@")
        if repo and digest:
            pairs.append(("/".join(split_reference(repo)), digest))
    started_digest = started.rpartition("@")[2] if "@" in started else ""
    return sorted(set(pairs), key=lambda p: (p != (want, started_digest), p[0] != want, p))


def _lock_state(locked_value: Any, actual: Sequence[str]) -> str:
    if not locked_value:
        return "not in the lock (no image recorded for this stack)"
    if str(locked_value) in actual:
        return "matches"
    return f"differs (locked {locked_value})"


def container_components(facts: Mapping[str, Any], locked: Mapping[str, Any],
                         ref: str) -> list[Component]:
    """The serving image as it runs (with its closure nested) and every other running
    container; IncompleteFacts when the facts hold no readable `container` section."""
    c = facts.get("container")
    if not isinstance(c, Mapping):
        raise IncompleteFacts("this stack serves from a container and the facts hold no "
                              "`container` section (gathered without the container option)")
    if c.get("error"):
        raise IncompleteFacts(f"the serving container could not be read: {c['error']}")
    act = containermod.actual_values(facts)
    image = _map(locked.get("image"))
    out = [_serving_image(c, act, image, locked, ref)]
    for other, entry in sorted(_map(c.get("others")).items()):
        if f"container.extra.{other}" not in act or not isinstance(entry, Mapping):
            continue  # verify's own GPU validation container
        started = str(entry.get("image") or "")
        out.append(Component(
            name=started or str(other), type=ComponentType.CONTAINER,
            bom_ref=f"{ref}/container/{other}",
            description=f"a running container the serving role did not start ({other})",
            properties=_props([("kind", "other-container"), ("container:name", other),
                               ("image:id", entry.get("image_id"))])))
    return out


def _serving_image(c: Mapping[str, Any], act: Mapping[str, str | None],
                   image: Mapping[str, Any], locked: Mapping[str, Any],
                   ref: str) -> Component:
    name = str(c.get("name") or "")
    running = act.get("container.running")
    common: list[tuple[str, Any]] = [("kind", "serving-image"), ("container:name", name),
                                     ("container:running", running)]
    if not c.get("found"):
        return Component(
            name=name, type=ComponentType.CONTAINER, bom_ref=f"{ref}/container/{name}",
            description="the serving container: not on the node",
            properties=_props([*common, ("lock", "not running (locked "
                                         f"{image.get('digest') or 'no image'})")]))
    pulled = _pulled_by(c)
    digests = sorted({d for _, d in pulled})
    started = str(c.get("image") or "")
    if pulled:
        repo_url, digest = pulled[0]
    else:
        repo_url, digest = "/".join(split_reference(started)) if started else "", ""
    repository = repo_url.partition("/")[2] or started or name
    py = _map(c.get("python"))
    dists = py.get("distributions")
    cref = f"{ref}/image"
    children: list[Component] = []
    if isinstance(dists, Mapping):
        closure = "read in the running container"
        children = distribution_components(
            dists, locked, cref, [("container", name), ("python", py.get("executable"))])
        children.append(_simple(cref, "python", ComponentType.PLATFORM, py.get("python"),
                                [("python:executable", py.get("executable"))]))
    else:
        closure = f"not read: {py.get('error') or 'the facts hold none'}"
    image_id = c.get("image_id")
    return Component(
        name=repository, version=digest or None, type=ComponentType.CONTAINER,
        bom_ref=cref, hashes=_digest_hash(digest),
        purl=oci_purl(repo_url, repository, digest) if digest else None,
        description=f"the serving image, as container {name} runs it",
        components=children,
        properties=_props([
            *common, ("image:reference", started),
            ("image:repo_digests", ",".join(sorted(str(d) for d in c.get("repo_digests") or []))
             or act.get("container.image.digest")),
            ("image:error", c.get("image_error")),
            ("image:id", image_id),
            ("lock", _lock_state(image.get("digest"), digests)),
            ("image:id:lock", _lock_state(image.get("config_digest"),
                                          [str(image_id)] if image_id else [])),
            ("closure", closure)]))


# --------------------------------------------------------------------------- documents


def runtime_of(facts: Mapping[str, Any], locked: Mapping[str, Any],
               runtime: str | None = None) -> str:
    """host or container: `runtime` when given (the flow gives the lock's), else container
    when the facts hold a `container` section (the facts module reads one only then)."""
    if runtime is not None:
        return runtime
    return CONTAINER if isinstance(facts.get("container"), Mapping) else HOST


def locked_runtime(locked: Mapping[str, Any]) -> str:
    """How the locked stack serves (core.lock.serving_runtime, for a mapping)."""
    return str(_map(locked.get("serving")).get("runtime") or HOST)


def node_components(facts: Mapping[str, Any], locked: Mapping[str, Any],
                    node: str, runtime: str | None = None) -> list[Component]:
    """Every component of one node (raises IncompleteFacts without the full inventory, or
    in container mode without the container section). `runtime`: see runtime_of."""
    ref = f"node:{node}"
    mode = runtime_of(facts, locked, runtime)
    serving = (container_components(facts, locked, ref) if mode == CONTAINER
               else python_components(facts, locked, ref))
    return [*os_package_components(facts, locked, ref), *serving,
            driver_component(facts, ref), *gpu_components(facts, ref),
            *stack_components(facts, locked, ref, mode)]


def _register(bom: Bom, parent: Component, children: Sequence[Component]) -> None:
    """parent depends on its children, and each nested component on its own, down the tree."""
    bom.register_dependency(parent, children)
    for child in children:
        if child.components:
            _register(bom, child, list(child.components))


def _tool() -> ToolRepository:
    return ToolRepository(components=[Component(
        name="stacklock", version=__version__, type=ComponentType.APPLICATION,
        bom_ref="tool:stacklock")])


def _node_props(facts: Mapping[str, Any], runtime: str = HOST) -> list[tuple[str, Any]]:
    blocked = facts.get("blocked")
    return [("hostname", _get(facts, "os", "hostname")),
            ("could_not_look", ",".join(sorted(blocked)) if isinstance(blocked, Mapping)
             and blocked else None),
            ("serving", CONTAINER if runtime == CONTAINER else None)]


def node_bom(facts: Mapping[str, Any], locked: Mapping[str, Any], *, project: str,
             environment: str, node: str, stack: str,
             timestamp: datetime = EPOCH, runtime: str | None = None) -> Bom:
    """The SBOM of one node (`runtime`: see runtime_of)."""
    mode = runtime_of(facts, locked, runtime)
    components = node_components(facts, locked, node, mode)
    root = Component(
        name=node, type=ComponentType.PLATFORM, bom_ref=f"node:{node}",
        description=f"GPU serving node {node} of environment {environment}",
        properties=_props([("project", project), ("environment", environment),
                           ("stack", stack), ("fingerprint", locked.get("fingerprint")),
                           *_node_props(facts, mode)]))
    bom = Bom(serial_number=UUID(int=0), metadata=BomMetaData(
        component=root, timestamp=timestamp, tools=_tool()), components=components)
    _register(bom, root, components)
    return bom


def environment_bom(nodes: Mapping[str, Mapping[str, Any]], locked: Mapping[str, Any], *,
                    project: str, environment: str, stack: str,
                    timestamp: datetime = EPOCH, runtime: str | None = None) -> Bom:
    """The SBOM of one environment: each node a `platform` component holding its own."""
    root = Component(
        name=environment, type=ComponentType.PLATFORM, bom_ref=f"environment:{environment}",
        description=f"environment {environment} of {project}",
        properties=_props([("project", project), ("environment", environment),
                           ("stack", stack), ("fingerprint", locked.get("fingerprint")),
                           ("nodes", ",".join(sorted(nodes)))]))
    node_comps = []
    for node in sorted(nodes):
        facts = nodes[node]
        mode = runtime_of(facts, locked, runtime)
        children = node_components(facts, locked, node, mode)
        comp = Component(name=node, type=ComponentType.PLATFORM, bom_ref=f"node:{node}",
                         components=children, properties=_props(_node_props(facts, mode)))
        node_comps.append((comp, children))
    bom = Bom(serial_number=UUID(int=0), metadata=BomMetaData(
        component=root, timestamp=timestamp, tools=_tool()),
        components=[c for c, _ in node_comps])
    bom.register_dependency(root, [c for c, _ in node_comps])
    for comp, children in node_comps:
        _register(bom, comp, children)
    return bom


def image_bom(facts: Mapping[str, Any], locked: Mapping[str, Any], *, project: str,
              environment: str, stack: str, tag: str, digest: str,
              config_digest: str | None = None, repository_url: str | None = None,
              timestamp: datetime = EPOCH) -> Bom:
    """The SBOM of the serving image itself (`stacklock image build`), from facts read from
    its files: the root is the image as a `container` component named and hashed by its
    manifest digest, with the purl a node's document gives the image it runs (plus the
    `tag` qualifier; `repository_url` once pushed), and inside it what a host-mode node's
    document holds for the serving stack: every dpkg package, the venv's closure, Java, the
    config and the model archives with their sha256. Its name: the repository of
    `repository_url` when given, else of `tag`."""
    ref = f"image:{digest}"
    label = tag.rpartition(":")[2] if ":" in tag.rpartition("/")[2] else None
    repository = tag.rpartition(":")[0] if label is not None else tag
    if repository_url:  # pushed: named as a node's document names the image it runs
        repository = split_reference(repository_url)[1]
    components = [*os_package_components(facts, locked, ref),
                  *python_components(facts, locked, ref),
                  *stack_components(facts, locked, ref, HOST)]
    root = Component(
        name=repository, version=digest, type=ComponentType.CONTAINER, bom_ref=ref,
        hashes=_digest_hash(digest),
        purl=oci_purl(repository_url, repository, digest, tag=label),
        description=f"the serving image of stack {stack} ({tag})",
        properties=_props([("project", project), ("environment", environment),
                           ("stack", stack), ("fingerprint", locked.get("fingerprint")),
                           ("kind", "serving-image"), ("image:tag", tag),
                           ("image:id", config_digest)]))
    bom = Bom(serial_number=UUID(int=0), metadata=BomMetaData(
        component=root, timestamp=timestamp, tools=_tool()), components=components)
    _register(bom, root, components)
    return bom


def to_json(bom: Bom) -> str:
    """CycloneDX 1.6 JSON; the serial number is a UUIDv5 of the content (reproducible)."""
    bom.serial_number = UUID(int=0)
    draft = JsonV1Dot6(bom).output_as_string(indent=2)
    digest = hashlib.sha256(draft.encode("utf-8")).hexdigest()
    bom.serial_number = uuid5(NAMESPACE_URL, f"urn:stacklock:sbom:sha256:{digest}")
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def validate(text: str) -> list[str]:
    """Schema errors of a CycloneDX 1.6 JSON document ([] when valid): the library's strict
    validator (needs `cyclonedx-python-lib[json-validation]`)."""
    from cyclonedx.validation.json import JsonStrictValidator

    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text, all_errors=True)
    return [str(e) for e in errors or []]


def component_counts(text_or_bom: str | Bom) -> dict[str, int]:
    """component type -> number of components (nested ones included)."""
    import json

    data = json.loads(to_json(text_or_bom) if isinstance(text_or_bom, Bom) else text_or_bom)
    counts: dict[str, int] = {}
    stack = list(data.get("components") or [])
    while stack:
        comp = stack.pop()
        counts[comp["type"]] = counts.get(comp["type"], 0) + 1
        stack.extend(comp.get("components") or [])
    return dict(sorted(counts.items()))


__all__ = ["CONTAINER", "EPOCH", "HOST", "IncompleteFacts", "component_counts",
           "container_components", "deb_purl", "distribution_components", "environment_bom",
           "image_bom", "locked_runtime", "node_bom", "node_components", "normalize_pypi",
           "oci_purl", "pypi_purl", "runtime_of", "split_reference", "to_json", "validate"]
