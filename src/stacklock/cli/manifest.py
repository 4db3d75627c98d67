"""`stacklock validate | lock | render`: the manifest, its lock, the generated files."""

from __future__ import annotations

from pathlib import Path

import click

from stacklock.cli.base import Ctx, cli, pass_ctx, require_valid, rules_problems
from stacklock.console import emit_json, info, print_problems, problem_json, step
from stacklock.core.files import atomic_write
from stacklock.errors import ExitCode, InvalidInput, Problem


@cli.command()
@click.option("--strict", is_flag=True, help="Treat warnings as errors.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--online", is_flag=True,
              help="Also ask AWS that each instance type is offered and has the expected GPU.")
@pass_ctx
def validate(c: Ctx, strict: bool, fmt: str, online: bool) -> None:
    """Check the manifest's schema and compatibility rules (exit 2 on errors)."""
    try:
        loaded = c.loaded()
        from stacklock.core.lock import model_problems

        problems = rules_problems(loaded) + model_problems(loaded)
        if online:
            from stacklock.adapters import aws

            problems += aws.check_environments(loaded.manifest)
    except InvalidInput as exc:
        if fmt == "json":
            emit_json({"schema": "stacklock.validate/v1", "ok": False,
                       "problems": [problem_json(p) for p in exc.problems]})
            raise SystemExit(int(ExitCode.INVALID)) from None
        raise
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    failed = bool(errors) or (strict and bool(warnings))
    if fmt == "json":
        emit_json({"schema": "stacklock.validate/v1", "ok": not failed,
                   "problems": [problem_json(p) for p in problems]})
    else:
        print_problems(problems)
        m = loaded.manifest
        summary = (f"{loaded.path.name}: {len(m.stacks)} stack(s), "
                   f"{len(m.environments)} environment(s), "
                   f"{len(errors)} error(s), {len(warnings)} warning(s)")
        info(("INVALID " if failed else "OK ") + summary)
    if failed:
        raise SystemExit(int(ExitCode.INVALID))


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 when the lock is stale; write nothing.")
@click.option("--offline", is_flag=True,
              help="Never call AWS or a package index: reuse the AMI ids and the Python "
                   "closures of the existing lock.")
@click.option("--apt-index", "apt_index", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A Packages file (plain or .gz) of the apt repositories that serve the "
                   "stack (repeatable): every apt set becomes the whole Depends closure of its "
                   "top packages within the component's family, exact versions from the index.")
@pass_ctx
def lock(c: Ctx, check: bool, offline: bool, apt_index: tuple[Path, ...]) -> None:
    """Resolve every pin and write <manifest>.lock (deterministic)."""
    from stacklock.core import lock as lockmod

    loaded = c.loaded()
    if check:
        status = lockmod.check_lock(loaded)
        info(status.reason)
        raise SystemExit(0 if status.current else int(ExitCode.DEVIATION))
    require_valid(loaded)
    existing = lockmod.read_lock(loaded.lock_path)
    amis = lockmod.amis_from_lock(existing, loaded.manifest)
    # an example lock's AMI ids (a local moto server's) are never reused by a real lock: it
    # resolves them again and is no example any more; --offline keeps both
    example = lockmod.example_reason(existing)
    if example and not offline:
        amis, example = {}, None
    needed = lockmod.ami_regions(loaded.manifest)
    missing = {s: [r for r in regions if r not in amis.get(s, {})] for s, regions in needed.items()}
    missing = {s: r for s, r in missing.items() if r}
    if missing and not offline:
        from stacklock.adapters import aws

        for stack_name, regions in missing.items():
            image = loaded.manifest.stacks[stack_name].ami
            assert image is not None
            step(f"resolving AMI {image.name} (owner {image.owner}) in {', '.join(regions)}")
            amis.setdefault(stack_name, {}).update(
                aws.resolve_amis(image.owner, image.name, regions))
    closures = lockmod.closures_from_lock(existing, loaded)
    todo = [n for n in sorted(loaded.manifest.stacks) if n not in closures]
    if todo and not offline:
        from stacklock.adapters import pyresolve
        from stacklock.core.credentials import load_credentials

        netrc = load_credentials(loaded.manifest).netrc_text()

        for stack_name in todo:
            stack = loaded.manifest.stacks[stack_name]
            src = lockmod.pip_sources(loaded, stack)
            where = ", ".join([src["index_url"], *src["extra_index_urls"], *src["find_links"]])
            step(f"resolving the Python closure of {stack_name} for Python "
                 f"{stack.python.version} against {where}")
            closure = pyresolve.resolve_closure(
                lockmod.pip_requirements(loaded, stack), stack.python.version,
                pyresolve.Sources(src["index_url"], tuple(src["extra_index_urls"]),
                                  tuple(src["find_links"])), netrc=netrc)
            if lockmod.torch_from_pypi(loaded, stack):
                lockmod.check_pypi_torch(stack_name, stack, closure)
            lockmod.remember_closure(lockmod.closure_inputs(loaded, stack), closure)
            closures[stack_name] = closure
            info(f"  {len(closure)} distributions, each with its sha256")
    apt_sets = lockmod.apt_sets_from_lock(existing, loaded)
    if apt_index:
        from stacklock.core import aptclosure

        where = ", ".join(str(p) for p in apt_index)
        step(f"resolving every apt set's dependency closure from {where}")
        index = aptclosure.parse_index(_read_index(p) for p in apt_index)
        apt_sets = lockmod.resolve_apt_sets(loaded, index, where)
    data = lockmod.build_lock(loaded, amis, closures, apt_sets, example)
    unresolved = lockmod.unresolved_closures(data)
    if unresolved:
        raise InvalidInput("the Python closure is not resolved; nothing written",
                           problems=unresolved)
    text = lockmod.dump_lock(data)
    old = loaded.lock_path.read_text("utf-8") if loaded.lock_path.is_file() else None
    if old == text:
        info(f"{loaded.lock_path.name} is up to date")
        return
    atomic_write(loaded.lock_path, text)
    for name, stack in sorted(data["stacks"].items()):
        info(f"locked stack {name}: {stack['fingerprint']}")
    info(f"wrote {loaded.lock_path.name}")


def _read_index(path: Path) -> str:
    """A Packages file's text; a file that is not one is bad input naming it."""
    import gzip

    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, gzip.BadGzipFile, EOFError) as exc:
        raise InvalidInput(f"--apt-index {path}: cannot read it ({exc})", problems=[Problem(
            "--apt-index", f"{path} is not a readable Packages file",
            "give the Packages or Packages.gz file of the repository (dists/SUITE/COMPONENT/"
            "binary-amd64/Packages.gz)")]) from None
    if "Package:" not in text:
        raise InvalidInput(f"--apt-index {path}: no package stanza in it", problems=[Problem(
            "--apt-index", f"{path} holds no 'Package:' stanza",
            "give the repository's Packages file (dists/SUITE/COMPONENT/binary-amd64/Packages.gz)")])
    return text


@cli.command()
@click.option("--check", is_flag=True, help="Exit 1 and list stale files; write nothing.")
@pass_ctx
def render(c: Ctx, check: bool) -> None:
    """Generate Terraform roots and Ansible group_vars from the manifest and lock."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    loaded = c.loaded()
    require_valid(loaded)
    data = lockmod.load_current_lock(loaded)
    tree = rendermod.render_tree(loaded, data)
    if check:
        stale = rendermod.stale_files(loaded, tree)
        for rel in stale:
            info(f"stale: {loaded.output_root / rel}")
        if stale:
            info(f"{len(stale)} generated file(s) are stale: run `stacklock render`")
        from stacklock.flows.init import stale_vendored

        home, vendored = stale_vendored(loaded)  # the vendored modules the roots call
        for rel in vendored:
            info(f"stale: {home.path / rel}")
        if vendored:
            info(f"{len(vendored)} vendored file(s) are not this stacklock's: run `stacklock "
                 f"init --upgrade {home.path.parents[1]}`")
        if stale or vendored:
            raise SystemExit(int(ExitCode.DEVIATION))
        info(f"{len(tree)} generated file(s) are current")
        return
    changed = rendermod.write_tree(loaded, tree)
    for rel in changed:
        info(f"wrote {loaded.output_root / rel}")
    info(f"{len(tree)} file(s) rendered, {len(changed)} changed")

