"""The main job end to end on a real local lab, and real deviations that verify must catch.

One lab (dev, staging, prod; one node each) is provisioned once for this module through the
CLI: real Terraform creates the node containers, real Ansible configures them over SSH from
the local mirror, and the verify play collects the real stack. Each deviation test then
changes one real thing on one real node, checks that `stacklock verify` exits 1 naming the
environment, the node, the component, expected and actual, and puts the node back. The tests
run in file order; the last ones stop and remove node containers and need no repair.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = "sle2e"
NETWORK = "10.214"  # this test's own lab range (the demo's is 10.213): both can coexist
ENVS = ("dev", "staging", "prod")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth pairs, dockerd)"
    for tool in ("ip", "ssh", "debootstrap", "dockerd", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/bootstrap.sh (make test does)"
    return None


def container(env: str) -> str:
    return f"{PROJECT}-{env}-1"


def sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def on_node(env: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker", "exec", container(env), "bash", "-ec", script],
                         capture_output=True, text=True, timeout=300, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"on {env}: {script}\n{res.stdout}\n{res.stderr}")
    return res


def verify_json(manifest: Path) -> tuple[int, dict[str, Any]]:
    res = sl(manifest, "verify", "--format", "json", timeout=600)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def deviation(report: dict[str, Any], env: str, component: str) -> dict[str, Any]:
    found = [c for c in report["deviations"]
             if c["environment"] == env and c["component"] == component]
    assert found, (f"no deviation {env}/{component}; deviations: "
                   + json.dumps(report["deviations"], indent=1)[:3000])
    return found[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_docker: str) -> Iterator[Path]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # `lab_docker`: the session's Docker daemon and image (conftest: started if none runs,
    # and then stopped at the end of the session)
    work = tmp_path_factory.mktemp("lab")
    (work / "models").mkdir()
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    text = (ROOT / "examples/lab.yaml").read_text()
    text = re.sub(r"^project: .*$", f"project: {PROJECT}", text, flags=re.M)
    text = text.replace("10.213.", f"{NETWORK}.")
    manifest = work / "lab.yaml"
    manifest.write_text(text)
    for step in (["lock"], ["render"]):
        res = sl(manifest, *step)
        assert res.returncode == 0, res.stderr
    try:
        yield manifest
    finally:
        sl(manifest, "destroy", "--all", timeout=600)
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={PROJECT}-"],
                                   capture_output=True, text=True, check=False).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)


@pytest.fixture(scope="module")
def provisioned(lab: Path) -> dict[str, Any]:
    started = time.monotonic()
    res = sl(lab, "provision", "--all", timeout=2400)
    seconds = time.monotonic() - started
    assert res.returncode == 0, (f"provision failed ({seconds:.0f} s):\n{res.stderr[-4000:]}\n"
                                 f"{res.stdout[-6000:]}")
    return {"stderr": res.stderr, "stdout": res.stdout, "seconds": seconds}


# --------------------------------------------------------------------------- clean lab


def test_provision_all_ends_in_parity(lab: Path, provisioned: dict[str, Any]) -> None:
    out = provisioned["stdout"] + provisioned["stderr"]
    for env in ENVS:
        assert container(env) in out
    assert "parity: all nodes match the lock and each other" in out
    code, report = verify_json(lab)
    assert code == 0, report["problems"]
    assert report["ok"] is True and report["deviations"] == [] and report["unreachable"] == []
    assert {n["environment"] for n in report["nodes"]} == set(ENVS)
    # the comparison really saw the stack, not an empty report
    observed = report["observed"]["prod"][container("prod")]
    assert observed["docker.version"] == "20.10.24"
    assert observed["torch.version"] == "2.13.0+cpu"
    assert observed["torchserve.running"] == "true"


def test_second_configure_skips_every_node_then_converges_only_the_deviating_one(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    # an unchanged lab: the stack facts prove every node matches, site.yml does not run
    res = sl(lab, "configure", "--all", timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    for env in ENVS:
        assert f"skip      {env}/{container(env)}: matches its lock" in res.stderr, res.stderr
    assert "site.yml not run" in res.stderr and "play Install" not in res.stderr
    # one real deviation (a hold removed on staging): only staging is configured
    on_node("staging", "apt-mark unhold docker.io >/dev/null")
    try:
        res = sl(lab, "configure", "--all", timeout=1800)
        assert res.returncode == 0, res.stderr[-4000:]
        assert (f"configure staging/{container('staging')}: 1 deviation(s): hold.docker.io "
                "not held (lock: held)") in res.stderr, res.stderr[-4000:]
        for env in ("dev", "prod"):
            assert f"skip      {env}/{container(env)}" in res.stderr
        assert "site.yml on 1 of 3 node(s)" in res.stderr
        assert "configured dev, staging, prod: 1 host(s), changed=" in res.stderr
        assert f"{container('dev')}:" not in res.stderr.split("site.yml on 1 of 3")[1]
    finally:
        on_node("staging", "apt-mark hold docker.io >/dev/null", check=False)
    assert verify_json(lab)[0] == 0


HTTP_PROBE = """
import json, sys, urllib.request, urllib.error
url, body, token = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"Content-Type": "application/json"}
if token:
    keys = json.load(open("/var/lib/torchserve/key_file.json"))
    headers["Authorization"] = "Bearer " + keys[token]["key"]
req = urllib.request.Request(url, data=body.encode() or None, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(resp.status, resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
except OSError as exc:  # not listening (yet)
    print(0, exc)
"""


def node_http(env: str, url: str, body: str = "", token: str = "") -> tuple[int, str]:
    """An HTTP request made on the node itself (its own loopback), as a client there would."""
    res = subprocess.run(["docker", "exec", container(env), "python3", "-c", HTTP_PROBE, url,
                          body, token], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    code, _, text = res.stdout.strip().partition(" ")
    return int(code), text


def test_torchserve_answers_with_the_pinned_model(lab: Path, provisioned: dict[str, Any]) -> None:
    url = "http://127.0.0.1:8080/predictions/tiny-linear"
    code, text = node_http("staging", url, "[1.0, 2.0, 3.0]", token="inference")
    assert code == 200, text
    assert json.loads(text) == [3.0, 5.0, 7.0]  # y = 2x + 1
    code, _ = node_http("staging", url, "[1.0, 2.0, 3.0]")  # no token: refused
    assert code in (400, 401, 403)


def test_standalone_playbook_reaches_the_same_verdict(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    inv = lab.parent / "lab" / "inventories"
    argv = [str(BIN / "ansible-playbook"), "-i", str(inv / "dev"), "-i", str(inv / "staging"),
            "-i", str(inv / "prod"), "ansible/playbooks/verify.yml",
            "-e", f"stacklock_report_path={lab.parent / 'standalone.json'}"]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    report = json.loads((lab.parent / "standalone.json").read_text())
    assert report["exit_code"] == 0 and report["nodes"]


def test_clean_lab_audits_without_drift(lab: Path, provisioned: dict[str, Any]) -> None:
    prom = lab.parent / "audit.prom"
    res = sl(lab, "audit", "--format", "json", "--prometheus", str(prom), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert [e["status"] for e in doc["environments"]] == ["ok", "ok", "ok"]
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert "stacklock_drift" in families
    assert all(s.value == 0 for s in families["stacklock_drift"].samples)


# --------------------------------------------------------------------------- deviations


TOOLKIT = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
           "libnvidia-container-tools", "libnvidia-container1")


def install_toolkit(env: str, version: str, hold: bool) -> None:
    """Another (or the pinned) toolkit on a node, by hand: what an operator might do."""
    pins = " ".join(f"{p}={version}" for p in TOOLKIT)
    on_node(env, f"apt-mark unhold {' '.join(TOOLKIT)} >/dev/null; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            f"--allow-change-held-packages {pins} >/dev/null"
            + (f"; apt-mark hold {' '.join(TOOLKIT)} >/dev/null" if hold else ""))


@pytest.fixture()
def mirror_served(provisioned: dict[str, Any]) -> Iterator[None]:
    """The lab's mirror, served while a test installs packages by hand (stopped after)."""
    from stacklock.adapters import mirror

    handle = mirror.start_server(f"{NETWORK}.0.1", 8700)
    try:
        yield
    finally:
        mirror.stop_server(handle)


def test_other_package_version_on_prod_is_caught(
    lab: Path, provisioned: dict[str, Any], mirror_served: None
) -> None:
    install_toolkit("prod", "1.18.0-1", hold=False)
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "prod", "package.nvidia-container-toolkit")
        assert dev["node"] == container("prod")
        assert dev["expected"] == "1.17.8-1" and dev["actual"] == "1.18.0-1"
        # the same deviation as audit drift, attributed to prod's stack
        res = sl(lab, "audit", "prod", "--format", "json", timeout=600)
        assert res.returncode == 1, res.stderr[-3000:]
        findings = json.loads(res.stdout)["environments"][0]["findings"]
        assert any(f["kind"] == "stack" and f["component"] == "package.nvidia-container-toolkit"
                   and f["actual"] == "1.18.0-1" for f in findings), findings
        # the standalone play fails too, naming it
        inv = lab.parent / "lab" / "inventories"
        play = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inv / "prod"), "-i", str(inv / "dev"),
             "ansible/playbooks/verify.yml",
             "-e", f"stacklock_report_path={lab.parent / 'standalone-dev.json'}"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        assert play.returncode != 0 and "nvidia-container-toolkit" in play.stdout
    finally:
        install_toolkit("prod", "1.17.8-1", hold=True)
    assert verify_json(lab)[0] == 0


def test_replaced_model_archive_on_staging_is_caught(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    store = "/var/lib/torchserve/model-store/tiny-linear.mar"
    # the mtime put back (touch -r): the digest cache must not be fooled (size, ctime)
    on_node("staging", f"cp -p {store} /root/tiny-linear.mar.orig; "
            f"printf 'other bytes' >> {store}; touch -r /root/tiny-linear.mar.orig {store}")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "staging", "archive.tiny-linear.mar.sha256")
        assert dev["node"] == container("staging")
        assert dev["expected"] != dev["actual"] and dev["actual"]
    finally:
        on_node("staging", f"cp -p /root/tiny-linear.mar.orig {store}")
    assert verify_json(lab)[0] == 0


def test_hold_removed_is_caught(lab: Path, provisioned: dict[str, Any]) -> None:
    on_node("dev", "apt-mark unhold docker.io >/dev/null")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "dev", "hold.docker.io")
        assert dev["expected"] == "held" and dev["actual"] == "not held"
    finally:
        on_node("dev", "apt-mark hold docker.io >/dev/null")
    assert verify_json(lab)[0] == 0


def test_torchserve_stopped_on_dev_is_caught(lab: Path, provisioned: dict[str, Any]) -> None:
    on_node("dev", "systemctl stop torchserve")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "dev", "torchserve.running")
        assert dev["node"] == container("dev")
        assert dev["expected"] == "true" and dev["actual"] == "false"
    finally:
        on_node("dev", "systemctl start torchserve")
        for _ in range(120):  # serving again: /ping healthy and the model's workers ready
            if on_node("dev", "/opt/torchserve/torchserve-ping /var/lib/torchserve/key_file.json "
                              "http://127.0.0.1:8080 http://127.0.0.1:8081 tiny-linear",
                       check=False).returncode == 0:
                break
            time.sleep(1)
    assert verify_json(lab)[0] == 0


VENV = "/opt/torchserve/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"


def test_lab_lock_holds_the_whole_closure_with_hashes(lab: Path) -> None:
    lock = json.loads((ROOT / "examples" / "lab.lock").read_text())
    pins = lock["stacks"]["lab-2026-11"]["pip"]
    names = {p["name"] for p in pins}
    assert {"torch", "torchserve", "filelock", "jinja2", "sympy", "networkx", "pip",
            "setuptools"} <= names
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) for p in pins for f in p["files"])


def test_the_venv_holds_exactly_the_locked_closure(lab: Path, provisioned: dict[str, Any]) -> None:
    lock = json.loads((ROOT / "examples" / "lab.lock").read_text())
    want = {p["name"]: p["version"] for p in lock["stacks"]["lab-2026-11"]["pip"]}
    out = on_node("prod", f"{VENV}/bin/python -m pip list --format=json "
                          "--disable-pip-version-check").stdout
    have = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(out)}
    assert have == want


def test_transitive_dependency_and_hand_installed_distribution_are_caught(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    # setuptools is a transitive dependency of torch; Debian's own wheel is another version
    on_node("staging", f"{VENV}/bin/python -m pip install -q --no-deps --no-index "
                       "/usr/share/python-wheels/setuptools-66.1.1-py3-none-any.whl")
    # and a distribution added by hand
    on_node("staging", f"mkdir -p {SITE}/handmade-1.0.dist-info && printf "
                       "'Metadata-Version: 2.1\\nName: handmade\\nVersion: 1.0\\n' "
                       f"> {SITE}/handmade-1.0.dist-info/METADATA")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "staging", "pip.setuptools")
        assert dev["actual"] == "66.1.1" and dev["expected"] != "66.1.1"
        extra = deviation(report, "staging", "venv.unlocked")
        assert extra["expected"] == "none" and extra["actual"] == "handmade==1.0"
        # configure converges it back: the locked version again, the extra one gone
        res = sl(lab, "configure", "staging", timeout=1200)
        assert res.returncode == 0, res.stderr[-3000:]
    finally:
        on_node("staging", f"rm -rf {SITE}/handmade-1.0.dist-info", check=False)
    assert verify_json(lab)[0] == 0


def test_a_tampered_wheel_in_the_mirror_is_refused(lab: Path, provisioned: dict[str, Any]) -> None:
    from stacklock.adapters import mirror

    wheel = next((mirror.mirror_dir() / "wheels").glob("filelock-*.whl"))
    saved = wheel.read_bytes()
    on_node("dev", f"{VENV}/bin/python -m pip uninstall -q -y filelock")
    try:
        wheel.write_bytes(saved + b"tampered")
        res = sl(lab, "configure", "dev", timeout=1200)
        assert res.returncode == 3, res.stderr[-3000:]
        log = "".join(p.read_text(errors="replace")
                      for p in (lab.parent / "lab" / ".stacklock" / "runs").rglob("site.log"))
        assert "DO NOT MATCH THE HASHES" in log or "do not match the hashes" in log.lower()
    finally:
        wheel.write_bytes(saved)
    res = sl(lab, "configure", "dev", timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert verify_json(lab)[0] == 0


def test_sbom_is_valid_and_reproducible_on_the_lab(
    lab: Path, provisioned: dict[str, Any], tmp_path: Path
) -> None:
    from test_sbom_diff import check_sbom  # the same checks as on the demo lab

    check_sbom(lab, tmp_path, ENVS, container("dev"))  # a node of ENVS[0]


def test_diff_is_empty_then_names_a_hand_installed_package_on_the_lab(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    from test_sbom_diff import check_diff

    check_diff(lab, "staging", container("staging"))


def test_removed_pin_protection_file_is_caught(lab: Path, provisioned: dict[str, Any]) -> None:
    pref = "/etc/apt/preferences.d/stacklock-docker.pref"
    on_node("prod", f"mv {pref} /root/docker.pref.orig")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "prod", "apt_pin.docker.io")
        assert dev["expected"] == "20.10.24+dfsg1-1+deb12u1+b6" and dev["actual"] == "not pinned"
        assert "/etc/apt/preferences.d/stacklock-*.pref" in dev["detail"]
    finally:
        on_node("prod", f"mv /root/docker.pref.orig {pref}")
    assert verify_json(lab)[0] == 0


def test_docker_stopped_everywhere_is_caught_even_in_one_environment(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    for env in ENVS:
        on_node(env, "systemctl stop docker.socket docker.service")
    try:
        res = sl(lab, "verify", "staging", "--format", "json", timeout=600)
        assert res.returncode == 1, res.stderr[-3000:]
        report = json.loads(res.stdout)
        dev = deviation(report, "staging", "service.docker")
        assert dev["expected"] == "active" and dev["actual"] != "active"
    finally:
        for env in ENVS:
            on_node(env, "systemctl start docker.service")
    assert verify_json(lab)[0] == 0


def test_a_probe_that_times_out_is_could_not_look_exit_3(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    """Exit 3, never 1: the values were not read (here: every probe given 1 ms)."""
    inv = lab.parent / "lab" / "inventories"
    out = lab.parent / "timeout.json"
    res = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv / "dev"), "ansible/playbooks/verify.yml",
         "-e", f"stacklock_report_path={out}", "-e", "stacklock_verify_probe_timeout=0.001",
         "-e", "stacklock_verify_fail=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    report = json.loads(out.read_text())
    assert report["exit_code"] == 3
    blocked = [c for c in report["checks"] if c["status"] == "could-not-look"]
    assert blocked and all("could not look" in c["detail"] for c in blocked)
    assert any("timed out" in c["detail"] or "no answer" in c["detail"] for c in blocked)
    assert report["deviations"] == [], report["deviations"]


# --------------------------------------------------------------------------- lost nodes (last)


def test_stopped_node_is_unreachable_exit_3(lab: Path, provisioned: dict[str, Any]) -> None:
    subprocess.run(["docker", "stop", "-t", "2", container("staging")], check=True,
                   capture_output=True)
    code, report = verify_json(lab)
    assert code == 3
    assert [n["node"] for n in report["unreachable"]] == [container("staging")]
    assert not any(c["node"] == container("staging") and c["status"] == "match"
                   for c in report["checks"])


def test_removed_node_plans_a_replacement(lab: Path, provisioned: dict[str, Any]) -> None:
    subprocess.run(["docker", "rm", "-f", container("staging")], check=True,
                   capture_output=True)
    res = sl(lab, "audit", "staging", "--format", "json", timeout=600)
    assert res.returncode == 3, res.stderr[-3000:]  # the node cannot be queried: 3 wins
    env = json.loads(res.stdout)["environments"][0]
    infra = [f for f in env["findings"] if f["kind"] == "infrastructure"]
    assert infra, env
    assert any(container("staging") in f["subject"] + f["detail"] + str(f["actual"])
               for f in infra), infra
    res = sl(lab, "plan", "staging", timeout=600)
    assert res.returncode == 1 and "replace" in res.stderr and container("staging") in res.stderr
