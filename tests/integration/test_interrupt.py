"""Interrupted runs on a real lab node, and the next run recovering them.

One lab node of this test's own (project `slfault`, range 10.216): `stacklock apply` is
interrupted with SIGINT while Terraform creates the node, `stacklock configure` while apt
installs the pinned packages and again while pip builds the serving venv. Each time the CLI
must let the child stop gracefully, exit 130 without a traceback and say what to run next;
the next run must reach a clean state: no orphan container, a plan with no changes, a clean
`verify`, every pinned package held, and a venv that is never a half-built one. The tests run
in file order (each one continues from the state the previous one left).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = "slfault"
NETWORK = "10.216"  # this test's own lab range (the demo's is 10.213)
NODE = f"{PROJECT}-dev-1"
FILE_STARTED = time.monotonic()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth pairs, dockerd)"
    for tool in ("ip", "ssh", "debootstrap", "dockerd", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/bootstrap.sh (make test does)"
    return None


def _env() -> dict[str, str]:
    return dict(os.environ, NO_COLOR="1", COLUMNS="200")


def sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=_env(),
                          check=False)


def start(manifest: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def on_node(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "exec", NODE, "bash", "-c", script], capture_output=True,
                          text=True, timeout=120, check=False)


def wait_until(what: str, ready: subprocess.Popen[str], check: object, timeout: float) -> None:
    """Poll `check()` until true; fail when the run ends first or the time is up."""
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if ready.poll() is not None:
            _out, err = ready.communicate()
            raise AssertionError(f"the run ended (exit {ready.returncode}) before {what}:\n"
                                 f"{err[-4000:]}")
        time.sleep(0.3)
    ready.kill()
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def interrupt(run: subprocess.Popen[str], after: float) -> str:
    """SIGINT to the CLI `after` seconds from now (as Ctrl-C would); its stderr."""
    time.sleep(after)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=300)
    assert run.returncode == 130, f"exit {run.returncode}:\n{err[-4000:]}"
    assert "Traceback" not in err, err[-4000:]
    assert "interrupted" in err and "stopped gracefully" in err, err[-4000:]
    return err


def containers() -> list[str]:
    res = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}", "--filter",
                          f"name={PROJECT}-"], capture_output=True, text=True, check=False)
    return sorted(res.stdout.split())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_docker: str) -> Iterator[Path]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("interrupt")
    (work / "models").mkdir()
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    shutil.copy(ROOT / "examples/lab.lock", work / "lab.lock")
    text = (ROOT / "examples/lab.yaml").read_text()
    text = re.sub(r"^project: .*$", f"project: {PROJECT}", text, flags=re.M)
    text = text.replace("10.213.", f"{NETWORK}.")
    text = (text[:text.index("environments:\n")]
            + "environments:\n  dev: {provider: lab, stack: lab-2026-11, count: 1}\n"
            + text[text.index("\nlab:\n"):])
    manifest = work / "lab.yaml"
    manifest.write_text(text)
    for step in (["lock"], ["render"]):
        res = sl(manifest, *step)
        assert res.returncode == 0, res.stderr
    try:
        yield manifest
    finally:
        sl(manifest, "destroy", "dev", timeout=600)
        leftovers = containers()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)
        print(f"\ntest_interrupt.py: {time.monotonic() - FILE_STARTED:.0f} s in all")


def test_apply_interrupted_while_the_node_is_created(lab: Path) -> None:
    run = start(lab, "apply", "dev")

    def node_running() -> bool:
        res = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", NODE],
                             capture_output=True, text=True, check=False)
        return res.stdout.strip() == "true"

    wait_until("the node's container runs", run, node_running, 300)
    err = interrupt(run, 1.0)
    assert "stacklock apply dev" in err  # what to run next
    print(f"\nthe interrupted apply said:\n{err[-1500:]}")

    res = sl(lab, "apply", "dev")
    assert res.returncode == 0, res.stderr[-4000:]
    plan = sl(lab, "plan", "dev")
    assert plan.returncode == 0 and "no changes" in plan.stderr, plan.stderr[-4000:]
    assert containers() == [NODE]  # the node that was being created is not orphaned


def test_configure_interrupted_during_the_package_install(lab: Path) -> None:
    run = start(lab, "configure", "dev")
    wait_until("dpkg running on the node", run,
               lambda: on_node("pgrep -x dpkg").returncode == 0, 900)
    err = interrupt(run, 1.0)
    assert "stacklock configure dev" in err
    left = on_node("dpkg --audit | head -5; echo holds: $(apt-mark showhold)")
    print(f"\nleft after the interrupted apt install:\n{left.stdout}")


def test_configure_interrupted_during_the_pip_install(lab: Path) -> None:
    run = start(lab, "configure", "dev")
    wait_until("pip installing on the node", run,
               lambda: on_node("pgrep -f 'pip install'").returncode == 0, 1200)
    interrupt(run, 2.0)
    # the service's venv path never leads to a venv that is not complete
    left = on_node("ls -la /opt/torchserve/venvs/; readlink /opt/torchserve/venv || true")
    print(f"\nleft after the interrupted pip install:\n{left.stdout}")
    current = on_node("readlink /opt/torchserve/venv").stdout.strip()
    if current:
        assert on_node(f"test -f {current}/.stacklock-complete").returncode == 0, left.stdout


def test_the_next_configure_recovers_to_a_clean_verify(lab: Path) -> None:
    for step in (["lock"], ["render"]):  # the checkout may have moved on meanwhile
        assert sl(lab, *step).returncode == 0
    res = sl(lab, "configure", "dev")
    assert res.returncode == 0, res.stderr[-6000:]
    verify = sl(lab, "verify", "dev")
    assert verify.returncode == 0, (verify.stdout + verify.stderr)[-6000:]
    assert on_node("dpkg --audit").stdout.strip() == ""
    pinned = set(on_node("cat /etc/apt/preferences.d/stacklock-*.pref").stdout.split(
        "Package: ")[1:])
    names = {block.split()[0] for block in pinned}
    held = set(on_node("apt-mark showhold").stdout.split())
    assert names and names <= held, f"pinned but not held: {sorted(names - held)}"
    target = on_node("readlink /opt/torchserve/venv").stdout.strip()
    assert target.startswith("/opt/torchserve/venvs/")
    assert on_node(f"test -f {target}/.stacklock-complete").returncode == 0
    again = sl(lab, "configure", "dev", "--force")  # site.yml even where nothing deviates
    assert again.returncode == 0 and "changed=0" in again.stderr, again.stderr[-4000:]
