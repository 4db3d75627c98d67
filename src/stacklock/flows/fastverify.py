"""`stacklock verify --fast`: the verify play's collection step, without Ansible.

Reads the same rendered inventories (`inventories/ENV/hosts.yml`, its group_vars and
host_vars), gives every node the facts module options the play's task gives it, runs the
module with its collectors (ansible/module_utils, one bundle for the run) on all nodes at once
over asyncssh (`stacklock.adapters.fastssh`), and hands the facts
to the one comparison (`stacklock.core.parity.compare`) with the expectation and `may_differ` the
play's `stacklock_parity` action takes (its first host's group_vars per environment). The
report is written and read back as the play's is, so everything after collection (ledger
evidence, table, JSON, JUnit, exit code) is shared.

Only what the play itself would read is resolved: `{{ inventory_dir }}` (the inventories
stacklock renders use nothing else); any other Jinja in a variable verify needs is refused
(exit 2) with the hint to run the play.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import secrets
import string
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from stacklock.adapters import fastssh, tls
from stacklock.console import info, step
from stacklock.core import container, parity, runtime
from stacklock.core import report as reportmod
from stacklock.core.files import atomic_write
from stacklock.core.parity import ParityReport, Unreachable
from stacklock.core.render import repo_root
from stacklock.errors import InvalidInput, Problem, ToolFailed
from stacklock.flows import integrity

MODULE = Path("ansible") / "library" / "stacklock_stack_facts.py"
#: what Ansible ships with the module (module_utils in ansible.cfg), shipped the same way here
MODULE_UTILS = Path("ansible") / "module_utils"
PLAY = Path("ansible") / "playbooks" / "verify.yml"

_INVENTORY_DIR = re.compile(r"\{\{\s*inventory_dir\s*\}\}")
_VARS_SUFFIXES = ("", ".yml", ".yaml", ".json")

#: the inventory variables the facts task's options are built from (verify.yml)
_ARG_VARS = (
    *parity.APT_PIN_VARS, "torchserve_pip_packages", "torchserve_venv", "torchserve_config_path",
    "torchserve_model_store", "torchserve_config", "torchserve_key_file", "torchserve_state_dir",
    "stacklock_verify_probe_timeout", "stacklock_verify_units",
    "serving_endpoint_enabled", "serving_endpoint_port", "serving_endpoint_health_check_path",
    "serving_runtime", "serving_container",
)
_CONN_VARS = (
    "ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
    "ansible_private_key_file", "ansible_ssh_common_args", "ansible_python_interpreter",
    "stacklock_proxy_jump", "stacklock_verify_become", "ansible_become", "ansible_become_user",
    "ansible_become_method", "ansible_connection",
)


# --------------------------------------------------------------------------- inventories


def _invalid(where: str, message: str, hint: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}", problems=[Problem(where, message, hint)])


def _load_vars(path: Path) -> dict[str, Any]:
    text = path.read_text("utf-8")
    if text.lstrip().startswith("$ANSIBLE_VAULT"):
        raise _invalid(str(path), "is encrypted with ansible-vault",
                       "run `stacklock verify` without --fast (the play decrypts it)")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise _invalid(str(path), f"is not valid YAML ({str(exc).splitlines()[0]})",
                       "fix the file, or run `stacklock render` again") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _invalid(str(path), "does not hold a mapping of variables", "fix the file")
    return data


def _vars_dir(base: Path, name: str) -> dict[str, Any]:
    """group_vars/NAME(.yml|.yaml|.json) and every such file under group_vars/NAME/, sorted,
    as Ansible's host_group_vars plugin reads them."""
    found: list[Path] = []
    for suffix in _VARS_SUFFIXES:
        if (base / f"{name}{suffix}").is_file():
            found.append(base / f"{name}{suffix}")
    if (base / name).is_dir():
        found += sorted(p for p in (base / name).rglob("*")
                        if p.is_file() and p.suffix in _VARS_SUFFIXES
                        and not p.name.startswith("."))
    merged: dict[str, Any] = {}
    for path in found:
        merged.update(_load_vars(path))
    return merged


def _resolve(value: Any, inventory_dir: str) -> Any:
    if isinstance(value, str):
        return _INVENTORY_DIR.sub(lambda _m: inventory_dir, value)
    if isinstance(value, list):
        return [_resolve(v, inventory_dir) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, inventory_dir) for k, v in value.items()}
    return value


def _templated(value: Any) -> str | None:
    """The first string in `value` that still holds Jinja, if any."""
    if isinstance(value, str):
        return value if ("{{" in value or "{%" in value) else None
    if isinstance(value, list):
        return next((t for v in value if (t := _templated(v))), None)
    if isinstance(value, dict):
        return next((t for v in value.values() if (t := _templated(v))), None)
    return None


def _groups(name: str, node: Any, depth: int, out: dict[str, dict[str, Any]],
            parents: dict[str, set[str]]) -> None:
    """Walk the YAML inventory: group -> {vars, hosts (in order), depth, children}."""
    node = node or {}
    if not isinstance(node, dict):
        raise _invalid(f"inventory group {name}", "is not a mapping", "run `stacklock apply` again")
    entry = out.setdefault(name, {"vars": {}, "hosts": {}, "depth": depth, "children": []})
    entry["depth"] = max(entry["depth"], depth)
    entry["vars"].update(node.get("vars") or {})
    for host, hv in (node.get("hosts") or {}).items():
        entry["hosts"].setdefault(str(host), {}).update(hv or {})
    for child, sub in (node.get("children") or {}).items():
        entry["children"].append(str(child))
        parents.setdefault(str(child), set()).add(name)
        _groups(str(child), sub, depth + 1, out, parents)


def _hosts_file(inventory: Path) -> Path:
    return inventory if inventory.is_file() else inventory / "hosts.yml"


def read_inventory(inventory: Path, env: str) -> list[tuple[str, dict[str, Any]]]:
    """The hosts of group `env` in inventory order, each with its merged vars (Ansible's
    precedence: all, then the groups holding it by depth, inline vars before group_vars/, then
    the host's inline vars and host_vars/), `{{ inventory_dir }}` resolved."""
    path = _hosts_file(inventory)
    if not path.is_file():
        raise _invalid(f"environments.{env}", f"{path} does not exist (not provisioned yet)",
                       f"run: stacklock apply {env}")
    try:
        doc = yaml.safe_load(path.read_text("utf-8")) or {}
    except yaml.YAMLError as exc:
        raise _invalid(str(path), f"is not valid YAML ({str(exc).splitlines()[0]})",
                       f"run: stacklock apply {env}") from None
    groups: dict[str, dict[str, Any]] = {}
    parents: dict[str, set[str]] = {}
    _groups("all", doc.get("all") if isinstance(doc, dict) else None, 0, groups, parents)
    if env not in groups:
        raise _invalid(str(path), f"has no group {env}", f"run: stacklock apply {env}")
    base = path.parent
    inv_dir = str(base)

    def members(group: str) -> Iterator[str]:
        yield from groups[group]["hosts"]
        for child in groups[group]["children"]:
            yield from members(child)

    def ancestry(host: str) -> list[str]:
        direct = {g for g, e in groups.items() if host in e["hosts"]}
        seen: set[str] = set()
        todo = list(direct)
        while todo:
            g = todo.pop()
            if g not in seen:
                seen.add(g)
                todo += parents.get(g, ())
        seen.add("all")
        return sorted(seen, key=lambda g: (groups[g]["depth"] if g in groups else 0, g))

    group_files: dict[str, dict[str, Any]] = {}
    out: list[tuple[str, dict[str, Any]]] = []
    for host in dict.fromkeys(members(env)):
        hv: dict[str, Any] = {}
        for g in ancestry(host):
            hv.update(groups.get(g, {}).get("vars") or {})
            if g not in group_files:
                group_files[g] = _vars_dir(base / "group_vars", g)
            hv.update(group_files[g])
        for g in ancestry(host):
            hv.update(groups.get(g, {}).get("hosts", {}).get(host) or {})
        hv.update(_vars_dir(base / "host_vars", host))
        hv.setdefault("inventory_hostname", host)
        out.append((host, _resolve(hv, inv_dir)))
    return out


def _plain(hv: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    """InvalidInput naming the variable when one verify needs is still a Jinja template."""
    for key in keys:
        if key in hv and (text := _templated(hv[key])):
            raise _invalid(f"{where}: {key}", f"holds a template verify --fast cannot "
                           f"evaluate ({text[:80]!r}; only {{{{ inventory_dir }}}} is resolved)",
                           "run `stacklock verify` without --fast (the play evaluates it)")


# --------------------------------------------------------------------------- module options


def module_spec(source: str) -> dict[str, dict[str, Any]]:
    """The facts module's `argument_spec` (read from its main(), never imported here)."""
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "AnsibleModule"):
            for kw in node.keywords:
                if kw.arg == "argument_spec":
                    spec = ast.literal_eval(kw.value)
                    if isinstance(spec, dict):
                        return spec
    raise ToolFailed(f"{MODULE}: no AnsibleModule(argument_spec=...) found in main()")


class OptionError(ValueError):
    """An option AnsibleModule would refuse: the facts task fails on that node (exit 3)."""


def _convert(name: str, value: Any, spec: Mapping[str, Any]) -> Any:
    """AnsibleModule's conversion of one option (types the facts module uses); OptionError
    with AnsibleModule's words when it would refuse the value."""
    kind = spec.get("type", "str")
    if value is None:
        return None
    if kind == "bool":
        return fastssh.ansible_bool(value)
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError):
            kind_of = type(value).__name__
            raise OptionError(f"argument '{name}' is of type {kind_of} and we were unable to "
                              f"convert to float: <class '{kind_of}'> cannot be converted to "
                              "a float") from None
    if kind == "list":
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(v) for v in items] if spec.get("elements", "str") == "str" else list(items)
    if kind == "dict":  # as AnsibleModule: a mapping, or a string of JSON holding one
        if isinstance(value, Mapping):
            return dict(value)
        try:
            parsed = json.loads(str(value))
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            kind_of = type(value).__name__
            raise OptionError(f"argument '{name}' is of type {kind_of} and we were unable to "
                              f"convert to dict: dictionary requested, could not parse JSON "
                              "or key=value")
        return parsed
    if kind == "raw":
        return value
    return str(value)


def task_args(hv: Mapping[str, Any], run_id: str, deep: bool) -> dict[str, Any]:
    """The options the verify play's `stacklock_stack_facts` task gives this host (verify.yml,
    expression by expression; an option the play omits is left out)."""
    args: dict[str, Any] = {
        "packages": parity.apt_package_names(hv),
        "pip_packages": [str(p["name"]) for p in hv.get("torchserve_pip_packages") or []],
        "package_families": parity.apt_family_globs(hv),
    }
    if "torchserve_venv" in hv:
        args["torchserve_venv"] = hv["torchserve_venv"]
    if "torchserve_config_path" in hv:
        args["torchserve_config"] = hv["torchserve_config_path"]
    raw = hv.get("torchserve_config")
    config: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    if "torchserve_model_store" in hv:
        args["torchserve_model_store"] = hv["torchserve_model_store"]
    elif "model_store" in config:
        args["torchserve_model_store"] = config["model_store"]
    if "torchserve_key_file" in hv:
        args["torchserve_key_file"] = hv["torchserve_key_file"]
    else:
        args["torchserve_key_file"] = (
            f"{hv.get('torchserve_state_dir', '/var/lib/torchserve')}/key_file.json")
    args["torchserve_management_url"] = config.get("management_address",
                                                   "http://127.0.0.1:8081")
    args["torchserve_inference_url"] = config.get("inference_address", "http://127.0.0.1:8080")
    # the models with a smoke test, as the lock renders them
    args["smoke"] = [m for m in hv.get("torchserve_models") or []
                     if isinstance(m, dict) and "smoke" in m]
    args["probe_timeout"] = hv.get("stacklock_verify_probe_timeout", 20)
    args["run_id"] = run_id
    args["deep"] = deep
    # the runtime class (verify.yml's units, watch_files, commands: stacklock.core.runtime)
    args["units"] = list(hv.get("stacklock_verify_units") or runtime.units_option())
    args["watch_files"] = runtime.watch_option(hv)
    args["commands"] = runtime.commands_option()
    # the files class: the controller's expectation (stacklock.flows.integrity), as the play's
    # stacklock_files_reference task sets it
    args["files"] = list(hv.get("stacklock_files") or [])
    # the serving endpoint (verify.yml's endpoint_url, endpoint_health_path)
    if hv.get("serving_endpoint_enabled"):
        args["endpoint_url"] = f"https://127.0.0.1:{hv.get('serving_endpoint_port', 443)}"
    if "serving_endpoint_health_check_path" in hv:
        args["endpoint_health_path"] = hv["serving_endpoint_health_check_path"]
    # container mode: the serving container to read (verify.yml's `container`)
    if (opt := container.option(hv)) is not None:
        args["container"] = opt
    return args


def play_options(text: str) -> dict[str, str]:
    """The options verify.yml's `stacklock_stack_facts` task gives the module, with their
    expressions."""
    doc = yaml.safe_load(text)
    for play in doc if isinstance(doc, list) else []:
        for task in play.get("tasks") or []:
            if isinstance(task, dict) and isinstance(task.get("stacklock_stack_facts"), dict):
                return {str(k): str(v) for k, v in task["stacklock_stack_facts"].items()}
    raise ToolFailed(f"{PLAY}: no stacklock_stack_facts task found")


def play_args(args: Mapping[str, Any], options: Mapping[str, str]) -> dict[str, Any]:
    """`task_args` limited to the options the play in this checkout passes; ToolFailed when the
    play always passes one the fast path does not compute (verify.yml changed, this did not).
    An option whose expression can `omit` it may be absent."""
    missing = [o for o, expr in options.items() if o not in args and "omit" not in expr]
    if missing:
        raise ToolFailed(f"{PLAY} gives the facts module option(s) {', '.join(missing)} that "
                         "verify --fast does not compute: run `stacklock verify` without "
                         "--fast, and teach stacklock.flows.fastverify.task_args the option")
    return {k: v for k, v in args.items() if k in options}


def module_opts(args: Mapping[str, Any], spec: Mapping[str, Mapping[str, Any]]
                ) -> tuple[dict[str, Any], list[str]]:
    """What AnsibleModule hands gather(): every option of the spec, given or its default,
    converted to its type, and `_check_mode` (the task runs with check_mode: false). Also the
    `path` options, which the node expands (~, $VAR) as AnsibleModule does there."""
    unknown = sorted(set(args) - set(spec))
    if unknown:
        raise ToolFailed(f"{MODULE}: the facts module has no option(s) {', '.join(unknown)}")
    opts = {name: _convert(name, args.get(name, s.get("default")), s)
            for name, s in spec.items()}
    opts["_check_mode"] = False
    return opts, sorted(n for n, s in spec.items() if s.get("type") == "path")


def read_bundle(root: Path, source: str | None = None) -> fastssh.Bundle:
    """The facts module (`source`, else read) and every Python file under ansible/module_utils
    of the checkout at `root`, zipped once for the run: the same files the play ships."""
    utils = root / MODULE_UTILS
    files = {p.relative_to(utils).as_posix(): p.read_bytes() for p in sorted(utils.rglob("*.py"))
             if "__pycache__" not in p.parts}
    text = source if source is not None else (root / MODULE).read_text("utf-8")
    return fastssh.Bundle.build(MODULE.name, text.encode("utf-8"), files)


def deadline(hv: Mapping[str, Any], opts: Mapping[str, Any], target: fastssh.Target
             ) -> fastssh.Target:
    """`target` with its deadline: `stacklock_verify_deadline` when the inventory sets it
    (already in `target`), else DEADLINE beyond the module's own bound on hashing model
    archives (`archive_hash_timeout`), so that a long first hashing is never cut short (it
    caches what it finished, and the next run goes on)."""
    if hv.get("stacklock_verify_deadline") not in (None, ""):
        return target
    hashing = float(opts.get("archive_hash_timeout") or 0)
    return dataclasses.replace(target, deadline=fastssh.DEADLINE + hashing)


def new_run_id() -> str:
    """20 random digits, as the play's `password` lookup makes it."""
    return "".join(secrets.choice(string.digits) for _ in range(20))


# --------------------------------------------------------------------------- the collection


def collect(inventories: Sequence[Path], envs: Sequence[str], *, report_path: Path,
            deep: bool = False, quiet: bool = False, log_file: Path | None = None,
            forks: int = fastssh.FORKS) -> ParityReport:
    """Collect every node's facts over asyncssh and compare; the report as the play writes it
    (to `report_path`) and as the CLI reads it back."""
    source = (repo_root() / MODULE).read_text("utf-8")
    spec = module_spec(source)
    bundle = read_bundle(repo_root(), source)  # once: every node's payload shares it
    options = play_options((repo_root() / PLAY).read_text("utf-8"))
    run_id = new_run_id()
    expected: dict[str, dict[str, str | None]] = {}
    may_differ: Any = None
    waivers: Any = None
    jobs: list[tuple[fastssh.Target, fastssh.Payload]] = []
    refused: list[fastssh.HostResult] = []
    clients: list[tuple[str, str, dict[str, Any]]] = []
    for env, inventory in zip(envs, inventories, strict=True):
        hosts = read_inventory(inventory, env)
        # the files class, computed on the controller as the play's reference task does
        hosts = [(n, {**hv, "stacklock_files": integrity.files_option(hv)}) for n, hv in hosts]
        inv_dir = _hosts_file(inventory).parent
        clients += [(env, name, hv) for name, hv in hosts if hv.get("serving_endpoint_enabled")]
        for name, hv in hosts:
            where = f"inventory {inv_dir}, host {name}"
            _plain(hv, (*_CONN_VARS, *_ARG_VARS), where)
            target = fastssh.target_from_vars(env, name, hv, inv_dir)
            try:
                opts, paths = module_opts(play_args(task_args(hv, run_id, deep), options),
                                          spec)
            except OptionError as exc:  # as the play: the module refuses it on that node
                refused.append(fastssh.HostResult(
                    target, Unreachable(f"the facts module failed: {exc}")))
                continue
            jobs.append((deadline(hv, opts, target), fastssh.Payload(bundle, opts, paths)))
        if hosts:
            first = hosts[0][1]
            _plain(first, (*parity.GROUP_VAR_KEYS, "stacklock_parity_may_differ",
                           "stacklock_parity_waivers"),
                   f"inventory {inv_dir}, host {hosts[0][0]}")
            expected[env] = parity.expected_from_vars(
                {k: first[k] for k in parity.GROUP_VAR_KEYS if k in first})
            if may_differ is None:
                may_differ = first.get("stacklock_parity_may_differ")
            if waivers is None:  # as the play's parity task: the first host's
                waivers = first.get("stacklock_parity_waivers")
        else:
            expected[env] = {}
    if not quiet:
        step(f"verify {', '.join(envs)} (fast): stack facts from {len(jobs) + len(refused)} "
             f"node(s) over SSH, {max(1, min(len(jobs), forks))} at a time, one comparison")
    lines: list[str] = []

    def shown(result: fastssh.HostResult) -> None:
        t = result.target
        if isinstance(result.facts, Unreachable):
            line = f"unreachable: [{t.env}/{t.name}] {result.facts.error}"
        else:
            line = f"ok: [{t.env}/{t.name}] {result.seconds:.1f} s"
        lines.append(line)
        if not quiet:
            info(f"  {line}")

    for result in refused:
        shown(result)
    results = refused + fastssh.FanOut(forks=forks, on_result=shown).run(jobs)
    if log_file is not None:
        atomic_write(log_file, "".join(f"{line}\n" for line in lines))
    facts: dict[str, dict[str, Any]] = {env: {} for env in envs}
    for r in results:
        facts[r.target.env][r.target.name] = r.facts
    # the serving endpoint as a client sees it, from here (the play's stacklock_endpoint_client)
    for env, name, hv in clients:
        node_facts = facts[env].get(name)
        if isinstance(node_facts, dict):
            node_facts["endpoint_client"] = tls.client_check(
                {**hv, "inventory_hostname": name}, timeout=float(
                    hv.get("stacklock_verify_probe_timeout") or 20))
    rep = parity.compare(expected, facts, list(may_differ or []), run_id=run_id,
                         waivers=waivers)
    atomic_write(report_path, reportmod.to_json(rep))
    return reportmod.from_dict(json.loads(report_path.read_text("utf-8")))


__all__ = ["OptionError", "collect", "deadline", "module_opts", "module_spec", "new_run_id",
           "play_args", "play_options", "read_bundle", "read_inventory", "task_args"]
