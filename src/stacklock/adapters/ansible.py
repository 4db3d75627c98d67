"""Ansible adapter: runs the shipped playbooks with progress per host and task.

ansible-playbook runs as a child process (through the one subprocess helper's streaming
variant below); its whole output goes to a log file, and a compact progress line per task
and host goes to the terminal. The PLAY RECAP is parsed into a summary.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stacklock.adapters.proc import run_command
from stacklock.console import err
from stacklock.core.credentials import Credentials, extra_vars_args
from stacklock.core.render import repo_root
from stacklock.errors import ToolFailed

log = logging.getLogger("stacklock.ansible")

_TASK = re.compile(r"^TASK \[(?P<name>.*)\]")
_PLAY = re.compile(r"^PLAY \[(?P<name>.*)\]")
_HOST = re.compile(r"^(?P<status>ok|changed|fatal|failed|skipping|unreachable): \[(?P<host>[^\]]+)\]")
_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)"
)


def ansible_env() -> dict[str, str]:
    """Settings that make the shipped playbooks work from any working directory."""
    home = repo_root()
    return {
        "ANSIBLE_CONFIG": str(home / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(home / "ansible" / "roles"),
        "ANSIBLE_LIBRARY": str(home / "ansible" / "library"),
        "ANSIBLE_ACTION_PLUGINS": str(home / "ansible" / "action_plugins"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # every SSH connection is checked against the environment's known_hosts
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "PYTHONUNBUFFERED": "1",
    }



def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def run_playbook(
    playbook: str,
    inventories: Sequence[Path],
    *,
    log_file: Path,
    extra_vars: dict[str, Any] | None = None,
    extra_args: Sequence[str] = (),
    ok_codes: Sequence[int] = (0,),
    quiet: bool = False,
    credentials: Credentials | None = None,
) -> dict[str, dict[str, int]]:
    """Run ansible/playbooks/PLAYBOOK; return the recap {host: {ok, changed, ...}}.

    `credentials` (mirror and index logins) reach the play as an extra-vars file, 0600 in a
    private temporary folder, deleted when the play ends: never on the command line or in
    the log. Raises ToolFailed (exit 3) when the return code is not in `ok_codes`.
    """
    path = repo_root() / "ansible" / "playbooks" / playbook
    argv = [_bin("ansible-playbook"), str(path)]
    for inv in inventories:
        argv += ["-i", str(inv)]
    if extra_vars:
        argv += ["-e", json.dumps(extra_vars, sort_keys=True)]
    argv += list(extra_args)
    with extra_vars_args(credentials) as secret_args:
        rc, recap, failures = stream([*argv, *secret_args], log_file=log_file, quiet=quiet)
    if rc not in ok_codes:
        detail = "\n".join(f[:400] for f in failures[-10:])
        hints = host_key_hints(failures, inventories)
        if hints:
            detail += "\n" + "\n".join(hints)
        else:
            detail += ("\nnext: fix what the lines above name (the full log has every task), "
                       "then run the same command again: the roles converge what is left")
        raise ToolFailed(
            f"ansible-playbook {playbook} failed (exit {rc}); full log: {log_file}\n{detail}"
        )
    return recap


def host_key_hints(failures: Sequence[str], inventories: Sequence[Path]) -> list[str]:
    """For each host whose failure is a host key check (unknown or changed key): the hint
    naming the host, its address and how to trust it again."""
    import yaml

    from stacklock.core.hostkeys import is_host_key_failure, untrusted_hint

    failed = []
    for line in failures:
        host = line.split(":", 1)[0]
        if is_host_key_failure(line) and host not in failed:
            failed.append(host)
    if not failed:
        return []
    where: dict[str, tuple[str, str, str]] = {}
    for inv in inventories:
        try:
            doc = yaml.safe_load((Path(inv) / "hosts.yml").read_text("utf-8")) or {}
            children = doc["all"]["children"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        for env, group in (children or {}).items():
            for name, hv in ((group or {}).get("hosts") or {}).items():
                hv = hv or {}
                where[name] = (env, str(hv.get("ansible_host", name)),
                               str(hv.get("ansible_port", 22)))
    hints = []
    for host in failed:
        env, address, port = where.get(host, (None, host, "22"))
        hints.append(untrusted_hint(host, address, port, env))
    return hints


def stream(
    argv: Sequence[str], *, log_file: Path, quiet: bool = False
) -> tuple[int, dict[str, dict[str, int]], list[str]]:
    """Run an Ansible command through `run_command`, logging everything, printing progress."""
    recap: dict[str, dict[str, int]] = {}
    failures: list[str] = []
    state = {"task": "", "recap": False}
    started = time.monotonic()

    def on_line(line: str) -> None:
        if line.startswith("PLAY RECAP"):
            state["recap"] = True
            return
        if state["recap"]:
            if m := _RECAP.match(line):
                recap[m["host"]] = {k: int(m[k]) for k in
                                    ("ok", "changed", "unreachable", "failed")}
            return
        if m := _PLAY.match(line):
            if not quiet:
                err.print(f"[bold]play[/] {m['name']}", markup=True, highlight=False)
        elif m := _TASK.match(line):
            state["task"] = m["name"]
        elif m := _HOST.match(line):
            status, host = m["status"], m["host"]
            if status in ("fatal", "failed", "unreachable"):
                failures.append(f"{host}: {state['task']}: "
                                f"{line[line.find(']') + 1:].strip()[:4000]}")
            if not quiet and status != "skipping":
                style = {"ok": "green", "changed": "yellow"}.get(status, "bold red")
                err.print(f"  [{style}]{status:>11}[/] {host}: {state['task']} "
                          f"({time.monotonic() - started:.0f}s)", markup=True, highlight=False)

    result = run_command(argv, env=ansible_env(), check=False, log_file=log_file,
                         on_line=on_line)
    return result.returncode, recap, failures


def summarize(recap: dict[str, dict[str, int]]) -> str:
    hosts = len(recap)
    changed = sum(r["changed"] for r in recap.values())
    failed = sum(r["failed"] + r["unreachable"] for r in recap.values())
    return f"{hosts} host(s), changed={changed}, failed={failed}"


def recap_changed(recap: dict[str, dict[str, int]]) -> int:
    return sum(r["changed"] for r in recap.values())


__all__ = ["Any", "ansible_env", "recap_changed", "run_playbook", "stream", "summarize"]
