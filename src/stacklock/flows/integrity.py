"""The files class on the controller: the expected trees of one host's rendered variables
(locked wheels and .debs read from the controller's mirror, the files the roles write), kept
in the reference store (stacklock.core.integrity) and turned into the facts module's `files`
option. Used by `verify --fast` (stacklock.flows.fastverify) and by the verify play's
`stacklock_files_reference` action, so that both send the same expectation."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stacklock.adapters import debfiles, wheelrecord
from stacklock.core import integrity
from stacklock.core.integrity import RoleFile, Tree
from stacklock.core.render import repo_root

#: group_vars list -> the stacklock_packages id whose preferences and blacklist files it gets
_APT_ROLES = (
    ("nvidia_driver_packages", "nvidia_driver"),
    ("cuda_packages", "cuda"),
    ("nvidia_container_toolkit_packages", "nvidia_container_toolkit"),
    ("docker_packages", "docker"),
    ("torchserve_java_packages", "torchserve"),
)

#: the units stacklock manages: the unit file in /etc and its drop-in directories are watched
MANAGED_UNITS = ("torchserve.service", "docker.service", "containerd.service",
                 "nvidia-persistenced.service")

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


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def managed_dirs(hv: Mapping[str, Any]) -> list[tuple[str, bool]]:
    venv = str(hv.get("torchserve_venv") or "/opt/torchserve/venv")
    python = str(hv.get("torchserve_python_version") or "3.11")
    config = str(hv.get("torchserve_config_path") or "/etc/torchserve/config.properties")
    store = str(hv.get("torchserve_model_store") or "/var/lib/torchserve/model-store")
    dirs: list[tuple[str, bool]] = []
    if hv.get("torchserve_pip_packages"):
        dirs += [(f"{venv}/lib/python{python}/site-packages", True), (f"{venv}/bin", False)]
    if "torchserve_models" in hv:
        dirs += [(store, True), (posixpath.dirname(config), True)]
    dirs += list(SYSTEM_DIRS)
    for unit in MANAGED_UNITS:
        dirs += [(f"/etc/systemd/system/{unit}", False), (f"/etc/systemd/system/{unit}.d", True),
                 (f"/run/systemd/system/{unit}.d", True)]
    return dirs


def role_files(hv: Mapping[str, Any]) -> dict[str, list[RoleFile]]:
    """role -> the files it writes in the watched places, with the sha256 the controller
    knows (static role files, the rendered TorchServe config, the locked model archives)."""
    out: dict[str, list[RoleFile]] = {}
    home = str(hv.get("torchserve_home") or "/opt/torchserve")
    group = str(hv.get("torchserve_group") or "torchserve")
    if "torchserve_models" in hv:
        config = str(hv.get("torchserve_config_path") or "/etc/torchserve/config.properties")
        store = str(hv.get("torchserve_model_store") or "/var/lib/torchserve/model-store")
        ping = repo_root() / "ansible/roles/torchserve/files/torchserve-ping"
        ts = [RoleFile(f"{home}/torchserve-ping", "root", "root", "0755", _sha256_file(ping)),
              RoleFile(config, "root", group, "0640",
                       str(hv.get("torchserve_config_sha256") or "") or None),
              RoleFile("/etc/systemd/system/torchserve.service", "root", "root", "0644")]
        for m in hv.get("torchserve_models") or []:
            file = str(m.get("file") or f"{m['name']}.mar")
            ts.append(RoleFile(f"{store}/{file}", "root", group, "0644",
                               str(m.get("sha256") or "") or None))
        out["torchserve"] = ts
    apt: list[RoleFile] = []
    for var, role in _APT_ROLES:
        if hv.get(var) is not None and var in hv:
            apt += [RoleFile(f"/etc/apt/preferences.d/stacklock-{role}.pref", "root", "root",
                             "0644"),
                    RoleFile(f"/etc/apt/apt.conf.d/51stacklock-{role}-unattended-upgrades",
                             "root", "root", "0644")]
    if not hv.get("stacklock_apt_official"):
        for repo in hv.get("stacklock_apt_repositories") or []:
            apt.append(RoleFile(f"/etc/apt/sources.list.d/{repo['name']}.list", "root", "root",
                                "0644"))
    if apt:
        out["stacklock_packages"] = apt
    if hv.get("docker_packages"):
        out["docker"] = [RoleFile("/etc/docker/daemon.json", "root", "root", "0644")]
    if hv.get("nvidia_driver_packages") and hv.get("nvidia_driver_blacklist_nouveau", True):
        out["nvidia_driver"] = [RoleFile("/etc/modprobe.d/stacklock-blacklist-nouveau.conf",
                                         "root", "root", "0644")]
    return out


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
    pins = hv.get("torchserve_pip_packages") or []
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
    for var, _role in _APT_ROLES:
        for pin in hv.get(var) or []:
            name, version = str(pin["name"]), str(pin["version"])
            deb = debfiles.deb_files(name, version)
            if deb is None:
                out.append(integrity.unchecked_tree(f"deb:{name}", "dpkg", NO_DEB))
                continue
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
    keys = ("torchserve_venv", "torchserve_python_version", "torchserve_config_path",
            "torchserve_model_store", "torchserve_home", "torchserve_group",
            "torchserve_pip_packages", "torchserve_models", "torchserve_config_sha256",
            "stacklock_apt_official", "stacklock_apt_repositories",
            "nvidia_driver_blacklist_nouveau", *(v for v, _ in _APT_ROLES))
    memo = json.dumps({k: hv.get(k) for k in keys if k in hv}, sort_keys=True, default=str)
    if memo not in _MEMO:
        built = trees(hv)
        integrity.store(built)
        _MEMO[memo] = integrity.option(built, managed_dirs(hv))
    return _MEMO[memo]


__all__ = ["MANAGED_UNITS", "SYSTEM_DIRS", "files_option", "managed_dirs", "role_files",
           "trees"]
