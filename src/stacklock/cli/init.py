"""`stacklock init [DIR]`: a new repository for an installed stacklock; `--upgrade` refreshes
its vendored Terraform modules."""

from __future__ import annotations

from pathlib import Path

import click

from stacklock.cli.base import cli
from stacklock.console import info, step
from stacklock.errors import ExitCode


@cli.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("--provider", type=click.Choice(["lab", "static", "aws"]), default="lab",
              show_default=True, help="The shipped example the manifest starts from.")
@click.option("--project", default=None, help="The manifest's project name [default: the example's].")
@click.option("--network", default=None, metavar="10.X.0.0/16",
              help="The lab's network [default: the example's 10.213.0.0/16].")
@click.option("--environment", "environments", multiple=True, metavar="ENV",
              help="Keep only these environments of the example (repeat the option).")
@click.option("--force", is_flag=True, help="Write a new manifest over an existing one.")
@click.option("--upgrade", is_flag=True,
              help="Only vendor this stacklock's Terraform modules again (after an upgrade).")
def init(directory: Path, provider: str, project: str | None, network: str | None,
         environments: tuple[str, ...], force: bool, upgrade: bool) -> None:
    """Start a repository: manifest, model archive, .gitignore and vendor/stacklock/ (the
    Terraform modules the rendered roots call, at this stacklock's version)."""
    from stacklock.core.share import VENDOR_DIR
    from stacklock.flows import init as flow

    root = directory.resolve()
    if upgrade:
        step(f"vendor this stacklock's modules into {root / VENDOR_DIR}")
        changed = flow.upgrade(root)
        for rel in changed:
            info(f"  wrote {VENDOR_DIR / rel}")
        info(f"  {len(changed)} file(s) changed" if changed else "  already current")
        raise SystemExit(int(ExitCode.OK))
    step(f"init {root} from the {provider} example")
    result = flow.init_repo(root, provider=provider, project=project, network=network,
                            environments=list(environments) or None, force=force)
    for rel in result.written:
        info(f"  wrote {rel}")
    info(f"  vendored {len(result.vendored)} file(s) into {VENDOR_DIR}/")
    info("next, in " + str(root) + ":")
    for line in result.next_steps:
        info(f"  {line}")
    raise SystemExit(int(ExitCode.OK))
