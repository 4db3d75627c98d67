"""Benchmark: verify, verify --fast and verify --deep on a provisioned lab (figures, no assertions).

Runs each path --repeat times against every environment of the manifest (the demo lab:
`make demo`, three single-node environments) and prints, per path, the best and the median
wall time, the exit code, and the checks the report holds per node (every class: versions,
pins, holds, the venv's closure, files, runtime). `--deep` re-hashes every file (no digest
cache) and runs site.yml in check mode on top.

    .venv/bin/python benchmarks/verify_lab.py [-m examples/lab.yaml] [--repeat 3]

Needs the lab running (`make demo`). Prints a Markdown table; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(manifest: Path, extra: list[str]) -> tuple[float, int, dict[str, object]]:
    env = dict(os.environ, NO_COLOR="1")
    started = time.monotonic()
    res = subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), "verify", *extra,
                          "--format", "json"], cwd=ROOT, capture_output=True, text=True,
                         env=env, check=False)
    wall = time.monotonic() - started
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        sys.exit(f"verify {' '.join(extra)} printed no JSON (exit {res.returncode}):\n"
                 f"{res.stderr[-2000:]}")
    return wall, res.returncode, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--manifest", type=Path, default=ROOT / "examples/lab.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for label, extra in (("verify", []), ("verify --fast", ["--fast"]),
                         ("verify --deep", ["--deep"])):
        walls, codes, per_node = [], set(), Counter[str]()
        for _ in range(args.repeat):
            wall, code, report = run(args.manifest, extra)
            walls.append(wall)
            codes.add(code)
            checks = report.get("checks") or []
            assert isinstance(checks, list)
            per_node = Counter(str(c.get("node")) for c in checks if c.get("node"))
            print(f"  {label}: {wall:.1f} s, exit {code}", file=sys.stderr)
        nodes = len(per_node)
        rows.append((label, min(walls), statistics.median(walls), sorted(codes), nodes,
                     min(per_node.values(), default=0), max(per_node.values(), default=0)))
    print("| path | best (s) | median (s) | exit | nodes | checks per node |\n"
          "|---|---:|---:|---|---:|---|")
    for label, best, median, exits, nodes, lo, hi in rows:
        per = f"{lo}" if lo == hi else f"{lo}-{hi}"
        print(f"| `{label}` | {best:.1f} | {median:.1f} | {', '.join(map(str, exits))} | "
              f"{nodes} | {per} |")


if __name__ == "__main__":
    main()
