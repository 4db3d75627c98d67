"""One command's run, and the environments it acts on, each resolved once.

`Run` is what every flow of one command shares: the manifest, the run folder for logs and
reports, the environments' run locks, the mirror credentials, the lab resources started for
this command. `Target` is one environment resolved once per command: its name, provider and
spec, its stack, its Terraform root, its inventory, hosts.yml and pinned known_hosts. The CLI
turns names into targets (`Run.targets`) and hands them to one flow; flows receive targets and
never turn a name into paths again.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stacklock.console import info
from stacklock.core import hostkeys, runlock
from stacklock.core import lock as lockmod
from stacklock.core import render as rendermod
from stacklock.core.files import ensure_dir
from stacklock.core.manifest import LabEnvironment, LoadedManifest
from stacklock.core.schema import Environment
from stacklock.errors import InvalidInput, Problem, ToolFailed

#: run folders kept under .stacklock/runs: the newest KEEP_RUNS, none older than KEEP_RUN_DAYS
#: ($STACKLOCK_KEEP_RUNS, $STACKLOCK_KEEP_RUN_DAYS; 0 days: no age limit)
KEEP_RUNS = 50
KEEP_RUN_DAYS = 30


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise InvalidInput(f"{name}={raw!r} is not a whole number", problems=[Problem(
            name, "not a whole number >= 0", f"e.g. {name}={default}")])
    return int(raw)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_runs(runs: Path, *, keep: int | None = None, days: int | None = None,
               now: float | None = None) -> list[Path]:
    """Remove run folders beyond the newest `keep` or older than `days` (a folder whose
    process still runs is kept whatever its age). Returns what was removed."""
    import shutil

    keep = _env_int("STACKLOCK_KEEP_RUNS", KEEP_RUNS) if keep is None else keep
    days = _env_int("STACKLOCK_KEEP_RUN_DAYS", KEEP_RUN_DAYS) if days is None else days
    now = time.time() if now is None else now
    folders = sorted((p for p in runs.iterdir() if p.is_dir() and not p.is_symlink()),
                     key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    removed = []
    for n, path in enumerate(folders):
        too_many = n >= keep
        too_old = days > 0 and now - path.stat().st_mtime > days * 86400
        if not (too_many or too_old):
            continue
        parts = path.name.split("-")
        if len(parts) >= 2 and parts[1].isdigit() and _alive(int(parts[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def new_run_dir(root: Path) -> Path:
    """A folder of this run's own under `.stacklock/runs` (0700): the time, the pid and a
    random suffix, created exclusively, so two runs in the same second never share one.
    Older run folders are pruned first (`prune_runs`)."""
    runs = ensure_dir(root / ".stacklock" / "runs")
    prune_runs(runs)
    for _ in range(10):
        path = runs / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)
        return path
    raise ToolFailed(f"could not create a run folder under {runs}")


@dataclass(frozen=True)
class Target:
    """One environment of the manifest, resolved once per command."""

    name: str
    provider: str
    spec: Environment
    stack: str
    #: the generated Terraform root (terraform/environments/NAME)
    env_dir: Path
    #: the generated Ansible inventory (inventories/NAME)
    inventory_dir: Path
    #: the SSH host keys every connection to its nodes is checked against
    known_hosts: Path

    @property
    def hosts_file(self) -> Path:
        return self.inventory_dir / "hosts.yml"

    @property
    def gpu(self) -> bool:
        return bool(getattr(self.spec, "gpu", False))

    def inventory(self) -> Path:
        """The inventory folder; exit 2 when the environment was never provisioned."""
        if not self.hosts_file.is_file():
            raise InvalidInput(
                f"{self.hosts_file} does not exist",
                problems=[Problem(f"environments.{self.name}", "not provisioned yet",
                                  f"run: stacklock apply {self.name}")],
            )
        return self.inventory_dir

    def hosts(self) -> list[str]:
        """The host names of hosts.yml (as Ansible names them), sorted."""
        doc = yaml.safe_load(self.inventory().joinpath("hosts.yml").read_text("utf-8")) or {}
        group = ((doc.get("all") or {}).get("children") or {}).get(self.name) or {}
        return sorted((group.get("hosts") or {}).keys())


def names_of(targets: Iterable[Target]) -> list[str]:
    return [t.name for t in targets]


def inventories(targets: Iterable[Target]) -> list[Path]:
    """The inventory folders of `targets` (exit 2 naming the first never provisioned)."""
    return [t.inventory() for t in targets]


class Run:
    """What the flows of one command share; closed when the command ends, however it ends
    (run locks released, the lab's mirror server stopped unless another run still uses it)."""

    def __init__(self, loaded: LoadedManifest, *, verbose: bool = False,
                 lock_timeout: float = runlock.DEFAULT_TIMEOUT,
                 command: str | None = None) -> None:
        self.loaded = loaded
        self.verbose = verbose
        self.root = loaded.output_root
        self._run_dir: Path | None = None
        self._resources = ExitStack()
        #: what the lab has been made ready for in this run: "", "nodes", or "nodes+mirror"
        self._lab_ready = ""
        self.locks = runlock.RunLocks(
            self.root, timeout=lock_timeout, on_wait=_waiting,
            command=command or shlex.join(["stacklock", *sys.argv[1:]]))
        self._resources.callback(self.locks.release)
        #: every environment this run has locked (kept after the release, for messages)
        self.held_envs: list[str] = []
        self._credentials: Any = None
        self._lock: dict[str, Any] | None = None

    # ------------------------------------------------------------------ environments

    def target(self, name: str) -> Target:
        envs = self.loaded.manifest.environments
        if name not in envs:
            from stacklock.core.suggest import unknown_environment

            raise unknown_environment(name, envs)
        spec = envs[name]
        return Target(
            name=name, provider=spec.provider, spec=spec, stack=spec.stack,
            env_dir=self.root / "terraform" / "environments" / name,
            inventory_dir=self.root / "inventories" / name,
            known_hosts=hostkeys.known_hosts_path(self.root, name))

    def targets(self, names: Sequence[str]) -> list[Target]:
        return [self.target(n) for n in names]

    def reload(self, loaded: LoadedManifest) -> None:
        """The manifest changed during the run (promote, rollback): flows after it see the
        new one (targets resolved after this call carry the new stack)."""
        self.loaded = loaded
        self._lock = None

    # ------------------------------------------------------------------ the run

    @property
    def run_dir(self) -> Path:
        """This run's folder for logs and reports, created on first use."""
        if self._run_dir is None:
            self._run_dir = new_run_dir(self.root)
        return self._run_dir

    def log_file(self, name: str) -> Path:
        return self.run_dir / name

    def hold(self, targets: Iterable[Target]) -> None:
        """Hold the run lock of every target until this run ends (sorted order; a second run
        waits up to the lock timeout, then fails with exit 3)."""
        names = names_of(targets)
        self.locks.acquire(names)
        self.held_envs = sorted(set(self.held_envs) | set(names))

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._resources.close()

    def credentials(self) -> Any:
        """The mirror and index credentials of this run (environment, secrets file; see
        stacklock.core.credentials), read once; exit 2 when they are unusable."""
        if self._credentials is None:
            from stacklock.core.credentials import load_credentials

            self._credentials = load_credentials(self.loaded.manifest)
        return self._credentials

    def ensure_current(self) -> dict[str, Any]:
        """The lock, which must be current, with the generated files in step with it (read
        once per run)."""
        if self._lock is None:
            lock = lockmod.load_current_lock(self.loaded)
            tree = rendermod.render_tree(self.loaded, lock)
            stale = rendermod.stale_files(self.loaded, tree)
            if stale:
                raise InvalidInput(
                    f"{len(stale)} generated file(s) are stale",
                    problems=[Problem(s, "stale generated file", "run: stacklock render")
                              for s in stale],
                )
            self._lock = lock
        return self._lock

    def prepare(self, targets: Iterable[Target], *, need_mirror: bool = False) -> None:
        """Lab targets: the daemon, the image and (`need_mirror`) the package mirror, started
        once for this run and stopped when it ends."""
        wanted = "nodes+mirror" if need_mirror else "nodes"
        if self._lab_ready == "nodes+mirror" or self._lab_ready == wanted:
            return
        if any(isinstance(t.spec, LabEnvironment) for t in targets):
            from stacklock.flows import lab

            lab.prepare(self.loaded, stack=self._resources, need_mirror=need_mirror)
            self._lab_ready = wanted

    def terraform(self, target: Target) -> Any:
        """The Terraform of `target`'s generated root (exit 2 when it was never rendered)."""
        from stacklock.adapters.terraform import Terraform

        if not (target.env_dir / "main.tf").is_file():
            raise InvalidInput(
                f"{target.env_dir}/main.tf does not exist",
                problems=[Problem(f"environments.{target.name}", "not rendered yet",
                                  "run: stacklock render")],
            )
        return Terraform(target.env_dir, log_file=self.log_file(f"terraform-{target.name}.log"),
                         lock_timeout=self.locks.timeout)


def _waiting(env: str, holder: runlock.Holder | None) -> None:
    who = holder.describe() if holder else "a run that is just starting"
    info(f"  {env}: waiting for another stacklock run to finish: {who}")
