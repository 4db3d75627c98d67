"""The files class on the controller: the expected trees of one host's rendered variables
(locked wheels and .debs read from the controller's mirror, the files the roles write), kept
in the reference store (stacklock.core.integrity) and turned into the facts module's `files`
option. Used by `verify --fast` (stacklock.flows.fastverify) and by the verify play's
`stacklock_files_reference` action, so that both send the same expectation."""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stacklock.adapters import ansible_template, aptrepo, debfiles, runmemo, wheelrecord
from stacklock.core import integrity
from stacklock.core.hostvars import SECRET_PREFIXES, SECRET_VARS, VAR_PREFIXES, host_vars, memo_key
from stacklock.core.integrity import RoleFile, Tree
from stacklock.core.lock import sha256_file

log = logging.getLogger("stacklock.integrity")

#: group_vars list -> the stacklock_packages id whose preferences and blacklist files it gets
_APT_ROLES = (
    ("nvidia_driver_packages", "nvidia_driver"),
    ("cuda_packages", "cuda"),
    ("nvidia_container_toolkit_packages", "nvidia_container_toolkit"),
    ("docker_packages", "docker"),
    ("torchserve_java_packages", "torchserve"),
    ("serving_endpoint_packages", "serving_endpoint"),  # the serving endpoint's nginx
)

#: the roles of site.yml in its order, and the one they include: their defaults apply under a
#: host's variables and their vars/main.yml over them, as in the play
ROLES = ("stacklock_integrity", "nvidia_driver", "cuda", "nvidia_container_toolkit", "docker",
         "serving_container", "torchserve", "serving_endpoint", "stacklock_packages")

#: the virtualization facts of a lab node (a Docker container with systemd as PID 1)
LAB_FACTS = {"virtualization_role": "guest", "virtualization_type": "docker"}

#: the units stacklock manages: the unit file in /etc and its drop-in directories are watched
MANAGED_UNITS = ("torchserve.service", "docker.service", "containerd.service",
                 "nvidia-persistenced.service", "stacklock-serving.service")

#: the system directories that decide how the stack runs (recurse?)
SYSTEM_DIRS: tuple[tuple[str, bool], ...] = (
    ("/etc/apt/sources.list.d", False),
    ("/etc/apt/preferences.d", False),
    ("/etc/apt/apt.conf.d", False),
    ("/etc/docker", True),
    ("/etc/nvidia-container-runtime", True),
    ("/etc/cdi", True),
    ("/etc/ld.so.conf.d", False),
    ("/etc/ld.so.preload", False),
    ("/etc/modprobe.d", False),
)

NO_DEB = "no .deb on the controller (run lock with --apt-index / mirror)"
NO_WHEEL = "no locked wheel on the controller (build the mirror: python -m stacklock.adapters.mirror)"


#: container mode: the torchserve role's Java pin files that host mode left (role_files key)
LEFT_JAVA_PINS = "stacklock_packages.torchserve"


def container_mode(hv: Mapping[str, Any]) -> bool:
    """serving.runtime: container (core.serving): TorchServe runs from the image, the node has
    no serving venv, config, model store or torchserve.service of the torchserve role, and
    needs no Java (it is in the image, at the lock's pin); the serving_container role writes
    stacklock-serving.service instead. Java that host mode left installed and held, and its
    pin files, may stay (the way back is quick): not expected, and the pin files, where
    present, still compared byte for byte (LEFT_JAVA_PINS, optional)."""
    return hv.get("serving_runtime") == "container"


def managed_dirs(hv: Mapping[str, Any]) -> list[tuple[str, bool]]:
    venv = str(hv.get("torchserve_venv") or "/opt/torchserve/venv")
    python = str(hv.get("torchserve_python_version") or "3.11")
    config = str(hv.get("torchserve_config_path") or "/etc/torchserve/config.properties")
    store = str(hv.get("torchserve_model_store") or "/var/lib/torchserve/model-store")
    dirs: list[tuple[str, bool]] = []
    host_mode = not container_mode(hv)
    if hv.get("torchserve_pip_packages") and host_mode:
        dirs += [(f"{venv}/lib/python{python}/site-packages", True), (f"{venv}/bin", False)]
    if "torchserve_models" in hv and host_mode:
        dirs += [(store, True), (posixpath.dirname(config), True)]
    dirs += list(SYSTEM_DIRS)
    for unit in MANAGED_UNITS + (_ENDPOINT_UNITS if hv.get("serving_endpoint_enabled") else ()):
        dirs += [(f"/etc/systemd/system/{unit}", False), (f"/etc/systemd/system/{unit}.d", True),
                 (f"/run/systemd/system/{unit}.d", True)]
    if hv.get("serving_endpoint_enabled"):
        dirs += list(_ENDPOINT_DIRS)
    return dirs


@dataclass(frozen=True)
class Source:
    """How the controller knows a role file's bytes: rendered from role `role`'s template
    `template` (empty: the `content:` of its copy task), in an `include_role` of `role` by
    role `caller` (whose `vars:` apply), with the loop `item` and what the role reads of the
    node (`node`: registered results, `ansible_facts`) as the controller decides it. The
    tests render each one through a real `ansible.builtin.template` run too."""

    role: str
    template: str
    caller: str = ""
    item: Mapping[str, Any] | None = None
    node: Mapping[str, Any] = field(default_factory=dict)

    def variables(self, host: Mapping[str, Any]) -> dict[str, Any]:
        task = dict(ansible_template.include_vars(self.caller, self.role)) if self.caller else {}
        if self.item is not None:
            task["item"] = self.item
        return ansible_template.variables(host, ROLES, task=task,
                                          node={"ansible_facts": {}, **self.node})


def _docker_node(host: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the docker role reads of the node for daemon.json (tasks/configure.yml,
    vars/main.yml), as the controller decides it; None where it cannot.

    * `/usr/bin/nvidia-container-runtime` exists (docker_nvidia_runtime: auto) exactly when
      the toolkit is pinned: site.yml installs it before the docker role configures (as
      stacklock.core.runtime expects the `nvidia` runtime);
    * the host is itself a container (docker_container_host: auto, from the gathered
      virtualization facts): a lab node is one (a Docker container with systemd as PID 1); an
      AWS node is an EC2 instance, a virtual machine or metal, never a container; an on-prem
      host may be either (the on-prem tests run on the lab's image), so with `auto` the bytes
      of its daemon.json are not known here: set docker_container_host to enabled or disabled
      in its inventory to have them compared."""
    node: dict[str, Any] = {"__docker_nvidia_runtime_bin": {"stat": {
        "exists": bool(host.get("nvidia_container_toolkit_packages"))}}}
    if ansible_template.value(base, "docker_container_host") == "auto":
        provider = host.get("stacklock_provider")
        if provider == "lab":
            node["ansible_facts"] = dict(LAB_FACTS)
        elif provider != "aws":
            return None
    return node


_Entry = tuple[RoleFile, Source | None]


def _rendered(path: str, owner: str, group: str, mode: str, source: Source,
              host: Mapping[str, Any], optional: bool = False) -> _Entry:
    try:
        if source.template:
            data = ansible_template.render(source.role, source.template,
                                           source.variables(host), dest=path)
        else:
            data = ansible_template.render_content(
                ansible_template.copy_content(source.role, path), source.variables(host))
    except ansible_template.RenderError as exc:
        # bytes the controller cannot know (a fact only the node has): presence, owner, mode
        log.debug("%s: compared without its sha256: %s", path, exc)
        return RoleFile(path, owner, group, mode, optional=optional), None
    return RoleFile(path, owner, group, mode, ansible_template.sha256(data),
                    optional=optional), source


def _role_files(hv: Mapping[str, Any]) -> dict[str, list[_Entry]]:
    host = host_vars(hv)
    base = Source("", "").variables(host)

    def val(expression: str) -> Any:
        return ansible_template.value(base, expression)

    out: dict[str, list[_Entry]] = {}
    if container_mode(host):
        out["serving_container"] = [_rendered(
            "/etc/systemd/system/stacklock-serving.service", "root", "root", "0644",
            Source("serving_container", "stacklock-serving.service.j2"), host)]
        if val("_serving_container_ecr | bool"):  # an image in ECR: the credential helper
            out["serving_container"].append(_rendered(
                str(val("_serving_container_docker_config")), "root", "root", "0600",
                Source("serving_container", "docker-config.json.j2"), host))
    elif "torchserve_models" in host:
        home, group = str(val("torchserve_home")), str(val("torchserve_group"))
        config, store = str(val("torchserve_config_path")), str(val("torchserve_model_store"))
        ping = ansible_template.roles_dir() / "torchserve/files/torchserve-ping"
        ts: list[_Entry] = [
            (RoleFile(f"{home}/torchserve-ping", "root", "root", "0755", sha256_file(ping)),
             None),
            # rendered here; the role's preflight refuses a render that is not the lock's
            # torchserve_config_sha256, so a node never gets other bytes from the role
            _rendered(config, "root", group, "0640", Source("torchserve", "config.properties.j2"),
                      host),
            _rendered("/etc/systemd/system/torchserve.service", "root", "root", "0644",
                      Source("torchserve", "torchserve.service.j2"), host)]
        for m in host.get("torchserve_models") or []:
            # the role copies the archive from the controller after checking it against this
            # pinned sha256 (its preflight)
            file = str(m.get("file") or f"{m['name']}.mar")
            ts.append((RoleFile(f"{store}/{file}", "root", group, "0644",
                                str(m.get("sha256") or "") or None), None))
        out["torchserve"] = ts
    # stacklock_packages, included by each role with its pins: written in site.yml's order, so
    # a path two roles write (the official nvidia-cuda.list) holds the last one's bytes
    apt: dict[str, _Entry] = {}
    for var, role in _APT_ROLES:
        if host.get(var) is None:
            continue
        pref = f"/etc/apt/preferences.d/stacklock-{role}.pref"
        unattended = f"/etc/apt/apt.conf.d/51stacklock-{role}-unattended-upgrades"
        if role == "torchserve" and container_mode(host):
            # the torchserve role does not run: Java's pins are what host mode left, if any
            out[LEFT_JAVA_PINS] = [
                _rendered(path, "root", "root", "0644",
                          Source("stacklock_packages", template, caller=role), host, True)
                for path, template in ((pref, "preferences.j2"),
                                       (unattended, "unattended-upgrades.j2"))]
            continue
        for path, template in ((pref, "preferences.j2"), (unattended, "unattended-upgrades.j2")):
            apt[path] = _rendered(path, "root", "root", "0644",
                                  Source("stacklock_packages", template, caller=role), host)
        included = Source("stacklock_packages", "", caller=role).variables(host)
        repos = "_stacklock_packages_repositories"
        try:
            names = ansible_template.value(included, f"{repos} | map(attribute='name') | list")
        except ansible_template.RenderError as exc:
            log.debug("%s: its apt sources are not known here: %s", role, exc)
            continue
        for i, name in enumerate(names):
            path = f"/etc/apt/sources.list.d/{name}.list"
            try:
                item = ansible_template.value(included, f"{repos}[{i}]")
            except ansible_template.RenderError:
                # an official repository whose URI names the node's OS (its gathered
                # distribution facts: the verify play gathers none and the group_vars do not
                # carry them): presence, owner, mode
                apt[path] = (RoleFile(path, "root", "root", "0644"), None)
                continue
            apt[path] = _rendered(path, "root", "root", "0644", Source(
                "stacklock_packages", "repository.list.j2", caller=role, item=item), host)
    # not listed, though written in watched places: /etc/apt/auth.conf.d/* (mirror
    # credentials: a secret, and not a watched directory) and /etc/cdi/nvidia.yaml (generated
    # by nvidia-ctk from the GPUs it finds, on GPU hosts only: neither its bytes nor whether
    # it exists are known here)
    if apt:
        out["stacklock_packages"] = list(apt.values())
    if host.get("docker_packages"):
        path = "/etc/docker/daemon.json"
        node = _docker_node(host, base)
        out["docker"] = [_rendered(path, "root", "root", "0644",
                                   Source("docker", "daemon.json.j2", node=node), host)
                         if node is not None else (RoleFile(path, "root", "root", "0644"), None)]
    if host.get("serving_endpoint_enabled"):
        out["serving_endpoint"] = _endpoint_files(host)
    if host.get("nvidia_driver_packages") and val("nvidia_driver_blacklist_nouveau | bool"):
        out["nvidia_driver"] = [_rendered("/etc/modprobe.d/stacklock-blacklist-nouveau.conf",
                                          "root", "root", "0644", Source("nvidia_driver", ""),
                                          host)]
    return out


# --------------------------------------------------------------------------- serving endpoint
# The files of role serving_endpoint (environments.ENV.endpoint, docs/serving.md), and where
# they live: the site, the key service and its units are rendered here; the certificate is
# hashed from the controller's file where the manifest names one; the key and the clients'
# tokens are secrets, compared by presence, owner and mode only.

#: the units the serving endpoint adds (their unit files and drop-in folders are watched)
_ENDPOINT_UNITS = ("nginx.service", "stacklock-endpoint-key.service",
                   "stacklock-endpoint-key.path", "stacklock-endpoint-key.timer")
#: the folders that decide what nginx serves: an unowned file there is a deviation
_ENDPOINT_DIRS: tuple[tuple[str, bool], ...] = (
    ("/etc/nginx/conf.d", False), ("/etc/nginx/sites-enabled", False),
    ("/etc/nginx/modules-enabled", False), ("/etc/stacklock-endpoint", True))


def _endpoint_files(host: Mapping[str, Any]) -> list[_Entry]:
    role = "serving_endpoint"
    tool = ansible_template.roles_dir() / role / "files" / "stacklock-endpoint-key"
    cert_src = str(host.get("serving_endpoint_tls_cert_src") or "")
    cert_sha = (sha256_file(Path(cert_src))
                if host.get("serving_endpoint_tls_source") == "files" and cert_src
                and "{{" not in cert_src and Path(cert_src).is_file() else None)
    files: list[_Entry] = [
        _rendered("/etc/nginx/conf.d/stacklock-endpoint.conf", "root", "root", "0644",
                  Source(role, "stacklock-endpoint.conf.j2"), host),
        (RoleFile("/usr/local/sbin/stacklock-endpoint-key", "root", "root", "0755",
                  sha256_file(tool)), None),
        (RoleFile("/etc/stacklock-endpoint/tls/cert.pem", "root", "root", "0644", cert_sha),
         None),
        (RoleFile("/etc/stacklock-endpoint/tls/key.pem", "root", "root", "0600"), None),
        (RoleFile("/etc/stacklock-endpoint/clients.map", "root", "root", "0600"), None),
    ]
    if host.get("serving_endpoint_metrics_enabled"):  # the scrapers' tokens (/metrics)
        files.append((RoleFile("/etc/stacklock-endpoint/scrapers.map", "root", "root", "0600"),
                      None))
    for unit in _ENDPOINT_UNITS[1:]:
        files.append(_rendered(f"/etc/systemd/system/{unit}", "root", "root", "0644",
                               Source(role, f"{unit}.j2"), host))
    return files


def role_files(hv: Mapping[str, Any]) -> dict[str, list[RoleFile]]:
    """role -> the files it writes in the watched places, with the sha256 the controller
    knows: the static role files, the files the roles render from their templates and copy
    tasks (rendered here with the host's variables over the roles' defaults, through ansible's
    own Templar: stacklock.adapters.ansible_template), the locked model archives. None only
    where the bytes depend on what only the node knows (see `_docker_node`, the official apt
    sources): then presence, owner, group and mode are compared."""
    return {role: [f for f, _ in files] for role, files in _role_files(hv).items()}


def role_file_sources(hv: Mapping[str, Any]) -> dict[str, Source]:
    """path -> how its sha256 was rendered, for each role file rendered here."""
    return {f.path: s for files in _role_files(hv).values() for f, s in files if s is not None}


def _venv_skeleton(venv: str, python: str) -> Tree:
    """What `python3 -m venv` writes in bin/: owned, compared by presence."""
    names = ["python", "python3", f"python{python}", "activate", "activate.csh",
             "activate.fish", "Activate.ps1"]
    return integrity.role_tree("venv", [RoleFile(f"{venv}/bin/{n}", "root", "root", "0644")
                                        for n in names], attrs=False)


def trees(hv: Mapping[str, Any]) -> list[Tree]:
    out: list[Tree] = []
    venv = str(hv.get("torchserve_venv") or "/opt/torchserve/venv")
    python = str(hv.get("torchserve_python_version") or "3.11")
    site = f"{venv}/lib/python{python}/site-packages"
    # container mode: the closure is in the image (verify's container checks), not on the node
    pins = [] if container_mode(hv) else hv.get("torchserve_pip_packages") or []
    for pin in pins:
        name = integrity.norm_dist(str(pin["name"]))
        digests = [str(d) for d in pin.get("sha256") or []]
        data = wheelrecord.wheel_files(digests) if digests else None
        if data is None:
            out.append(integrity.unchecked_tree(f"wheel:{name}", "record", NO_WHEEL))
            continue
        out.append(integrity.wheel_tree(name, site, venv, python, data["members"],
                                        data.get("entry_points") or ""))
    if pins:
        out.append(_venv_skeleton(venv, python))
    roles = role_files(hv)
    role_paths = {f.path for files in roles.values() for f in files}
    # a pin the mirror lacks: from the official repositories' signed indexes (apt: official)
    official = aptrepo.OfficialDebs(host_vars(hv), [(role, str(p["name"]), str(p["version"]))
                                         for var, role in _APT_ROLES for p in hv.get(var) or []])
    for var, role in _APT_ROLES:
        if role == "torchserve" and container_mode(hv):
            continue  # Java is in the image; the host needs none (a leftover is not compared)
        for pin in hv.get(var) or []:
            name, version = str(pin["name"]), str(pin["version"])
            deb = debfiles.deb_files(name, version)
            found = deb if deb is not None else official.files(role, name, version)
            if not isinstance(found, dict):
                out.append(integrity.unchecked_tree(f"deb:{name}", "dpkg", found or NO_DEB))
                continue
            deb = found
            files = deb["files"]
            out.append(integrity.deb_tree(name, files, deb.get("conffiles") or [],
                                          sorted(p for p in files if p in role_paths)))
    for role, files in sorted(roles.items()):
        out.append(integrity.role_tree(role, files))
    return out


_MEMO: dict[str, list[dict[str, Any]]] = {}


def files_option(hv: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The facts module's `files` option for a host with these variables (the reference
    lines stored on the controller as a side effect). A host whose variables hold no stack
    rendered by stacklock (no `stacklock_fingerprint`) has nothing to compare: []."""
    if not hv.get("stacklock_fingerprint"):
        return []
    # every variable a role file, a tree or a managed directory may depend on: the host's
    # variables the roles read (the roles' defaults and templates are the same for every host)
    memo = memo_key(hv)
    if memo not in _MEMO:
        built = trees(hv)
        integrity.store(built)
        _MEMO[memo] = integrity.option(built, managed_dirs(hv))
    return _MEMO[memo]


def files_option_for_run(hv: Mapping[str, Any], scope: str,
                         root: Path | None = None) -> list[dict[str, Any]]:
    """`files_option`, built once per distinct variables for one run of many processes
    (stacklock.adapters.runmemo): Ansible runs the reference action in a worker forked per
    host, where the in-process memo is lost, so 200 hosts of one environment would build the
    same trees 200 times. `scope` names the run (`runmemo.process_scope`)."""
    if not hv.get("stacklock_fingerprint"):
        return []
    built: list[dict[str, Any]] = runmemo.once(
        root or integrity.default_store().parent / "runs", scope, memo_key(hv),
        lambda: files_option(hv))
    return built


__all__ = [
    "LAB_FACTS",
    "LEFT_JAVA_PINS",
    "MANAGED_UNITS",
    "ROLES",
    "SECRET_PREFIXES",
    "SECRET_VARS",
    "SYSTEM_DIRS",
    "VAR_PREFIXES",
    "Source",
    "container_mode",
    "files_option",
    "files_option_for_run",
    "host_vars",
    "managed_dirs",
    "role_file_sources",
    "role_files",
    "trees",
]
