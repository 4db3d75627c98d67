"""`stacklock verify | sbom | diff`: what the nodes run, compared."""

from __future__ import annotations

from pathlib import Path

import click

from stacklock.cli.base import Ctx, cli, get_run, lock_timeout_option, pass_ctx, targets


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a JUnit XML report here.")
@click.option("--prometheus", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the parity metrics here as a Prometheus textfile "
                   "(docs/observability.md).")
@click.option("--deep", is_flag=True,
              help="Hash every model archive again (no digest reused from the nodes' cache).")
@click.option("--fast", is_flag=True,
              help="Collect over one direct SSH connection per node (asyncssh) instead of the "
                   "verify play: the same facts module, inventories, host keys and comparison.")
@click.option("--all", "show_all", is_flag=True,
              help="Show every check in the table, the per-package ones (package, hold, pip, "
                   "apt_blacklist) too; by default a footer counts them.")
@lock_timeout_option
@pass_ctx
def verify(c: Ctx, envs: tuple[str, ...], fmt: str, junit: Path | None,
           prometheus: Path | None, deep: bool, fast: bool, show_all: bool) -> None:
    """Collect the real stack from every node and compare (exit 0 match, 1 deviation, 3 unreachable)."""
    from stacklock.flows import verify as flow

    code = flow.verify(get_run(c), targets(c, envs), fmt=fmt, junit=junit, deep=deep,
                       fast=fast, show_all=show_all, prometheus=prometheus)
    raise SystemExit(int(code))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the documents [default: <output_dir>/.stacklock/sbom].")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True,
              help="The summary of what was written: json: a stacklock.sbom/v1 envelope on "
                   "stdout (the documents are CycloneDX 1.6 JSON either way).")
@lock_timeout_option
@pass_ctx
def sbom(c: Ctx, envs: tuple[str, ...], out_dir: Path | None, fmt: str) -> None:
    """Write a CycloneDX 1.6 SBOM per node and per environment (exit 0, or 3: a node could
    not be looked at)."""
    from stacklock.flows.sbom import run_sbom

    where = out_dir or c.loaded().output_root / ".stacklock" / "sbom"
    raise SystemExit(int(run_sbom(get_run(c), targets(c, envs), where, fmt=fmt)))


@cli.command()
@click.argument("envs", nargs=-1)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--fail-on-drift", is_flag=True,
              help="Exit 1 when anything differs (default: exit 0 with the report).")
@lock_timeout_option
@pass_ctx
def diff(c: Ctx, envs: tuple[str, ...], fmt: str, fail_on_drift: bool) -> None:
    """Compare environments (and the nodes of each) on every OS package, every Python
    distribution and the pinned stack; no ENV: all environments."""
    from stacklock.flows.diff import run_diff

    code = run_diff(get_run(c), targets(c, envs), fmt=fmt, fail_on_drift=fail_on_drift)
    raise SystemExit(code)

