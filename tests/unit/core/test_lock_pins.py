"""A lock never holds a pin the roles refuse: every committed lock, the rule, and `lock` itself."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from stacklock.cli import main
from stacklock.core import lock as lockmod
from stacklock.core.manifest import load_manifest
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = ROOT / "tests" / "golden" / "static-lab"
PACKAGES_ROLE = ROOT / "ansible" / "roles" / "stacklock_packages" / "tasks" / "main.yml"
TORCHSERVE_PREFLIGHT = ROOT / "ansible" / "roles" / "torchserve" / "tasks" / "preflight.yml"
SKIP_DIRS = {".git", ".venv", "node_modules", ".cache", ".terraform"}
MANIFEST_SUFFIXES = (".yaml", ".yml")


def committed_locks() -> list[Path]:
    """Every *.lock that sits next to a manifest of the same stem (or named after a manifest)."""
    out = []
    for path in sorted(ROOT.rglob("*.lock")):
        if SKIP_DIRS & set(path.relative_to(ROOT).parts):
            continue
        if any(path.with_suffix(s).is_file() for s in MANIFEST_SUFFIXES):
            out.append(path)
    return out


LOCKS = committed_locks()


def pins(lock: dict[str, Any]) -> list[tuple[str, str, str, object]]:
    """(stack, kind, name, version) of every apt and pip pin of a lock."""
    out = []
    for stack_name, stack in lock["stacks"].items():
        for group in stack["apt"].values():
            out += [(stack_name, "apt", p["name"], p.get("version")) for p in group]
        out += [(stack_name, "pip", p["name"], p.get("version")) for p in stack["pip"]]
    return out


def test_the_committed_locks_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in LOCKS}
    assert {"stacklock.lock", "examples/static.lock", "examples/lab.lock"} <= names
    assert len(LOCKS) >= 3


@pytest.mark.parametrize("path", LOCKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_committed_pin_is_accepted_by_the_roles(path: Path) -> None:
    lock = json.loads(path.read_text("utf-8"))
    found = pins(lock)
    assert any(kind == "apt" for _, kind, _, _ in found) and any(k == "pip" for _, k, _, _ in found)
    refused = [(s, kind, name, version, lockmod.pin_refusal(kind, name, version))
               for s, kind, name, version in found if not lockmod.pin_accepted(kind, name, version)]
    assert refused == []
    # the role's own preflight pattern, applied as the role applies it (re.match on a string)
    for _, kind, _, version in found:
        if kind == "apt":
            assert re.match(lockmod.ROLE_APT_VERSION_PATTERN, str(version))
    assert lockmod.lock_pin_problems(lock, path.name) == []


def test_python_rule_names_the_roles_patterns() -> None:
    """The patterns the rule mirrors are the ones in the roles' preflight tasks."""
    assert f"'{lockmod.ROLE_APT_VERSION_PATTERN}'" in PACKAGES_ROLE.read_text("utf-8")
    assert f"'{lockmod.ROLE_TORCHSERVE_VERSION_PATTERN}'" in TORCHSERVE_PREFLIGHT.read_text("utf-8")


@pytest.mark.parametrize("version", ["", None, "1.0*", ">=1.0", "1.0 ", "latest", " 1.0", "1.0\n",
                                     "=1.0", "1.0-", "a1.0", "None", "1:", "1.0 1.1", 17, "*"])
@pytest.mark.parametrize("kind", ["apt", "pip"])
def test_rule_refuses_non_exact_versions(kind: str, version: object) -> None:
    assert not lockmod.pin_accepted(kind, "somepkg", version)
    assert lockmod.pin_refusal(kind, "somepkg", version)


@pytest.mark.parametrize("version", ["580.95.05-0ubuntu1", "5:28.5.1-1~ubuntu.24.04~noble",
                                     "17.0.16+8~us1-0ubuntu1~24.04.1", "17.0.21.1+2-1~deb12u1",
                                     "20.10.24+dfsg1-1+deb12u1+b6", "1.6.20~ds1-1+deb12u3",
                                     "13.0.2-1", "2.38", "1:2.3-beta-4"])
def test_rule_accepts_exact_debian_versions(version: str) -> None:
    assert lockmod.pin_accepted("apt", "pkg", version), lockmod.pin_refusal("apt", "pkg", version)
    assert re.match(lockmod.ROLE_APT_VERSION_PATTERN, version)


@pytest.mark.parametrize(("name", "version", "ok"), [
    ("torch", "2.9.1+cu130", True), ("torch", "2.13.0+cpu", True), ("numpy", "2.2.6", True),
    ("torchserve", "0.12.0", True), ("torchserve", "0.12", False), ("numpy", "2.2.*", False),
    ("pyyaml", "==6.0.3", False), ("pyyaml", "6.0.3rc1", True),
])
def test_rule_on_pip_pins(name: str, version: str, ok: bool) -> None:
    assert lockmod.pin_accepted("pip", name, version) is ok


def test_packaged_fixed_versions_are_accepted() -> None:
    """`fixed` versions of packages.yaml are never replaced by a manifest: they must be exact."""
    for os_key, table in lockmod.package_data()["os"].items():
        for component, specs in table.items():
            lists = specs.values() if isinstance(specs, dict) else [specs]
            for spec in [s for lst in lists if isinstance(lst, list) for s in lst]:
                if spec.get("fixed"):
                    assert lockmod.pin_accepted("apt", spec["name"], spec["version"]), (os_key, component)
            if component == "java":
                for major, version in specs.items():
                    assert lockmod.pin_accepted("apt", f"openjdk-{major}-jre-headless", version)


@pytest.fixture()
def golden_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected", "*.lock"))
    return dst / "manifest.yaml"


def without_java_apt_version(manifest: Path) -> None:
    text = manifest.read_text("utf-8")
    new = re.sub(r"java: \{version: \"17\", apt_version: [^}]+\}", 'java: {version: "17"}', text)
    assert new != text
    manifest.write_text(new, "utf-8")


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    return int(exc.value.code or 0)


def test_lock_refuses_an_empty_pin_and_writes_nothing(
    golden_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    without_java_apt_version(golden_copy)  # Ubuntu 24.04: stacklock ships no openjdk version
    before = sorted(p.name for p in golden_copy.parent.iterdir())
    code = run_cli("-m", str(golden_copy), "lock")
    err = capsys.readouterr().err
    assert code == 2
    assert "stacks.s1.java.apt_version" in err and "apt-cache policy openjdk-17-jre-headless" in err
    assert "Traceback" not in err
    assert not (golden_copy.parent / "manifest.lock").exists()
    assert sorted(p.name for p in golden_copy.parent.iterdir()) == before


def test_lock_refuses_a_bad_apt_version_from_the_manifest(golden_copy: Path) -> None:
    text = golden_copy.read_text("utf-8").replace("apt_version: 17.0.16+8~us1-0ubuntu1~24.04.1",
                                                  "apt_version: latest")
    golden_copy.write_text(text, "utf-8")
    with pytest.raises(InvalidInput) as exc:
        lockmod.build_lock(load_manifest(golden_copy))
    assert exc.value.exit_code == 2
    assert [p.path for p in exc.value.problems] == ["stacks.s1.java.apt_version"]


def test_debian_12_java_17_comes_from_the_packaged_data(golden_copy: Path) -> None:
    text = golden_copy.read_text("utf-8").replace(
        'os: {distribution: ubuntu, release: "24.04"}', 'os: {distribution: debian, release: "12"}')
    golden_copy.write_text(text, "utf-8")
    without_java_apt_version(golden_copy)
    stack = lockmod.build_lock(load_manifest(golden_copy))["stacks"]["s1"]
    version = lockmod.package_data()["os"]["debian12"]["java"]["17"]
    assert stack["apt"]["java"] == [{"name": "openjdk-17-jre-headless", "version": version}]


def test_a_committed_lock_with_an_empty_pin_is_refused(
    golden_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded = load_manifest(golden_copy)
    lock = lockmod.build_lock(loaded)
    lock["stacks"]["s1"]["apt"]["java"][0]["version"] = ""
    loaded.lock_path.write_text(lockmod.dump_lock(lock), "utf-8")
    with pytest.raises(InvalidInput) as exc:
        lockmod.load_current_lock(loaded)
    assert exc.value.exit_code == 2
    assert exc.value.problems[0].path == "stacks.s1.java.apt_version"
    assert "manifest.lock" in exc.value.problems[0].message
    for args in (["lock", "--check"], ["render"], ["render", "--check"]):
        assert run_cli("-m", str(golden_copy), *args) == 2, args
        err = capsys.readouterr().err
        assert "stacks.s1.java.apt_version" in err and "roles refuse" in err, args


def test_ubuntu_docker_pins_containerd_io_with_its_own_version() -> None:
    """docker-ce depends on containerd.io from Docker's repository: pinned, held, verified."""
    import json as _json

    lock = _json.loads((ROOT / "stacklock.lock").read_text("utf-8"))
    docker = {p["name"]: p["version"] for st in lock["stacks"].values()
              for p in st["apt"]["docker"]}
    assert docker["containerd.io"] == "1.7.28-1~ubuntu.24.04~noble"
    assert docker["docker-ce"].startswith("5:28.5.1-1~")
