"""Every package of every pinned set: the lock holds the whole Depends closure of each component
within its family (from an apt index or packages.yaml), the roles get it, and verify flags a
member's version or hold and any installed family member the lock does not pin.

Real data: the lab mirror's Packages index (Debian bookworm's own stanzas for the 535 driver,
docker.io, libcudart11.0, and the toolkit test packages) and `dpkg-query` of a provisioned
lab node (tests/fixtures/apt, captured from stacklock-lab-prod-1).
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from stacklock.cli import main
from stacklock.core import aptclosure, parity
from stacklock.core import lock as lockmod
from stacklock.core.manifest import load_manifest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "apt"
INDEX = FIXTURES / "lab-mirror-bookworm.Packages.gz"
DPKG = FIXTURES / "lab-prod-dpkg-query.txt"
LAB_VARS = ROOT / "examples" / "lab" / "inventories" / "prod" / "group_vars" / "prod" / "stacklock.yml"

#: what `apt-get install nvidia-driver` left on the lab node (dpkg -l), besides the toolkit
LAB_DRIVER_SET = {
    "firmware-nvidia-gsp", "glx-alternative-nvidia", "libegl-nvidia0", "libgl1-nvidia-glvnd-glx",
    "libglx-nvidia0", "libnvidia-cfg1", "libnvidia-egl-wayland1", "libnvidia-eglcore",
    "libnvidia-glcore", "libnvidia-glvkspirv", "libnvidia-ml1", "nvidia-alternative",
    "nvidia-driver", "nvidia-driver-bin", "nvidia-driver-libs", "nvidia-egl-common",
    "nvidia-egl-icd", "nvidia-installer-cleanup", "nvidia-kernel-common", "nvidia-kernel-dkms",
    "nvidia-kernel-support", "nvidia-legacy-check", "nvidia-modprobe", "nvidia-persistenced",
    "nvidia-smi", "nvidia-support", "nvidia-vdpau-driver", "xserver-xorg-video-nvidia",
}


def index() -> aptclosure.Index:
    return aptclosure.parse_index([gzip.decompress(INDEX.read_bytes()).decode()])


def load_facts_module() -> ModuleType:
    path = ROOT / "ansible" / "library" / "stacklock_stack_facts.py"
    spec = importlib.util.spec_from_file_location("stacklock_stack_facts_apt", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sf = load_facts_module()


class DpkgNode:
    """probe_dpkg's only call: `dpkg-query -W`, answered with a lab node's real output."""

    def __init__(self, text: str) -> None:
        self.text = text

    def run(self, argv: list[str], timeout: float | None = None) -> Any:
        assert argv[0] == "dpkg-query"
        return sf.Result(0, self.text, "")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`stacklock ARGS` as the console script runs it: exit code and everything printed."""
    with pytest.raises(SystemExit) as exc:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out + out.err


def copy_manifest(tmp_path: Path, rel: str) -> Path:
    src = ROOT / rel
    for f in src.parent.iterdir():
        if f.is_file() and f.suffix in (".yaml", ".lock", ".mar", ".json"):
            shutil.copy(f, tmp_path / f.name)
    if (src.parent / "models").is_dir():
        shutil.copytree(src.parent / "models", tmp_path / "models")
    return tmp_path / src.name


# --------------------------------------------------------------------------- the resolver


def test_the_driver_closure_from_bookworms_index_is_what_apt_installed_on_the_lab_node() -> None:
    lab = json.loads((ROOT / "examples" / "lab.lock").read_text())["stacks"]["lab-2026-11"]
    roots = [(p["name"], p["version"]) for p in lab["apt"]["nvidia_driver"]
             if p["name"] in lab["apt_sets"]["nvidia_driver"]["roots"]]
    family = lab["apt_sets"]["nvidia_driver"]["family"]
    found = aptclosure.resolve(index(), roots, family)
    assert set(found) == LAB_DRIVER_SET
    # own versions where the member is another source package's
    assert found["nvidia-support"] == "20220217+3~deb12u1"
    assert found["libnvidia-egl-wayland1"] == "1:1.1.10-1"
    assert found["glx-alternative-nvidia"] == "1.2.2"
    # and every one of them is installed on the node at that version
    installed = sf.probe_dpkg(DpkgNode(DPKG.read_text()))
    assert {n: installed[n]["version"] for n in found} == found


def test_docker_io_pulls_tini_and_stops_at_the_os_packages() -> None:
    found = aptclosure.resolve(index(), [("docker.io", "20.10.24+dfsg1-1+deb12u1+b6")],
                               ["docker.io", "docker-*", "containerd", "runc", "tini"])
    assert found == {"containerd": "1.6.20~ds1-1+deb12u3",
                     "docker.io": "20.10.24+dfsg1-1+deb12u1+b6",
                     "runc": "1.1.5+ds1-1+deb12u1", "tini": "0.19.0-1+b3"}


def test_exact_relations_pick_the_matching_version_of_two() -> None:
    # the mirror serves the toolkit at 1.17.8-1 and 1.18.0-1: `(= 1.17.8-1)` takes the first
    found = aptclosure.resolve(index(), [("nvidia-container-toolkit", "1.17.8-1")],
                               ["nvidia-container-*", "libnvidia-container*"])
    assert found == {n: "1.17.8-1" for n in ("libnvidia-container-tools", "libnvidia-container1",
                                             "nvidia-container-toolkit",
                                             "nvidia-container-toolkit-base")}


def test_a_root_version_the_index_lacks_names_the_package_and_what_is_served() -> None:
    with pytest.raises(aptclosure.ClosureError, match=r"nvidia-driver 999-1 is not in the apt "
                                                      r"index \(it serves: 535\.309\.01"):
        aptclosure.resolve(index(), [("nvidia-driver", "999-1")], ["nvidia-*"])


def test_a_family_member_the_index_does_not_serve_is_an_error_naming_who_needs_it() -> None:
    text = ("Package: nvidia-driver\nVersion: 1-1\nDepends: nvidia-kernel-dkms (= 1-1), libc6\n\n")
    with pytest.raises(aptclosure.ClosureError, match="nvidia-driver 1-1 depends on "
                                                      r"nvidia-kernel-dkms \(= 1-1\)"):
        aptclosure.resolve(aptclosure.parse_index([text]), [("nvidia-driver", "1-1")],
                           ["nvidia-*"])


# --------------------------------------------------------------------------- the lock, per OS


def lock_of(rel: str) -> dict[str, Any]:
    lock: dict[str, Any] = json.loads((ROOT / rel).read_text())
    return lock


def test_lab_lock_debian12_holds_every_set_whole_from_the_index() -> None:
    stack = lock_of("examples/lab.lock")["stacks"]["lab-2026-11"]
    names = {c: {p["name"] for p in pins} for c, pins in stack["apt"].items()}
    assert names["nvidia_driver"] == LAB_DRIVER_SET
    assert names["docker"] == {"docker.io", "containerd", "runc", "tini"}
    assert names["cuda"] == {"libcudart11.0"}
    assert len(names["nvidia_container_toolkit"]) == 4
    assert all(m["complete"] and m["source"] == "apt index" for m in stack["apt_sets"].values())


def test_packages_yaml_gives_debian12_the_same_sets_without_an_index(tmp_path: Path) -> None:
    """The data path (no index) equals what the index resolves: one truth for bookworm."""
    manifest = copy_manifest(tmp_path, "examples/lab.yaml")
    loaded = load_manifest(manifest)
    existing = lockmod.read_lock(loaded.lock_path)
    from_data = lockmod.build_lock(loaded, {}, lockmod.closures_from_lock(existing, loaded))
    from_index = lockmod.build_lock(
        loaded, {}, lockmod.closures_from_lock(existing, loaded),
        lockmod.resolve_apt_sets(loaded, index(), str(INDEX)))
    for name in from_data["stacks"]:
        assert from_data["stacks"][name]["apt"] == from_index["stacks"][name]["apt"]
        assert from_data["stacks"][name]["apt_sets"]["nvidia_driver"]["source"] == "packages.yaml"


@pytest.mark.parametrize("rel", ["stacklock.lock", "examples/static.lock"])
def test_ubuntu_locks_pin_containerd_io_and_say_which_sets_are_whole(rel: str) -> None:
    stack = next(iter(lock_of(rel)["stacks"].values()))
    docker = {p["name"] for p in stack["apt"]["docker"]}
    assert docker == {"docker-ce", "docker-ce-cli", "containerd.io"}
    sets = stack["apt_sets"]
    assert sets["docker"]["complete"] and sets["nvidia_container_toolkit"]["complete"]
    # Ubuntu's driver and NVIDIA's cuda-toolkit closures need the user's index: not claimed whole
    assert not sets["nvidia_driver"]["complete"] and not sets["cuda"]["complete"]
    assert "cuda-*" in sets["cuda"]["family"] and "libnv*-13-0" in sets["cuda"]["family"]


def test_render_gives_verify_the_families_of_whole_sets_only() -> None:
    gv = yaml.safe_load(LAB_VARS.read_text())
    assert [f["component"] for f in gv["stacklock_apt_families"]] == [
        "nvidia_container_toolkit", "cuda", "docker", "nvidia_driver"]
    ubuntu = yaml.safe_load((ROOT / "inventories/prod/group_vars/prod/stacklock.yml").read_text())
    assert [f["component"] for f in ubuntu["stacklock_apt_families"]] == [
        "nvidia_container_toolkit", "docker"]
    assert {p["name"] for p in gv["nvidia_driver_packages"]} == LAB_DRIVER_SET


# --------------------------------------------------------------------------- lock --apt-index


def test_lock_apt_index_writes_the_sets_and_lock_check_keeps_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = copy_manifest(tmp_path, "examples/lab.yaml")
    lockfile = tmp_path / "lab.lock"
    data = json.loads(lockfile.read_text())
    stack = data["stacks"]["lab-2026-11"]
    stack["apt"]["nvidia_driver"] = stack["apt"]["nvidia_driver"][:7]  # the roots only
    for meta in stack["apt_sets"].values():
        meta["source"] = "packages.yaml"
    lockfile.write_text(lockmod.dump_lock(data))
    rc, out = run_cli(capsys, "-m", str(manifest), "lock", "--check")
    assert rc == 1 and "stale" in out
    rc, out = run_cli(capsys, "-m", str(manifest), "lock", "--offline", "--apt-index", str(INDEX))
    assert rc == 0, out
    assert lockfile.read_text() == (ROOT / "examples" / "lab.lock").read_text()
    rc, out = run_cli(capsys, "-m", str(manifest), "lock", "--check")
    assert rc == 0 and "is current" in out


def test_lock_apt_index_refuses_a_file_that_is_no_packages_index(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = copy_manifest(tmp_path, "examples/lab.yaml")
    bad = tmp_path / "Packages"
    bad.write_text("<html>not found</html>\n")
    rc, out = run_cli(capsys, "-m", str(manifest), "lock", "--offline", "--apt-index", str(bad))
    assert rc == 2, out
    assert "--apt-index" in out and "Packages" in out and "Traceback" not in out


def test_lock_apt_index_names_the_component_whose_root_the_index_lacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = copy_manifest(tmp_path, "examples/lab.yaml")
    other = tmp_path / "Packages"
    other.write_text("Package: nvidia-driver\nVersion: 999.1-1\nArchitecture: amd64\n\n")
    rc, out = run_cli(capsys, "-m", str(manifest), "lock", "--offline", "--apt-index", str(other))
    assert rc == 2, out
    assert "stacks.lab-2026-11.nvidia_driver" in out
    assert "nvidia-driver 535.309.01-0+deb12u1 is not in the apt index" in out


# --------------------------------------------------------------------------- facts and verify


def node_facts(dpkg_text: str, gv: dict[str, Any]) -> dict[str, Any]:
    """The package part of the facts as the module gathers it from this dpkg output."""
    dpkg = sf.probe_dpkg(DpkgNode(dpkg_text))
    wanted = parity.apt_package_names(gv)
    return {
        "schema": "stacklock.facts/v1",
        "packages": {n: dict(dpkg.get(n) or {"version": None, "status": "not-installed",
                                             "held": False}) for n in wanted},
        "family_packages": sf.family_packages(dpkg, parity.apt_family_globs(gv)),
        "errors": {}, "blocked": {},
    }


def package_checks(dpkg_text: str) -> list[Any]:
    # the recording (dpkg -l of a lab node) predates the lab's endpoint: its nginx pins aside
    gv = {k: v for k, v in yaml.safe_load(LAB_VARS.read_text()).items()
          if not k.startswith("serving_endpoint_")}
    exp = {k: v for k, v in parity.expected_from_vars(gv).items()
           if k.startswith(("package.", "hold.", "apt.unpinned"))}
    report = parity.compare({"prod": exp}, {"prod": {"stacklock-lab-prod-1":
                                                     node_facts(dpkg_text, gv)}})
    return [c for c in report.checks if c.status != parity.Status.MATCH]


def test_facts_report_the_installed_family_members_with_version_and_hold() -> None:
    dpkg = sf.probe_dpkg(DpkgNode(DPKG.read_text()))
    fam = sf.family_packages(dpkg, ["libnvidia-*", "tini"])
    assert fam["libnvidia-eglcore"] == {"version": "535.309.01-0+deb12u1", "held": True}
    assert fam["tini"] == {"version": "0.19.0-1+b3", "held": True}
    assert "libnvidia-container1" in fam and "nvidia-driver" not in fam
    assert "libgl1" not in sf.family_packages(dpkg, ["*-nvidia"])


def test_the_real_lab_node_matches_every_member_of_every_set() -> None:
    gv = yaml.safe_load(LAB_VARS.read_text())
    exp = parity.expected_from_vars(gv)
    assert exp["apt.unpinned"] == "none"
    assert exp["hold.libnvidia-eglcore"] == "held" and exp["package.tini"] == "0.19.0-1+b3"
    assert package_checks(DPKG.read_text()) == []


def test_an_unheld_member_is_a_deviation_naming_it() -> None:
    text = DPKG.read_text().replace("libnvidia-eglcore\t535.309.01-0+deb12u1\thi ",
                                    "libnvidia-eglcore\t535.309.01-0+deb12u1\tii ")
    [check] = package_checks(text)
    assert (check.node, check.component, check.expected, check.actual) == (
        "stacklock-lab-prod-1", "hold.libnvidia-eglcore", "held", "not held")


def test_a_member_at_another_version_is_a_deviation_naming_expected_and_actual() -> None:
    text = DPKG.read_text().replace("nvidia-support\t20220217+3~deb12u1",
                                    "nvidia-support\t20230101+1~deb12u1")
    [check] = package_checks(text)
    assert (check.component, check.expected, check.actual) == (
        "package.nvidia-support", "20220217+3~deb12u1", "20230101+1~deb12u1")


def test_an_installed_family_member_the_lock_does_not_know_is_a_deviation() -> None:
    text = DPKG.read_text() + "libnvidia-encode1\t535.309.01-0+deb12u1\tii \tamd64\n"
    text += "nvidia-cuda-dev\t11.8.89~11.8.0-5~deb12u1\tii \tamd64\n"
    [check] = package_checks(text)
    assert check.component == "apt.unpinned" and check.expected == "none"
    assert "apt-get purge" in check.detail
    assert check.actual == ("libnvidia-encode1=535.309.01-0+deb12u1, "
                            "nvidia-cuda-dev=11.8.89~11.8.0-5~deb12u1")


def test_a_removed_package_is_not_a_family_member_any_more() -> None:
    # dpkg keeps config-files of a purged-less removal: not installed, not reported
    text = DPKG.read_text() + "libnvidia-encode1\t535.309.01-0+deb12u1\trc \tamd64\n"
    assert package_checks(text) == []


def test_no_families_no_family_check() -> None:
    gv = copy.deepcopy(yaml.safe_load(LAB_VARS.read_text()))
    gv["stacklock_apt_families"] = []
    assert "apt.unpinned" not in parity.expected_from_vars(gv)
    assert parity.apt_family_globs(gv) == []
