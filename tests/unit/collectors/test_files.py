"""The files collector (ansible/module_utils/stacklock_facts/files.py) on a recorded node
tree: a dpkg package, a venv distribution with its RECORD, role files, managed directories."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
from pathlib import Path
from typing import Any

import fakenode  # noqa: F401  (loads the facts package from this checkout)
from ansible.module_utils.stacklock_facts import files

from stacklock.core import integrity

SITE = "/opt/ts/venv/lib/python3.11/site-packages"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(root: Path, path: str, data: bytes, mode: int = 0o644) -> None:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, mode)


def _node(root: Path) -> dict[str, Any]:
    """A recorded node: runc from dpkg, a wheel `demo` in the venv, a role file."""
    _write(root, "/usr/bin/runc", b"RUNC")
    _write(root, "/var/lib/dpkg/info/runc.list", b"/.\n/usr\n/usr/bin\n/usr/bin/runc\n")
    _write(root, "/etc/apt/apt.conf.d/01autoremove", b"apt's")
    _write(root, "/var/lib/dpkg/info/apt.list", b"/etc/apt/apt.conf.d/01autoremove\n")
    _write(root, f"{SITE}/demo/__init__.py", b"print('demo')\n")
    _write(root, f"{SITE}/demo/__pycache__/__init__.cpython-311.pyc", b"PYC")
    _write(root, f"{SITE}/demo-1.0.dist-info/METADATA", b"Name: demo\n")
    _write(root, f"{SITE}/demo-1.0.dist-info/INSTALLER", b"pip\n")
    _write(root, "/opt/ts/venv/bin/demo", b"#!/opt/ts/venv/bin/python\n", 0o755)
    _write(root, f"{SITE}/demo-1.0.dist-info/RECORD", (
        b"demo/__init__.py,sha256=x,14\ndemo/__pycache__/__init__.cpython-311.pyc,,\n"
        b"demo-1.0.dist-info/METADATA,,\ndemo-1.0.dist-info/INSTALLER,,\n"
        b"demo-1.0.dist-info/RECORD,,\n../../../bin/demo,,\n"))
    _write(root, "/opt/ts/ping", b"PING", 0o755)
    # the controller's side
    members = {"demo/__init__.py": _sha(b"print('demo')\n"),
               "demo-1.0.dist-info/METADATA": _sha(b"Name: demo\n"),
               "demo-1.0.dist-info/RECORD": "ignored"}
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    trees = [
        integrity.deb_tree("runc", {"/usr/bin/runc": _sha(b"RUNC")}),
        integrity.wheel_tree("demo", SITE, "/opt/ts/venv", "3.11", members,
                             "[console_scripts]\ndemo = demo:main\n"),
        integrity.role_tree("ts", [integrity.RoleFile("/opt/ts/ping", user, group, "0755",
                                                      _sha(b"PING"))]),
    ]
    opt = integrity.option(trees, [(SITE, True), ("/opt/ts/venv/bin", False),
                                   ("/etc/apt/apt.conf.d", False)])
    return {"files": json.loads(json.dumps(opt)), "files_cache": "", "trees": trees}


def _run(root: Path, opts: dict[str, Any]) -> dict[str, Any]:
    return files.probe({k: v for k, v in opts.items() if k != "trees"}, files.Disk(str(root)))


def test_clean_node_matches_the_controller(tmp_path: Path) -> None:
    opts = _node(tmp_path)
    out = _run(tmp_path, opts)
    assert out["unowned"] == []
    for tree in opts["trees"]:
        assert out["trees"][tree.id]["hash"] == tree.hash, out["trees"][tree.id]
        assert "lines" not in out["trees"][tree.id]


def test_changes_are_reported_with_lines(tmp_path: Path) -> None:
    opts = _node(tmp_path)
    _write(tmp_path, "/usr/bin/runc", b"EVIL")
    _write(tmp_path, f"{SITE}/evil.pth", b"import evil")
    _write(tmp_path, "/etc/apt/apt.conf.d/99proxy", b"Acquire::http::Proxy")
    (tmp_path / f"{SITE.lstrip('/')}/demo/__init__.py").unlink()
    os.chmod(tmp_path / "opt/ts/ping", 0o777)
    out = _run(tmp_path, opts)
    assert out["unowned"] == ["/etc/apt/apt.conf.d/99proxy", f"{SITE}/evil.pth"]
    assert f"/usr/bin/runc\t{_sha(b'EVIL')}" in out["trees"]["deb:runc"]["lines"]
    assert f"{SITE}/demo/__init__.py\tmissing" in out["trees"]["wheel:demo"]["lines"]


def test_the_digest_cache_only_speeds_up(tmp_path: Path) -> None:
    opts = dict(_node(tmp_path), files_cache="/cache.json")
    cache = tmp_path / "cache.json"
    first = _run(tmp_path, opts)
    assert first["hashed"] > 0 and cache.is_file()
    again = _run(tmp_path, opts)
    assert again["hashed"] == 0 and again["reused"] == first["hashed"]
    _write(tmp_path, "/usr/bin/runc", b"EVIL")  # a new identity: hashed again
    assert "lines" in _run(tmp_path, opts)["trees"]["deb:runc"]
    deep = _run(tmp_path, dict(opts, deep=True))
    assert deep["reused"] == 0
