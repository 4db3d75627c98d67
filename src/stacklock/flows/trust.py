"""`stacklock trust ENV...`: the explicit, visible first trust of the environments' host keys.

Reads each environment's `hosts.yml` (written by `stacklock apply`), fetches every host's key
(lab nodes through Docker, hosts behind a jump host through it, others with ssh-keyscan),
shows host, key type and SHA256 fingerprint, asks (unless `--yes`), and writes
`inventories/ENV/known_hosts` atomically. A key that differs from the trusted one is shown
loudly with both fingerprints and only replaced with `--replace HOST` or `--yes`; a key pinned
in the manifest (`host_key` of a static host) is never overridden here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stacklock.console import err, info, out, step
from stacklock.core import hostkeys
from stacklock.core.files import atomic_write
from stacklock.core.hostkeys import Entry, PublicKey
from stacklock.core.manifest import LabEnvironment, LoadedManifest, StaticEnvironment
from stacklock.errors import ExitCode, InvalidInput, Problem, StacklockError


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int
    user: str
    proxy_jump: str | None = None
    container: str | None = None
    ssm: bool = False

    @property
    def pattern(self) -> str:
        return hostkeys.host_pattern(self.address, self.port)


@dataclass
class Offer:
    """A key offered for a known_hosts pattern, and what it is compared with what is trusted."""

    label: str  # the inventory host name, or "jump host of NAME"
    pattern: str
    key: PublicKey
    status: str = "new"  # new | unchanged | CHANGED | pinned | PINNED-MISMATCH
    old: PublicKey | None = None


def read_hosts(inventory: Path, env: str) -> list[Host]:
    """The hosts of `inventory/hosts.yml` (as `stacklock apply` wrote it)."""
    path = inventory / "hosts.yml"
    if not path.is_file():
        raise InvalidInput(f"{path} does not exist", problems=[Problem(
            f"environments.{env}", "not applied yet", f"run: stacklock apply {env}")])
    try:
        doc = yaml.safe_load(path.read_text("utf-8")) or {}
        group = doc["all"]["children"][env]
        raw: dict[str, Any] = group.get("hosts") or {}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"{path}: not an inventory of environment {env} ({exc})", problems=[
            Problem(str(path), "unreadable inventory", f"run: stacklock apply {env}")]) from None
    hosts = []
    for name in sorted(raw):
        hv = raw[name] or {}
        hosts.append(Host(
            name=name,
            address=str(hv.get("ansible_host", name)),
            port=int(hv.get("ansible_port", 22)),
            user=str(hv.get("ansible_user", "root")),
            proxy_jump=hv.get("stacklock_proxy_jump"),
            container=hv.get("stacklock_container"),
            ssm=hv.get("ansible_connection") == "community.aws.aws_ssm",
        ))
    return hosts


def pinned_keys(loaded: LoadedManifest, env: str) -> dict[str, tuple[str, PublicKey]]:
    """pattern -> (host name, key) for the static hosts whose key the manifest pins."""
    spec = loaded.manifest.environments[env]
    pins: dict[str, tuple[str, PublicKey]] = {}
    if isinstance(spec, StaticEnvironment):
        for h in spec.hosts:
            if h.host_key:
                pins[hostkeys.host_pattern(h.address, h.port)] = (
                    h.name, hostkeys.parse_public_key(h.host_key))
    return pins


def fetch(loaded: LoadedManifest, env: str, host: Host) -> list[Offer]:
    """The keys `host` offers (and its jump host's)."""
    if isinstance(loaded.manifest.environments[env], LabEnvironment):
        from stacklock.flows import lab

        return [Offer(host.name, host.pattern,
                      lab.node_host_key(host.container or host.name, wait=30))]
    from stacklock.adapters import ssh

    if host.proxy_jump:
        jump, target = ssh.keys_via_jump(host.address, host.port, host.user, host.proxy_jump)
        return [Offer(f"jump host of {host.name}", jump.pattern, jump.key),
                Offer(host.name, target.pattern, target.key)]
    return [Offer(host.name, host.pattern, ssh.keyscan(host.address, host.port))]


def classify(offers: Iterable[Offer], trusted: dict[str, Entry],
             pins: dict[str, tuple[str, PublicKey]]) -> list[Offer]:
    """Set each offer's status against the trusted entries and the manifest's pins."""
    result = []
    for o in offers:
        if o.pattern in pins:
            o.old = pins[o.pattern][1]
            o.status = "pinned" if o.key.same_key(o.old) else "PINNED-MISMATCH"
        elif o.pattern in trusted:
            o.old = trusted[o.pattern].key
            o.status = "unchanged" if o.key.same_key(o.old) else "CHANGED"
        result.append(o)
    return result


def _show(env: str, offers: list[Offer]) -> None:
    width = max([len(o.label) for o in offers] + [4])
    pwidth = max([len(o.pattern) for o in offers] + [4])
    for o in offers:
        out.print(f"  {o.label:<{width}}  {o.pattern:<{pwidth}}  {o.key.type:<19}  "
                  f"{o.key.fingerprint}  {o.status}", markup=False)
    for o in offers:
        if o.status in ("CHANGED", "PINNED-MISMATCH") and o.old is not None:
            what = ("the key pinned in the manifest" if o.status == "PINNED-MISMATCH"
                    else "the trusted key")
            err.print(
                f"[bold red]WARNING: HOST KEY OF {o.label} ({o.pattern}) DIFFERS FROM "
                f"{what.upper()}[/]\n"
                f"  trusted: {o.old.type} {o.old.fingerprint}\n"
                f"  offered: {o.key.type} {o.key.fingerprint}\n"
                "  Expected only when the host was rebuilt or its keys regenerated on purpose; "
                "otherwise someone may be impersonating it. Compare the offered fingerprint out "
                "of band (console, `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the "
                "host) before trusting it.", markup=True, highlight=False)


def _matches(o: Offer, names: set[str]) -> bool:
    address, _port = hostkeys.split_pattern(o.pattern)
    return bool({o.label, o.pattern, address} & names)


def _replace_name(o: Offer) -> str:
    return hostkeys.split_pattern(o.pattern)[0] if o.label.startswith("jump host") else o.label


def trust_env(loaded: LoadedManifest, env: str, *, yes: bool, replace: set[str],
              confirm: Callable[[str], bool]) -> list[str]:
    """Trust one environment's keys; return what could not be done (empty: all trusted)."""
    inventory = loaded.output_root / "inventories" / env
    hosts = read_hosts(inventory, env)
    path = hostkeys.known_hosts_path(loaded.output_root, env)
    current = hostkeys.load_known_hosts(path)
    trusted = hostkeys.by_pattern(current)
    pins = pinned_keys(loaded, env)
    step(f"{env}: host keys offered by {len(hosts)} host(s)")
    offers: dict[str, Offer] = {}
    failed: list[str] = []
    for host in hosts:
        if host.ssm:
            info(f"  {host.name}: reached through SSM, not SSH: no host key to trust")
            continue
        try:
            for o in fetch(loaded, env, host):
                offers.setdefault(o.pattern, o)
        except StacklockError as exc:
            failed.append(f"{env}/{host.name}: could not fetch its host key: {exc.message}")
            err.print(f"  {host.name} ({host.pattern}): could not fetch its host key: "
                      f"{exc.message}", markup=False)
    shown = classify(offers.values(), trusted, pins)
    _show(env, shown)
    updates: list[Entry] = []
    ask = False  # a key no option named explicitly: confirm first
    for o in shown:
        comment = f"{o.label} (trusted with stacklock trust)"
        entry = Entry(o.pattern, PublicKey(o.key.type, o.key.body, comment))
        if o.status == "new":
            updates.append(entry)
            ask = True
        elif o.status == "CHANGED":
            if yes or _matches(o, replace):
                updates.append(entry)
            else:
                failed.append(f"{env}/{o.label}: host key differs from the trusted one; not "
                              f"replaced (after checking it: stacklock trust {env} --replace "
                              f"{_replace_name(o)})")
        elif o.status == "PINNED-MISMATCH":
            failed.append(f"{env}/{o.label}: offers another key than the manifest's host_key; "
                          "trust never overrides a pinned key (if the host was rebuilt on "
                          "purpose, update host_key in the manifest and run stacklock apply)")
    if not updates:
        info(f"  {env}: nothing to change in {path}")
        return failed
    if ask and not yes and not confirm(f"Trust {len(updates)} host key(s) of {env} (written to {path})?"):
        failed.append(f"{env}: not confirmed; nothing written")
        return failed
    text = hostkeys.format_known_hosts(env, hostkeys.merge(current, updates))
    atomic_write(path, text)
    info(f"  {env}: wrote {len(updates)} key(s) to {path}")
    return failed


def run_trust(loaded: LoadedManifest, envs: list[str], *, yes: bool = False,
              replace: Iterable[str] = (), confirm: Callable[[str], bool]) -> ExitCode:
    """Trust the keys of `envs`; exit 0 when every host is trusted, 3 when any is not."""
    failed: list[str] = []
    for env in envs:
        failed += trust_env(loaded, env, yes=yes, replace=set(replace), confirm=confirm)
    for line in failed:
        err.print(f"[bold red]not trusted:[/] {line}", markup=True, highlight=False)
    return ExitCode.FAILED if failed else ExitCode.OK


__all__ = ["Host", "Offer", "classify", "fetch", "pinned_keys", "read_hosts", "run_trust",
           "trust_env"]
