"""Benchmark: wall time of `stacklock verify` against `ansible -m ping` on N lab nodes.

For N in 3, 10, 30 (override with --sizes), this creates one lab environment of N bare nodes
(Debian 12 + systemd + sshd, no stack installed: "lighter nodes"; verify then reports
deviations, which is fine here: it does all of its work), times `ansible all -m ping` and
`stacklock verify` on the same nodes (best of --repeat runs each), prints the figures and
their ratio, and destroys the nodes. It prints figures; it asserts nothing.

    .venv/bin/python benchmarks/verify_scale.py [--sizes 3,10,30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

MANIFEST = """\
version: 1
project: slbench
output_dir: out
package_sources:
  apt:
    - {{name: none, uri: "http://10.215.0.1:8700/apt", suite: ./, trusted: true}}
stacks:
  bench-stack:
    os: {{distribution: debian, release: "12"}}
    nvidia_driver: {{version: 535.309.01, kernel_module: proprietary}}
    cuda: {{version: 11.8.89, components: runtime}}
    docker: {{version: 20.10.24}}
    nvidia_container_toolkit: {{version: 1.17.8}}
    python: {{version: "3.11"}}
    torch: {{version: 2.13.0+cpu}}
    torchserve: {{version: 0.12.0}}
    java: {{version: "17"}}
environments:
  bench: {{provider: lab, stack: bench-stack, count: {n}}}
lab:
  network: 10.215.0.0/16
"""


def sh(*argv: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, text=True, capture_output=True, check=check)


def timed(argv: list[str], cwd: Path, repeat: int) -> tuple[float, int]:
    best, rc = float("inf"), 0
    for _ in range(repeat):
        start = time.monotonic()
        rc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, check=False).returncode
        best = min(best, time.monotonic() - start)
    return best, rc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="3,10,30")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="stacklock-bench-"))
    stacklock = str(BIN / "stacklock")
    rows = []
    try:
        for n in sizes:
            manifest = work / "bench.yaml"
            manifest.write_text(MANIFEST.format(n=n))
            for step in (["lock"], ["render"], ["apply", "bench"]):
                res = sh(stacklock, "-m", str(manifest), *step, check=False)
                if res.returncode != 0:
                    print(res.stderr, file=sys.stderr)
                    return 3
            inv = work / "out" / "inventories" / "bench"
            ping, ping_rc = timed([str(BIN / "ansible"), "all", "-i", str(inv), "-m", "ping"],
                                  ROOT, args.repeat)
            verify, verify_rc = timed([stacklock, "-m", str(manifest), "verify", "--format",
                                       "json"], ROOT, args.repeat)
            rows.append((n, ping, verify, ping_rc, verify_rc))
            print(f"N={n:>3}  ansible -m ping {ping:6.2f} s (rc {ping_rc})   "
                  f"stacklock verify {verify:6.2f} s (rc {verify_rc})   "
                  f"ratio {verify / ping:4.2f}", flush=True)
            sh(stacklock, "-m", str(manifest), "destroy", "bench", check=False)
    finally:
        if (work / "bench.yaml").exists():
            sh(stacklock, "-m", str(work / "bench.yaml"), "destroy", "--all", check=False)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("| nodes | ansible -m ping (s) | stacklock verify (s) | verify / ping |")
    print("|---:|---:|---:|---:|")
    for n, ping, verify, _, _ in rows:
        print(f"| {n} | {ping:.2f} | {verify:.2f} | {verify / ping:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
