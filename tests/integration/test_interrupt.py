"""Interrupted runs on a real lab node, and the next run recovering them.

One lab node of this test's own (project `slfault`, range 10.216): `stacklock apply` is
interrupted with SIGINT while Terraform creates the node, `stacklock configure` while apt
installs the pinned packages and again while pip builds the serving venv. Each time the CLI
must let the child stop gracefully, exit 130 without a traceback and say what to run next;
the next run must reach a clean state: no orphan container, a plan with no changes, a clean
`verify`, every pinned package held, and a venv that is never a half-built one. The tests run
in file order (each one continues from the state the previous one left). Before the recovery, a
configure from a mirror with a tampered wheel is refused by pip on the node.

The last four need no lab (a static environment and a fake `terraform`): a hangup (SIGHUP,
sent, or the controlling terminal going away) stops the run's child before the run ends and
its lock goes, and a child that outlives a killed run keeps the environment locked.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def unhint(text: str) -> str:
    """Hints name the manifest in use (`stacklock -m PATH COMMAND`); the command is what the
    assertions check."""
    return re.sub(r"stacklock -m \S+ ", "stacklock ", text)

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
    assert "stacklock apply dev" in unhint(err)  # what to run next
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
    assert "stacklock configure dev" in unhint(err)
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


def test_a_tampered_wheel_in_the_mirror_is_refused(lab: Path, tmp_path: Path) -> None:
    """The venv left half built needs the closure again: this lab's mirror address serves a
    copy of the mirror with one wheel tampered with, and pip on the node refuses it (exit 3).
    The shared mirror is never touched: other test lanes install from it meanwhile."""
    from stacklock.adapters import mirror

    root = tmp_path / "mirror"  # hard links: the one tampered file is a new file of its own
    subprocess.run(["cp", "-al", str(mirror.mirror_dir()), str(root)], check=True)
    wheel = next((root / "wheels").glob("filelock-*.whl"))
    tampered = wheel.read_bytes() + b"tampered"
    wheel.unlink()
    wheel.write_bytes(tampered)
    assert next((mirror.mirror_dir() / "wheels").glob("filelock-*.whl")).read_bytes() != tampered
    mirror.stop_server(host=f"{NETWORK}.0.1", port=8700)  # one left running by an earlier run
    server = mirror.start_server(f"{NETWORK}.0.1", 8700, root)
    assert server.started
    try:
        res = sl(lab, "configure", "dev")
        assert res.returncode == 3, res.stderr[-3000:]
        log = "".join(p.read_text(errors="replace")
                      for p in (lab.parent / "lab" / ".stacklock" / "runs").rglob("site.log"))
        assert "DO NOT MATCH THE HASHES" in log or "do not match the hashes" in log.lower()
    finally:
        mirror.stop_server(server)
    # the service's venv path still never leads to a venv that is not complete
    current = on_node("readlink /opt/torchserve/venv").stdout.strip()
    if current:
        assert on_node(f"test -f {current}/.stacklock-complete").returncode == 0


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


# --------------------------------------------------------------------------- runs that end
#
# Issue 19: a hangup (SIGHUP: the SSH session dropped) is a stop like SIGTERM, and an
# environment stays locked while any child of a run still runs -- also when stacklock itself
# is gone. Cheap: a static environment (nothing is contacted) and a fake `terraform` whose
# `plan` runs long and records when it started and ended; every other call is the real
# binary's. A second run waits for the lock; its first Terraform call (after it got the lock)
# must come after the long child ended.

TERRAFORM = shutil.which("terraform")

FAKE_TERRAFORM = '''#!{python}
import os, signal, sys, time
state = os.environ["FAKE_TF_STATE"]
args = sys.argv[1:]
def note(name, text=""):
    with open(os.path.join(state, name), "a") as fh:
        fh.write(text)
note("calls", f"{{os.getpid()}} {{time.time()!r}} {{' '.join(args)}}\\n")
slow = os.path.join(state, "slow")
if "plan" in args and os.path.exists(slow):
    mode = open(slow).read().strip()
    os.unlink(slow)  # one long plan: the waiting run's plan is the real one
    note("pid", str(os.getpid()))
    def stop(signum, frame):
        time.sleep(2.0)  # a graceful stop takes a while (Terraform records its state)
        note("ended", repr(time.time()))
        os._exit(130)
    def terminated(signum, frame):
        note("ended", repr(time.time()))
        os._exit(143)
    signal.signal(signal.SIGINT, stop if mode == "graceful" else signal.SIG_IGN)
    signal.signal(signal.SIGTERM, terminated)
    note("started", repr(time.time()))
    end = time.time() + (4.0 if mode == "outlive" else 300.0)
    while time.time() < end:
        time.sleep(0.05)
    note("ended", repr(time.time()))
    sys.exit(0)
os.execv({terraform!r}, [{terraform!r}, *args])
'''


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[Path]:
    """examples/static.yaml with one environment, locked and rendered, and the fake Terraform;
    a long child left running (the test failed) is killed afterwards."""
    if TERRAFORM is None:
        pytest.skip("no terraform binary on PATH (the fake one hands every other call to it)")
    text = (ROOT / "examples/static.yaml").read_text()
    text = text[:text.index("environments:\n")] + (
        "environments:\n  dev:\n    provider: static\n    stack: onprem-2026-11\n"
        "    hosts:\n      - {name: gpu-dev-01, address: 198.51.100.11, user: ubuntu}\n")
    manifest = tmp_path / "site.yaml"
    manifest.write_text(text)
    shutil.copy(ROOT / "examples/static.lock", tmp_path / "site.lock")
    shutil.copytree(ROOT / "examples/models", tmp_path / "models")
    fake = tmp_path / "fake-terraform"
    fake.write_text(FAKE_TERRAFORM.format(python=sys.executable, terraform=TERRAFORM))
    fake.chmod(0o755)
    (tmp_path / "state").mkdir()
    res = subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), "render"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    yield manifest
    left = _state(manifest, "pid")
    if left and _alive(int(left)):
        os.kill(int(left), signal.SIGKILL)


def _site_env(site: Path) -> dict[str, str]:
    return dict(os.environ, NO_COLOR="1", COLUMNS="200", STACKLOCK_INTERRUPT_GRACE="3",
                STACKLOCK_TERRAFORM_BIN=str(site.parent / "fake-terraform"),
                FAKE_TF_STATE=str(site.parent / "state"))


def _start_site(site: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "stacklock"), "-m", str(site), *args],  # type: ignore[call-overload, no-any-return]
                            cwd=site.parent, text=True, env=_site_env(site), **popen)


def _state(site: Path, name: str) -> str:
    path = site.parent / "state" / name
    return path.read_text() if path.exists() else ""


def _wait_for(what: str, check: object, timeout: float = 60) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout:.0f} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not reaped: its parent is gone or has not waited yet) is not running
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _lock_is_held(site: Path) -> bool:
    import fcntl

    path = site.parent / "static" / ".stacklock" / "locks" / "dev.lock"
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _long_plan(site: Path, mode: str, **popen: object) -> tuple[subprocess.Popen[str], int]:
    """`stacklock plan dev` whose Terraform plan runs long (`mode`: graceful -- stops 2 s after
    SIGINT; stubborn -- ignores SIGINT; outlive -- ends by itself after 4 s); the run and the
    long child's pid, once it runs."""
    (site.parent / "state" / "slow").write_text(mode)
    first = _start_site(site, "plan", "dev", **popen)
    _wait_for("long terraform plan", lambda: _state(site, "started") or first.poll() is not None)
    assert first.poll() is None, "the run ended before its plan started"
    return first, int(_state(site, "pid"))


@dataclass
class Waiting:
    """A second `stacklock plan dev`, waiting for the lock; its stderr read as it comes."""

    run: subprocess.Popen[str]
    lines: list[str]
    reader: threading.Thread


def _waiting_run(site: Path) -> Waiting:
    second = _start_site(site, "plan", "dev", "--lock-timeout", "120",
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines: list[str] = []
    assert second.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(second.stderr or ()), daemon=True)
    reader.start()
    _wait_for("the second run waiting for the lock",
              lambda: any("waiting for another stacklock run" in x for x in lines)
              or second.poll() is not None)
    assert second.poll() is None, "".join(lines)[-3000:]
    return Waiting(second, lines, reader)


def _got_the_lock_after_the_child(site: Path, waiting: Waiting, child: int) -> None:
    """The waiting run ran Terraform only after the long child had ended."""
    waiting.run.wait(timeout=300)
    waiting.reader.join(timeout=30)
    err = "".join(waiting.lines)
    assert waiting.run.returncode in (0, 1), err[-3000:]
    started, ended = float(_state(site, "started")), float(_state(site, "ended"))
    calls = [line.split(" ", 2) for line in _state(site, "calls").splitlines()]
    # the first run called Terraform before its long plan started; later calls are the
    # waiting run's, made once it held the lock
    later = [float(t) for pid, t, _args in calls if int(pid) != child and float(t) > started]
    assert later, calls
    assert min(later) >= ended, (
        f"the waiting run called Terraform {ended - min(later):.2f} s before the locked "
        f"child ended: {calls}")


def test_sighup_stops_the_child_before_the_run_ends_and_the_lock_goes(static_site: Path
                                                                      ) -> None:
    first, child = _long_plan(static_site, "graceful", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    second = _waiting_run(static_site)
    first.send_signal(signal.SIGHUP)
    _out, err = first.communicate(timeout=120)
    assert first.returncode == 3, f"exit {first.returncode}:\n{err[-3000:]}"
    assert "Traceback" not in err and "internal error" not in err, err[-3000:]
    assert "SIGHUP" in err and "stopped gracefully" in err, err[-3000:]
    assert not _alive(child), "the child outlived the run"
    assert _state(static_site, "ended")
    _got_the_lock_after_the_child(static_site, second, child)


def test_sighup_escalates_to_sigterm_for_a_child_that_ignores_sigint(static_site: Path
                                                                     ) -> None:
    first, child = _long_plan(static_site, "stubborn", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    second = _waiting_run(static_site)
    first.send_signal(signal.SIGHUP)
    _out, err = first.communicate(timeout=120)
    assert first.returncode == 3, f"exit {first.returncode}:\n{err[-3000:]}"
    assert "did not stop within 3 s and was terminated" in err, err[-3000:]
    assert not _alive(child)
    _got_the_lock_after_the_child(static_site, second, child)


def test_a_dropped_terminal_hangs_up_the_run_and_it_still_stops_its_child(
        static_site: Path) -> None:
    """The real thing: stacklock on a pseudo-terminal it controls, and the terminal goes away
    (the master side closed, as sshd does when the connection drops). The kernel sends SIGHUP
    and every later write to the terminal fails; the run must still stop its child first."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    first, child = _long_plan(static_site, "graceful", stdin=slave, stdout=slave,
                              stderr=slave, start_new_session=True,
                              preexec_fn=controlling_terminal)
    os.close(slave)
    second = _waiting_run(static_site)
    os.close(master)  # the session drops
    assert first.wait(timeout=120) == 3
    assert not _alive(child), "the child outlived the run"
    assert _state(static_site, "ended")
    _got_the_lock_after_the_child(static_site, second, child)


def test_a_child_that_outlives_a_killed_run_keeps_the_environment_locked(
        static_site: Path) -> None:
    """SIGKILL cannot be handled: the child carries on (Terraform must finish recording its
    state) and the environment stays locked until it exits."""
    first, child = _long_plan(static_site, "outlive", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    second = _waiting_run(static_site)
    first.kill()
    first.wait(timeout=30)
    assert _alive(child) and not _state(static_site, "ended")
    assert _lock_is_held(static_site), "the lock went with stacklock while its child runs"
    _got_the_lock_after_the_child(static_site, second, child)
