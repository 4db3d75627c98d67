"""The RUNTIME class on one real lab node: real changes to units' effective settings, the
daemons' environments, Docker's runtimes and what a command resolves to, made together and each
caught by the verify play and by `verify --fast` naming the unit, process or command; one
`configure` puts them all back and verify exits 0; a clean node gives no finding after a node
restart, with TorchServe's keys renewed, and under `--deep`; a waiver shows a deviation as
WAIVED and an expired one fails.

One lab node (conftest's `integrity_lab`, project slint, network 10.231), shared with
tests/integration/test_integrity_files.py, which checks the clean node first. Changes are made
together because each configure costs about a minute (the suite's time budget); each test
leaves the node clean for the next.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NODE = "slint-dev-1"  # conftest.INTEGRITY_NODE


def sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def on_node(script: str) -> str:
    res = subprocess.run(["docker", "exec", NODE, "bash", "-ec", script], capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, f"{script}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def verify(manifest: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    res = sl(manifest, "verify", "dev", "--format", "json", *extra, timeout=900)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def runtime_findings(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    from stacklock.core import runtime

    return {c["component"]: c for c in report["checks"]
            if c["status"] in ("deviation", "waived")
            and c["component"].startswith((*runtime.PREFIXES, "waiver."))}


def both(manifest: Path) -> list[tuple[str, int, dict[str, Any]]]:
    """The play's and --fast's reports."""
    out = []
    for how, extra in (("play", ()), ("fast", ("--fast",))):
        code, rep = verify(manifest, *extra)
        out.append((how, code, rep))
    return out


def assert_caught(manifest: Path, component: str, actual: str | None = None) -> None:
    seen: dict[str, dict[str, dict[str, Any]]] = {}
    for how, code, rep in both(manifest):
        found = runtime_findings(rep)
        assert code == 1, f"{how}: exit {code}; {rep.get('problems')}"
        assert component in found, f"{how}: {component} not named: {sorted(found)}"
        if actual is not None:
            assert actual in str(found[component]["actual"]), found[component]
        seen[how] = found
    assert seen["play"].keys() == seen["fast"].keys(), "the play and --fast disagree"


def repair(manifest: Path) -> None:
    res = sl(manifest, "configure", "dev", "--yes", timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for how, code, rep in both(manifest):
        assert code == 0, f"{how} after configure: exit {code}; {rep.get('problems')}"


@pytest.fixture(scope="module")
def lab(integrity_lab: Path) -> Path:
    """The integrity node shared with the other class's tests (tests/integration/conftest.py)."""
    return integrity_lab


#: real changes to how the stack runs, made together (one detection, one configure: each
#: configure costs a minute): (what, shell on the node). Order matters where noted.
CHANGES = [
    ("a drop-in adding an environment variable to torchserve",
     "mkdir -p /etc/systemd/system/torchserve.service.d\n"
     "printf '[Service]\\nEnvironment=FOO=bar\\n' "
     "> /etc/systemd/system/torchserve.service.d/zz-foo.conf"),
    ("a drop-in of containerd", "mkdir -p /etc/systemd/system/containerd.service.d\n"
     "printf '[Service]\\nEnvironment=BAR=baz\\n' "
     "> /etc/systemd/system/containerd.service.d/zz-bar.conf"),
    ("Docker's runtimes changed in daemon.json",
     "python3 - <<'EOF'\n"
     "import json\n"
     "p = '/etc/docker/daemon.json'\n"
     "d = json.load(open(p))\n"
     "d['runtimes'] = {'evil': {'path': '/usr/local/bin/evil-runc'}}\n"
     "json.dump(d, open(p, 'w'))\n"
     "EOF"),
    # daemons restarted with LD_PRELOAD in the manager's environment inherit it
    ("LD_PRELOAD in the service manager's environment, then restarts",
     "systemctl set-environment LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libSegFault.so\n"
     "systemctl daemon-reload && systemctl restart containerd docker torchserve"),
    # after the restarts: what the running processes do not have yet
    ("the unit file edited on disk, not reloaded",
     "printf '\\n# edited by hand\\n' >> /etc/systemd/system/torchserve.service"),
    ("the config changed without a restart",
     "touch -d '+10 seconds' /etc/torchserve/config.properties"),
    ("java through a hand-installed alternative",
     "update-alternatives --install /usr/bin/java java /bin/true 5000"),
    ("nvidia-ctk shadowed earlier on the PATH", "ln -sf /bin/true /usr/local/bin/nvidia-ctk"),
]

#: what verify must name for them: (component, a part of the actual value or None)
CAUGHT = [
    ("unit.torchserve.drop_in./etc/systemd/system/torchserve.service.d/zz-foo.conf", "present"),
    ("unit.torchserve.environment.FOO", "bar"),
    ("process.torchserve.environment.FOO", None),
    ("unit.containerd.drop_in./etc/systemd/system/containerd.service.d/zz-bar.conf", "present"),
    ("process.containerd.environment.BAR", "set"),  # named without its value
    ("docker.runtime.nvidia", None),  # no longer registered: (missing)
    ("docker.runtime.evil", "/usr/local/bin/evil-runc"),
    ("systemd.environment.LD_PRELOAD", "libSegFault"),
    ("process.torchserve.environment.LD_PRELOAD", "libSegFault"),
    ("process.docker.environment.LD_PRELOAD", "libSegFault"),
    ("unit.torchserve.daemon_reload", "not reloaded"),
    ("unit.torchserve.settings", "running older settings"),
    ("command.java.target", "/usr/bin/true"),
    ("command.nvidia-ctk.path", "/usr/local/bin/nvidia-ctk"),
]


def test_every_runtime_change_is_named_by_play_and_fast(lab: Path) -> None:
    for _what, change in CHANGES:
        on_node(change)
    seen: dict[str, set[str]] = {}
    for how, code, rep in both(lab):
        found = runtime_findings(rep)
        assert code == 1, f"{how}: exit {code}; {rep.get('problems')}"
        for component, actual in CAUGHT:
            assert component in found, f"{how}: {component} not named: {sorted(found)}"
            if actual is not None:
                assert actual in str(found[component]["actual"]), (how, found[component])
        seen[how] = set(found)
    assert seen["play"] == seen["fast"], "the play and --fast disagree"


def test_configure_puts_every_runtime_change_back(lab: Path) -> None:
    repair(lab)
    assert "zz-foo" not in on_node("ls /etc/systemd/system/torchserve.service.d || true")
    assert "zz-bar" not in on_node("ls /etc/systemd/system/containerd.service.d || true")
    assert "LD_PRELOAD" not in on_node("systemctl show-environment")
    assert "/bin/true" not in on_node("update-alternatives --list java")
    local = on_node("ls /usr/local/bin").split()
    assert "nvidia-ctk" not in local and "nvidia-ctk.stacklock-moved-aside" in local, local
    for unit in ("docker", "containerd", "torchserve"):
        env = on_node(f"tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value {unit})/environ")
        assert "LD_PRELOAD" not in env, unit


# --------------------------------------------------------------------------- waivers


def test_a_waived_drop_in_shows_waived_and_an_expired_waiver_fails(lab: Path) -> None:
    item = "unit.docker.drop_in./etc/systemd/system/docker.service.d/site.conf"
    on_node("mkdir -p /etc/systemd/system/docker.service.d\n"
            "printf '[Service]\\nLimitNOFILE=1048576\\n' "
            "> /etc/systemd/system/docker.service.d/site.conf\n"
            "systemctl daemon-reload && systemctl restart docker")
    data = yaml.safe_load(lab.read_text())
    tomorrow = dt.date.today() + dt.timedelta(days=1)
    data.setdefault("parity", {})["waivers"] = [
        {"item": item, "node": NODE, "reason": "site file limit", "expires": tomorrow}]
    lab.write_text(yaml.safe_dump(data, sort_keys=False))
    assert sl(lab, "render").returncode == 0
    for how, code, rep in both(lab):
        assert code == 0, f"{how}: {rep.get('problems')}"
        assert runtime_findings(rep)[item]["status"] == "waived"
    data["parity"]["waivers"][0]["expires"] = dt.date.today() - dt.timedelta(days=1)
    lab.write_text(yaml.safe_dump(data, sort_keys=False))
    assert sl(lab, "render").returncode == 0
    for how, code, rep in both(lab):
        assert code == 1, how
        assert f"waiver.{item}" in runtime_findings(rep), how
    data["parity"].pop("waivers")
    lab.write_text(yaml.safe_dump(data, sort_keys=False))
    assert sl(lab, "render").returncode == 0
    # configure removing a docker drop-in is shown above (containerd's): put back by hand
    on_node("rm -rf /etc/systemd/system/docker.service.d && systemctl daemon-reload "
            "&& systemctl restart docker")


# --------------------------------------------------------------------------- clean after


def test_clean_after_a_node_restart_and_with_renewed_keys(
        lab: Path, restart_integrity_node: Callable[[], None]) -> None:
    restart_integrity_node()  # docker restart, then its network wired again
    on_node("for i in $(seq 90); do python3 -c 'import socket; "
            "socket.create_connection((\"127.0.0.1\", 8081), 2)' 2>/dev/null && break; "
            "sleep 2; done")
    # the keys TorchServe renews every 60 min: rotated now through its token API
    on_node("python3 - <<'EOF'\n"
            "import json, urllib.request\n"
            "k = json.load(open('/var/lib/torchserve/key_file.json'))\n"
            "req = urllib.request.Request('http://127.0.0.1:8081/token?type=management',"
            " headers={'Authorization': 'Bearer ' + k['API']['key']})\n"
            "urllib.request.urlopen(req, timeout=10)\n"
            "EOF")
    # the model's worker starts after the management port answers: a node is clean once it
    # serves again (as configure's handler waits for); verify before that rightly says
    # "0/1 workers ready". Bounded: 90 tries, 2 s apart
    on_node("python3 - <<'EOF'\n"
            "import json, time, urllib.request\n"
            "for _ in range(90):\n"
            "    k = json.load(open('/var/lib/torchserve/key_file.json'))\n"
            "    req = urllib.request.Request('http://127.0.0.1:8081/models/tiny-linear',"
            " headers={'Authorization': 'Bearer ' + k['management']['key']})\n"
            "    try:\n"
            "        doc = json.load(urllib.request.urlopen(req, timeout=10))\n"
            "        if all(w.get('status') == 'READY' for m in doc for w in m.get('workers')"
            " or [{}]):\n"
            "            break\n"
            "    except OSError:\n"
            "        pass\n"
            "    time.sleep(2)\n"
            "EOF")
    for how, code, rep in both(lab):
        assert code == 0, f"{how}: {rep.get('problems')}"
    code, rep = verify(lab, "--deep")  # the play in check mode on top: nothing to change
    assert code == 0, rep.get("problems")
