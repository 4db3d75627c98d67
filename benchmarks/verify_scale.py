"""Benchmark: how verify scales with the number of nodes (figures, no assertions).

Light hosts: each is a container of the lab image running only sshd as PID 1 (no systemd, a
few MB), started with `--network none` and given its own network namespace wired like a lab
node (a veth pair holding a /30 from 10.219.0.0/16, no bridge, no NAT), root login with this
run's own ed25519 key, and its host key read through Docker into the inventory's known_hosts
(StrictHostKeyChecking=yes, as every stacklock inventory). The hosts are bare (no stack):
the facts module does all of its work and the comparison reports deviations, which is fine.

For each N of --sizes it times, on the same hosts, best of --repeat:

* `ansible all -m ping` (Ansible's floor: pipelining and ControlPersist, as ansible.cfg);
* the verify play (`ansible-playbook ansible/playbooks/verify.yml`, strategy linear): the
  path of `stacklock verify`;
* the same play with the Mitogen strategy (`mitogen_linear`), when `--mitogen DIR` names an
  unpacked `mitogen` distribution (pip install --target DIR mitogen);
* the fast path (`stacklock verify --fast`: `stacklock.flows.fastverify.collect` in a fresh
  Python process, the same facts module over one asyncssh connection per node, same report).

Wall time and controller CPU (user + sys of the command and every child it waited for: ssh
clients, Ansible's forks) are reported per run and per node; the per-node CPU extrapolates
linearly to 1,000 nodes (CPU seconds = 1,000 x CPU per node at the largest N; on C cores the
wall time can not be under that / C). Writes a Markdown table and, when matplotlib is
importable, a PNG plot of wall time against N.

    sudo .venv/bin/python benchmarks/verify_scale.py --sizes 10,50 [--repeat 2] \\
        [--mitogen /tmp/mitogen] [--out benchmarks/results]

Needs root (network namespaces), Docker and the lab image (`stacklock lab image`). Every host
it starts is removed at the end, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFIX = "slbench"
NET = "10.219"
IMAGE = "stacklock-lab:bookworm"
#: the lab's rendered group_vars, so the comparison has a lock to compare with
GROUP_VARS = ROOT / "examples" / "lab" / "inventories" / "dev" / "group_vars" / "dev"

BOOT = ("ssh-keygen -A >/dev/null && mkdir -p /run/sshd /root/.ssh && chmod 700 /root/.ssh && "
        "printf '%s\\n' \"$AUTHKEY\" > /root/.ssh/authorized_keys && "
        "exec /usr/sbin/sshd -D -e -o UseDNS=no -o MaxStartups=500 -o PermitRootLogin=yes")


def sh(*argv: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, text=True, capture_output=True, check=check, **kw)  # type: ignore[call-overload,no-any-return]


def addresses(i: int) -> tuple[str, str, str]:
    """(host-side address, node address, host-side veth name) of light host i (0-based)."""
    third, k = divmod(i, 64)
    base = 4 * k
    return (f"{NET}.{third}.{base + 1}", f"{NET}.{third}.{base + 2}",
            f"slb-{third}-{base + 2}")


def start_host(i: int, pubkey: str) -> tuple[str, str, str]:
    """Start light host i; return (name, address, its host key line)."""
    name = f"{PREFIX}-{i}"
    host_addr, node_addr, hif = addresses(i)
    sh("docker", "rm", "-f", name, check=False)
    sh("ip", "link", "del", hif, check=False)
    sh("docker", "run", "-d", "--name", name, "--network", "none", "--memory", "64m",
       "-e", f"AUTHKEY={pubkey}", "--entrypoint", "/bin/bash", IMAGE, "-c", BOOT)
    pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
    cif = f"slc{i}"
    sh("ip", "link", "add", hif, "type", "veth", "peer", "name", cif)
    sh("ip", "link", "set", cif, "netns", pid)
    for cmd in (["ip", "link", "set", cif, "name", "eth0"],
                ["ip", "addr", "add", f"{node_addr}/30", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"]):
        sh("nsenter", "-t", pid, "-n", *cmd)
    sh("ip", "addr", "add", f"{host_addr}/30", "dev", hif)
    sh("ip", "link", "set", hif, "up")
    for _ in range(100):
        res = sh("docker", "exec", name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub", check=False)
        if res.returncode == 0 and res.stdout.strip():
            key = " ".join(res.stdout.split()[:2])
            return name, node_addr, f"{node_addr} {key}"
        time.sleep(0.2)
    raise RuntimeError(f"{name}: no host key")


def stop_host(i: int) -> None:
    sh("docker", "rm", "-f", f"{PREFIX}-{i}", check=False)
    sh("ip", "link", "del", addresses(i)[2], check=False)


@contextmanager
def light_hosts(n: int, work: Path, pubkey: str) -> Iterator[Path]:
    """N light hosts and their inventory folder (group `bench`); removed on exit."""
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            hosts = list(pool.map(lambda i: start_host(i, pubkey), range(n)))
        inv = work / f"inv-{n}"
        shutil.rmtree(inv, ignore_errors=True)
        (inv / "group_vars").mkdir(parents=True)
        shutil.copytree(GROUP_VARS, inv / "group_vars" / "bench")
        known = inv / "known_hosts"
        known.write_text("".join(f"{line}\n" for _, _, line in hosts))
        entries = {name: {"ansible_host": addr, "ansible_user": "root", "ansible_port": 22}
                   for name, addr, _ in hosts}
        doc = {"all": {"children": {"bench": {"hosts": entries, "vars": {
            "ansible_ssh_private_key_file": str(work / "id_ed25519"),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": (f"-o UserKnownHostsFile={known} "
                                        "-o StrictHostKeyChecking=yes")}}}}}
        (inv / "hosts.yml").write_text(json.dumps(doc, indent=1))
        yield inv
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stop_host, range(n)))


def measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, controller CPU s of the command and its waited-for children, exit code)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    rc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, check=False).returncode
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, rc


def best(argv: list[str], env: dict[str, str], repeat: int) -> tuple[float, float, int]:
    runs = [measured(argv, env) for _ in range(repeat)]
    return min(runs, key=lambda r: r[0])


def reached_nodes(work: Path, label: str) -> str:
    """How many nodes the verify play's report says answered (ping: not known here)."""
    name = ("verify-mitogen.json" if "mitogen" in label
            else "verify-fast.json" if "fast" in label else "verify.json")
    path = work / name
    if "ping" in label or not path.is_file():
        return "-"
    nodes = json.loads(path.read_text()).get("nodes") or []
    return f"{sum(1 for x in nodes if x.get('reachable'))}/{len(nodes)}"


def extrapolate(rows: list[dict[str, Any]], label: str) -> tuple[float, str] | None:
    """Controller CPU seconds for 1,000 nodes: the marginal CPU per node between the two
    largest N (fixed start-up cost removed) added to the largest N's CPU; with one N, that
    N's CPU per node x 1,000."""
    pts = sorted((int(r["n"]), float(r["cpu_s"])) for r in rows if r["path"] == label)
    if not pts:
        return None
    if len(pts) == 1:
        n, cpu = pts[0]
        return 1000 * cpu / n, f"{1000 * cpu / n:.0f} ms/node at N = {n}, x 1,000"
    (na, ca), (nb, cb) = pts[-2], pts[-1]
    slope = max(cb - ca, 0.0) / (nb - na)
    return (cb + slope * (1000 - nb),
            f"{cb:.1f} s at N = {nb} + {1000 * slope:.1f} ms per further node "
            f"(the slope from N = {na} to {nb})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mitogen", type=Path, default=None,
                        help="a folder holding ansible_mitogen (pip install --target DIR mitogen)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of OUT/verify_scale.json for other sizes (a long "
                             "run split in parts)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="stacklock-bench-"))
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / "id_ed25519"))
    pubkey = (work / "id_ed25519.pub").read_text().strip()
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), NO_COLOR="1",
               ANSIBLE_CONTROL_PATH_DIR=str(work / "cp"))
    paths: dict[str, tuple[list[str], dict[str, str]]] = {}
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            with light_hosts(n, work, pubkey) as inv:
                report = str(work / "verify.json")
                paths = {
                    "ansible -m ping": ([str(BIN / "ansible"), "all", "-i", str(inv / "hosts.yml"),
                                         "-m", "ping"], env),
                    "verify play": ([str(BIN / "ansible-playbook"), "-i", str(inv / "hosts.yml"),
                                     "ansible/playbooks/verify.yml",
                                     "-e", f"stacklock_report_path={report}",
                                     "-e", "stacklock_verify_fail=false"], env),
                }
                fast = ("from pathlib import Path; from stacklock.flows import fastverify; "
                        f"fastverify.collect([Path({str(inv)!r})], ['bench'], "
                        f"report_path=Path({str(work / 'verify-fast.json')!r}), quiet=True)")
                paths["verify --fast"] = ([str(BIN / "python"), "-c", fast], env)
                if args.mitogen:
                    play = work / "verify-mitogen.yml"
                    play.write_text((ROOT / "ansible/playbooks/verify.yml").read_text().replace(
                        "strategy: linear", "strategy: mitogen_linear"))
                    menv = dict(env, PYTHONPATH=str(args.mitogen), ANSIBLE_STRATEGY_PLUGINS=str(
                        args.mitogen / "ansible_mitogen" / "plugins" / "strategy"),
                        ANSIBLE_LIBRARY=str(ROOT / "ansible/library"),
                        ANSIBLE_ACTION_PLUGINS=str(ROOT / "ansible/action_plugins"))
                    paths["verify play, mitogen"] = (
                        [str(BIN / "ansible-playbook"), "-i", str(inv / "hosts.yml"), str(play),
                         "-e", f"stacklock_report_path={work / 'verify-mitogen.json'}",
                         "-e", "stacklock_verify_fail=false"], menv)
                for label, (argv, penv) in paths.items():
                    for stale in work.glob("verify*.json"):
                        stale.unlink()
                    wall, cpu, rc = best(argv, penv, args.repeat)
                    reached = reached_nodes(work, label)
                    rows.append({"n": n, "path": label, "wall_s": round(wall, 2),
                                 "cpu_s": round(cpu, 2), "cpu_ms_per_node": round(1000 * cpu / n, 1),
                                 "rc": rc, "reached": reached})
                    print(f"N={n:>4}  {label:<22} {wall:7.2f} s wall  {cpu:7.2f} s CPU "
                          f"({1000 * cpu / n:6.1f} ms/node)  rc {rc}  reached {reached}",
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / "verify_scale.json"
    if args.append and earlier.is_file():
        rows = [r for r in json.loads(earlier.read_text()) if r["n"] not in sizes] + rows
        rows.sort(key=lambda r: (int(r["n"]), str(r["path"])))
        sizes = sorted({int(r["n"]) for r in rows})
        paths = {str(r["path"]): ([], env) for r in rows} | paths
    machine = (f"{platform.node()}: {os.cpu_count()} CPU cores, "
               f"{platform.processor() or platform.machine()}, Linux {platform.release()}")
    lines = [f"Measured on {machine} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}), "
             f"best of {args.repeat}.", "",
             "| nodes | path | wall (s) | controller CPU (s) | CPU per node (ms) | exit | "
             "nodes reached |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['n']} | {r['path']} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['cpu_ms_per_node']} | {r['rc']} | {r['reached']} |" for r in rows]
    lines += ["", "Extrapolated to 1,000 nodes (controller CPU grows linearly with the nodes; "
              "on C cores the wall time is at least CPU / C):", ""]
    cores = os.cpu_count() or 1
    for label in paths:
        est = extrapolate(rows, label)
        if est:
            lines.append(f"- {label}: {est[0]:.0f} s of controller CPU ({est[1]}), so at least "
                         f"{est[0] / cores:.0f} s wall on {cores} cores")
    table = "\n".join(lines) + "\n"
    (args.out / "verify_scale.md").write_text(table)
    (args.out / "verify_scale.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n" + table)
    try:
        importlib.import_module("matplotlib").use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib is not importable: no plot (pip install matplotlib)", file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in paths:
        pts = [(r["n"], r["wall_s"]) for r in rows if r["path"] == label]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("nodes")
    ax.set_ylabel("wall time (s)")
    ax.set_title(f"verify against ansible -m ping ({os.cpu_count()} cores)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "verify_scale.png", dpi=110)
    print(f"plot: {args.out / 'verify_scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
