"""`stacklock lab image | mirror`: the local lab's node image and package mirror."""

from __future__ import annotations

from pathlib import Path

import click

from stacklock.cli.base import Ctx, cli, pass_ctx
from stacklock.console import info, step


@cli.group()
def lab() -> None:
    """The local lab: its node image and its air-gapped package mirror."""


@lab.command("image")
@click.option("--force", is_flag=True, help="Rebuild even when the image exists.")
@pass_ctx
def lab_image(c: Ctx, force: bool) -> None:
    """Build (or rebuild) the Debian 12 systemd image of lab nodes."""
    from stacklock.adapters import docker

    image = c.loaded().manifest.lab.image if Path(c.manifest_path).is_file() else docker.LAB_IMAGE
    docker.ensure_daemon()
    step(f"building {image} (debootstrap + docker import)")
    built = docker.build_image(image, force=force)
    info(f"{image}: {'built' if built else 'already present (use --force to rebuild)'}")


@lab.command("mirror")
@pass_ctx
def lab_mirror(c: Ctx) -> None:
    """Download and index the lab's local apt and pip mirror again (downloads are cached)."""
    from stacklock.adapters import mirror

    step("building the local mirror (real Debian packages, test toolkit packages, wheels)")
    info(f"mirror ready in {mirror.build_mirror(force=True)}")

