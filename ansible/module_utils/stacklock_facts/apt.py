# Copyright: stacklock contributors. Apache-2.0.
"""The packages: what dpkg knows (versions, holds, the pinned families, the whole inventory)
and what protects the pins (apt preferences, the unattended-upgrades blacklist).

Sections: ``os_packages`` (``inventory: true``), ``packages``, ``holds``, ``family_packages``
(``package_families``), ``apt_protection``. dpkg is read once (``collect_dpkg``) for every
collector that looks up a package (driver, CUDA, Docker, toolkit, Java)."""

from __future__ import annotations

import fnmatch
import hashlib
import re
from typing import Any

from ansible.module_utils.stacklock_facts.common import CannotLook, ProbeError, cmd_error
from ansible.module_utils.stacklock_facts.node import System
from ansible.module_utils.stacklock_facts.run import Run

#: the files stacklock_packages writes to protect the pins
APT_PREFERENCES_GLOB = "/etc/apt/preferences.d/stacklock-*.pref"
APT_BLACKLIST_GLOB = "/etc/apt/apt.conf.d/51stacklock-*-unattended-upgrades"
_BLACKLIST_ENTRY_RE = re.compile(r'^\s*"\^(?P<name>[^"]+)\$";\s*$')


def probe_dpkg(sy: System, inventory: list[dict[str, Any]] | None = None
               ) -> dict[str, dict[str, Any]]:
    """All packages dpkg knows: {name: {version, status, held}} (one dpkg-query call).

    `inventory`, a list, receives every installed package as {name, version, architecture,
    status}, foreign-architecture ones (multiarch) included."""
    argv = ["dpkg-query", "-W",
            "-f=${Package}\t${Version}\t${db:Status-Abbrev}\t${Architecture}\n"]
    res = sy.run(argv)
    if res.rc != 0:
        raise CannotLook(cmd_error(argv, res))
    pkgs: dict[str, dict[str, Any]] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name, version, abbrev = parts[0], parts[1], parts[2]
        arch = parts[3].strip() if len(parts) > 3 else ""
        want = abbrev[:1]
        state = abbrev[1:2]
        installed = state in ("i", "U", "F", "W", "t")  # installed, or half-way there
        entry = {"version": version if installed else None,
                 "status": "installed" if state == "i" else ("config-files" if state == "c"
                                                             else "not-installed" if state == "n"
                                                             else "half-installed"),
                 "held": want == "h"}
        prev = pkgs.get(name)
        if prev is None or (entry["version"] and not prev["version"]):
            pkgs[name] = entry
        if inventory is not None and entry["version"]:
            inventory.append({"name": name, "version": version, "architecture": arch or None,
                              "status": entry["status"]})
    if inventory is not None:
        inventory.sort(key=lambda e: (e["name"], e["architecture"] or "", e["version"]))
    return pkgs


def family_packages(dpkg: dict[str, dict[str, Any]], globs: list[str]
                    ) -> dict[str, dict[str, Any]]:
    """{name: {version, held}} of every installed package whose name matches one of `globs`."""
    return {name: {"version": e["version"], "held": e["held"]}
            for name, e in sorted(dpkg.items())
            if e["version"] and any(fnmatch.fnmatchcase(name, g) for g in globs)}


def probe_apt_protection(sy: System) -> dict[str, Any]:
    """What protects the pins: apt preferences (Package/Pin/Pin-Priority stanzas) and the
    unattended-upgrades blacklist, as the stacklock roles write them, with each file's digest.

    pins: {package: {version, priority, file}}; blacklisted: {package: file}."""
    out: dict[str, Any] = {"files": {}, "pins": {}, "blacklisted": {}}
    for path in sy.glob(APT_PREFERENCES_GLOB):
        text = sy.read_text(path)
        if text is None:
            continue
        out["files"][path] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.lstrip().startswith("#"):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            name, pin = fields.get("package"), fields.get("pin", "")
            if not name or not pin.startswith("version "):
                continue
            try:
                priority: int | None = int(fields.get("pin-priority", ""))
            except ValueError:
                priority = None
            for pkg in name.split():
                out["pins"][pkg] = {"version": pin[len("version "):].strip(),
                                    "priority": priority, "file": path}
    for path in sy.glob(APT_BLACKLIST_GLOB):
        text = sy.read_text(path)
        if text is None:
            continue
        out["files"][path] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        for line in text.splitlines():
            m = _BLACKLIST_ENTRY_RE.match(line)
            if m:
                out["blacklisted"][m.group("name").replace("\\", "")] = path
    return out


# --------------------------------------------------------------------------- collectors


def collect_dpkg(run: Run) -> None:
    """dpkg, read once for all collectors (`run.dpkg`); `os_packages` when inventory: true
    (null when dpkg could not be read)."""
    inventory: list[dict[str, Any]] | None = [] if run.opts.get("inventory") else None
    try:
        run.dpkg = probe_dpkg(run.sy, inventory)
    except ProbeError as exc:
        run.dpkg_error = run.errors["packages"] = str(exc)
        if inventory is not None:
            run.facts["os_packages"] = None
        return
    if inventory is not None:
        run.facts["os_packages"] = inventory


def collect_protection(run: Run) -> None:
    run.facts["apt_protection"] = run.section("apt_protection", probe_apt_protection, run.sy)


def collect_packages(run: Run) -> None:
    """`packages` (each one the lock pins: version, status, hold), `holds` (every held
    package) and `family_packages` (installed members of the pinned families)."""
    wanted = list(run.opts.get("packages") or [])
    dpkg = run.dpkg
    if dpkg is None:
        run.facts["packages"] = {n: {"version": None, "held": None, "status": None,
                                     "error": run.dpkg_error} for n in wanted}
        run.facts["holds"] = None
    else:
        run.facts["packages"] = {n: dict(dpkg.get(n) or {"version": None,
                                                         "status": "not-installed",
                                                         "held": False}) for n in wanted}
        run.facts["holds"] = sorted(n for n, e in dpkg.items() if e["held"])
    globs = [str(g) for g in run.opts.get("package_families") or []]
    if globs:
        # installed members of the pinned families, pinned or not (None: dpkg unreadable)
        run.facts["family_packages"] = None if dpkg is None else family_packages(dpkg, globs)
