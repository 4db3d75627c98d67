"""`stacklock sbom`: one CycloneDX 1.6 JSON document per node and one per environment.

The inventory play gathers every node's facts with `inventory: true`; `stacklock.core.sbom`
builds the documents (pure); this flow writes them to `OUT/ENV/NODE.cdx.json` and
`OUT/ENV.cdx.json` and prints what it wrote: a table, or with `--format json` the
`stacklock.sbom/v1` summary (`SbomSummary`). A node that could not be looked at gets no
document (nor does its environment): exit 3 naming it.

How a node serves comes from the lock of its environment's stack (`serving.runtime`): in
container mode its document holds the serving image by digest and the closure read inside the
running container (stacklock.core.sbom), and facts without the `container` section are a node
that could not be looked at, never a host-mode document.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from stacklock.console import emit_json, err, info, out
from stacklock.core import sbom as sbommod
from stacklock.core.files import atomic_write
from stacklock.core.parity import Unreachable
from stacklock.errors import ExitCode, InvalidInput, Problem
from stacklock.flows.collect import collect_inventory
from stacklock.flows.run import Run, Target


def source_date() -> datetime:
    """The documents' timestamp: `SOURCE_DATE_EPOCH` (reproducible builds), else 1970-01-01."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return sbommod.EPOCH
    if not raw.isdigit():
        raise InvalidInput(f"SOURCE_DATE_EPOCH={raw!r} is not a number of seconds",
                           problems=[Problem("SOURCE_DATE_EPOCH", "not seconds since 1970",
                                             "e.g. 1767225600, or unset it")])
    return datetime.fromtimestamp(int(raw), tz=UTC)


def write_sboms(facts_by_env: dict[str, dict[str, Any]], lock: dict[str, Any],
                stacks: dict[str, str], project: str, out_dir: Path,
                timestamp: datetime) -> tuple[list[tuple[Path, dict[str, int]]], list[str]]:
    """Write the documents; return (path, component counts) per file and the problems."""
    written: list[tuple[Path, dict[str, int]]] = []
    problems: list[str] = []
    for env, nodes in facts_by_env.items():
        locked = lock["stacks"][stacks[env]]
        runtime = sbommod.locked_runtime(locked)
        good: dict[str, dict[str, Any]] = {}
        for node, facts in sorted(nodes.items()):
            if isinstance(facts, Unreachable) or not isinstance(facts, dict):
                reason = facts.error if isinstance(facts, Unreachable) else "no facts"
                problems.append(f"{env}/{node}: could not look: {reason}")
                continue
            try:
                bom = sbommod.node_bom(facts, locked, project=project, environment=env,
                                       node=node, stack=stacks[env], timestamp=timestamp,
                                       runtime=runtime)
            except sbommod.IncompleteFacts as exc:
                problems.append(f"{env}/{node}: could not look: {exc}")
                continue
            text = sbommod.to_json(bom)
            path = atomic_write(out_dir / env / f"{node}.cdx.json", text)
            written.append((path, sbommod.component_counts(text)))
            good[node] = facts
        if not nodes:
            problems.append(f"{env}: no nodes in its inventory")
        elif len(good) == len(nodes):
            text = sbommod.to_json(sbommod.environment_bom(
                good, locked, project=project, environment=env, stack=stacks[env],
                timestamp=timestamp, runtime=runtime))
            written.append((atomic_write(out_dir / f"{env}.cdx.json", text),
                            sbommod.component_counts(text)))
        else:
            problems.append(f"{env}: no environment document (a node could not be looked at)")
    return written, problems


_COLUMNS = ("library", "device-driver", "device", "machine-learning-model")

SBOM_SCHEMA = "stacklock.sbom/v1"


@dataclass(frozen=True)
class SbomDocument:
    """One document written: `path` relative to the output folder; `node` None for an
    environment's document; `components`: component type -> count (nested ones included)."""

    path: str
    environment: str
    node: str | None
    components: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "environment": self.environment, "node": self.node,
                "components": dict(sorted(self.components.items())),
                "total": sum(self.components.values())}


@dataclass(frozen=True)
class SbomSummary:
    """`stacklock sbom --format json`: what was written where (the documents themselves are
    CycloneDX); keys pinned by tests/unit/flows/test_sbom_summary.py."""

    out_dir: str
    documents: tuple[SbomDocument, ...]
    problems: tuple[str, ...]
    exit_code: int

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SBOM_SCHEMA, "spec_version": sbommod.SPEC_VERSION,
                "out_dir": self.out_dir, "documents": [d.as_dict() for d in self.documents],
                "problems": list(self.problems), "exit_code": self.exit_code}


def summary(written: list[tuple[Path, dict[str, int]]], problems: list[str], out_dir: Path,
            code: ExitCode) -> SbomSummary:
    docs = []
    for path, counts in written:
        rel = path.relative_to(out_dir)  # ENV/NODE.cdx.json or ENV.cdx.json
        name = rel.name.removesuffix(".cdx.json")
        env, node = (rel.parent.as_posix(), name) if len(rel.parts) > 1 else (name, None)
        docs.append(SbomDocument(rel.as_posix(), env, node, dict(counts)))
    return SbomSummary(str(out_dir), tuple(docs), tuple(problems), int(code))


def print_summary(written: list[tuple[Path, dict[str, int]]], problems: list[str],
                  out_dir: Path) -> None:
    table = Table(title=f"CycloneDX {sbommod.SPEC_VERSION} SBOMs in {out_dir}")
    table.add_column("document")
    for col in (*_COLUMNS, "other", "total"):
        table.add_column(col, justify="right")
    for path, counts in written:
        other = sum(v for k, v in counts.items() if k not in _COLUMNS)
        table.add_row(str(path.relative_to(out_dir)), *(str(counts.get(c, 0)) for c in _COLUMNS),
                      str(other), str(sum(counts.values())))
    out.print(table)
    for line in problems:
        err.print(f"[bold red]{line}[/]", markup=True, highlight=False)
    info(f"{len(written)} document(s) written to {out_dir}"
         + (f"; {len(problems)} problem(s): run `stacklock verify` for the cause" if problems
            else ""))


def run_sbom(run: Run, targets: Sequence[Target], out_dir: Path, *,
             fmt: str = "table") -> ExitCode:
    """Write the documents; print their summary: a table, or with `fmt` json the
    `stacklock.sbom/v1` envelope on stdout (and no progress)."""
    run.hold(targets)
    lock = run.ensure_current()
    timestamp = source_date()
    facts = collect_inventory(run, targets, quiet=fmt == "json")
    manifest = run.loaded.manifest
    stacks = {t.name: t.stack for t in targets}
    written, problems = write_sboms(facts, lock, stacks, manifest.project, out_dir, timestamp)
    code = ExitCode.FAILED if problems else ExitCode.OK
    if fmt == "json":
        emit_json(summary(written, problems, out_dir, code).as_dict())
    else:
        print_summary(written, problems, out_dir)
    return code
