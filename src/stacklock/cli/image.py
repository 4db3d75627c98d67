"""`stacklock image build`: the serving image of an environment's stack, from the lock."""

from __future__ import annotations

import os
from pathlib import Path

import click

from stacklock.cli.base import Ctx, cli, get_run, pass_ctx, targets
from stacklock.console import emit_json
from stacklock.errors import ToolFailed


@cli.group()
def image() -> None:
    """Serving images built from the lock (docs/containers.md)."""


@image.command("build")
@click.argument("env")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the OCI layout, SBOM and build record "
                   "[default: <output_dir>/.stacklock/images].")
@click.option("--base-image", default=None,
              help="The single-layer base image [default: the manifest's lab image].")
@click.option("--base-digest", default=None, metavar="sha256:HEX",
              help="Refuse a base whose layer has another diff_id (the base, pinned).")
@click.option("--load", is_flag=True, help="Also load the image into the local Docker daemon.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: the stacklock.image/v1 build record on stdout.")
@pass_ctx
def image_build(c: Ctx, env: str, out_dir: Path | None, base_image: str | None,
                base_digest: str | None, load: bool, fmt: str) -> None:
    """Build ENV's serving image reproducibly (SOURCE_DATE_EPOCH, default 0): the base's
    layer, Java and python3-venv from the mirror, the locked closure (--require-hashes), the
    config and the model archives (sha256 checked); writes its CycloneDX SBOM too (exit 0
    built, 2 invalid input, 3 could not build)."""
    from stacklock.core.lock import load_current_lock
    from stacklock.flows import image as imageflow

    target = targets(c, [env])[0]
    if os.geteuid() != 0:
        raise ToolFailed("stacklock image build needs root (it unpacks a rootfs with its owners "
                         "and runs pip in a chroot of it)")
    loaded = c.loaded()
    lock = load_current_lock(loaded)
    where = out_dir or loaded.output_root / ".stacklock" / "images"
    record = imageflow.build(loaded, lock, target.name, where, base_image=base_image,
                             base_digest=base_digest, load=load)
    if fmt == "json":
        emit_json(record.as_dict())


@image.command("push")
@click.argument("env")
@click.option("--registry", default=None, metavar="URL",
              help="The registry: the lab's http://HOST:PORT (scripts/lab-registry.sh start "
                   "ADDR PORT DIR), required for a lab or static environment; an aws "
                   "environment's ECR registry [default there: the host of its Terraform "
                   "output ecr_repository_url].")
@click.option("--repository", default=None,
              help="[default: <project>/serving; aws: <project>/<env>/serving, or the "
                   "repository of ecr_repository_url without --registry]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where `image build` wrote the image [default: <output_dir>/.stacklock/images].")
@pass_ctx
def image_push(c: Ctx, env: str, registry: str | None, repository: str | None,
               out_dir: Path | None) -> None:
    """Push ENV's built image to a registry and print what nodes pull: REGISTRY/REPO@DIGEST
    (the manifest read back by digest). For a stack with serving.runtime: container, the image
    must be built from the current lock, and the push records it in the lock
    (stacks.STACK.image: registry, repository, digests, user; stacks.STACK.image.pushed.ENV:
    where ENV pulls that digest, its own ECR repository on aws), which `render` reads. An aws
    environment pushes to its ECR repository, read from its Terraform outputs unless
    --registry is given (exit 0, 2 nothing built or built from another lock, no --registry
    for a lab or static environment, 3 the registry failed)."""
    from stacklock.flows import image as imageflow

    target = targets(c, [env])[0]
    loaded = c.loaded()
    where = out_dir or loaded.output_root / ".stacklock" / "images"
    registry, repository = imageflow.push_target(get_run(c), target, registry, repository)
    repo, digest, _ = imageflow.push_and_record(loaded, target.name, where, registry, repository)
    click.echo(f"{registry.split('://', 1)[-1].rstrip('/')}/{repo}@{digest}")
