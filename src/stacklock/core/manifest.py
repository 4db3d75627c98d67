"""The manifest (`stacklock.yaml`): parsed, validated against the schema (`core.schema`) and the
compatibility rules (`core.rules`), every error reported at once with its path."""

from __future__ import annotations

import os
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from stacklock.core import grammar, rules
from stacklock.core.schema import (
    _ACM_ARN,
    _CONTENT_TYPE,
    _CUDA,
    _DRIVER,
    _HEALTH_PATH,
    _NAME,
    _SECRET_VAR,
    _SEMVER,
    _SHA256,
    _TORCH,
    MAX_SMOKE_INPUT_BYTES,
    MAX_SMOKE_NUMBERS,
    PARITY_ALLOWED_CHOICES,
    SCHEMA_VERSION,
    AmiSpec,
    AptRepository,
    AwsEnvironment,
    ContainerToolkit,
    Cuda,
    Docker,
    Java,
    LabEnvironment,
    LabSettings,
    LedgerLocation,
    LedgerSettings,
    Manifest,
    Model,
    ModelSmoke,
    NvidiaDriver,
    OperatingSystem,
    PackageSources,
    Parity,
    Pinned,
    PipSource,
    Python,
    RolloutPolicy,
    Stack,
    StaticEnvironment,
    StaticHost,
    Strict,
    Torch,
    TorchServe,
    TorchServeConfig,
    confinement_hint,
    ledger_location,
    local_paths,
    loopback_problems,
    path_problems,
)
from stacklock.core.suggest import closest
from stacklock.errors import InvalidInput, Problem

__all__ = [
    "MAX_SMOKE_INPUT_BYTES",
    "MAX_SMOKE_NUMBERS",
    "PARITY_ALLOWED_CHOICES",
    "SCHEMA_VERSION",
    "AmiSpec",
    "AptRepository",
    "AwsEnvironment",
    "ContainerToolkit",
    "Cuda",
    "Docker",
    "Java",
    "LabEnvironment",
    "LabSettings",
    "LedgerLocation",
    "LedgerSettings",
    "LoadedManifest",
    "Manifest",
    "Model",
    "ModelSmoke",
    "NvidiaDriver",
    "OperatingSystem",
    "PackageSources",
    "Parity",
    "Pinned",
    "PipSource",
    "Python",
    "RolloutPolicy",
    "Stack",
    "StaticEnvironment",
    "StaticHost",
    "Strict",
    "Torch",
    "TorchServe",
    "TorchServeConfig",
    "ledger_location",
    "load_manifest",
    "parse_manifest",
    "problems_from_validation",
]


# --------------------------------------------------------------------------- loading


class LoadedManifest:
    """A validated manifest with the file it came from."""

    def __init__(self, manifest: Manifest, path: Path, raw_text: str) -> None:
        self.manifest = manifest
        self.path = path
        self.raw_text = raw_text

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def output_root(self) -> Path:
        return (self.base_dir / self.manifest.output_dir).resolve()

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def stack_of(self, env: str) -> Stack:
        return self.manifest.stacks[self.manifest.environments[env].stack]

    # ----------------------------------------------------------------------- confinement

    @property
    def allowed_roots(self) -> list[Path]:
        """The manifest's folder and its `allowed_paths` folders, symbolic links resolved."""
        roots = [self.base_dir]
        for folder in self.manifest.allowed_paths:
            try:
                roots.append((self.base_dir / folder).resolve())
            except (OSError, RuntimeError):
                continue  # a folder that cannot be resolved allows nothing
        return roots

    def _confine(self, field: str, value: str) -> tuple[Path | None, Problem | None]:
        try:
            resolved = (self.base_dir / value).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
            return None, Problem(field, f"{value} cannot be resolved ({exc})",
                                 "point it at a file, not a loop of symbolic links",
                                 rule="paths")
        if any(resolved.is_relative_to(root) for root in self.allowed_roots):
            return resolved, None
        as_written = Path(os.path.normpath(self.base_dir / value))
        via = ", through a symbolic link," if as_written.is_relative_to(self.base_dir) else ""
        return None, Problem(
            field, f"{value} resolves{via} to {resolved}, outside the manifest's folder "
                   f"{self.base_dir}, and no allowed_paths folder holds it; nothing was read "
                   "or written", confinement_hint(field, str(resolved)), rule="paths")

    def local_file(self, field: str, value: str) -> Path:
        """The file (or folder) a path of the manifest names, symbolic links resolved, after
        checking that it lies inside the manifest's folder or an `allowed_paths` folder;
        InvalidInput (exit 2) naming the field otherwise. Every reader of a manifest path
        (lock, render) goes through here, so a link changed after loading is caught too."""
        path, problem = self._confine(field, value)
        if problem is not None or path is None:
            assert problem is not None
            raise InvalidInput(f"{field}: {problem.message}", problems=[problem])
        return path

    def confinement_problems(self) -> list[Problem]:
        """Every file path of the manifest that resolves outside its folder (and outside every
        `allowed_paths` folder), and an output_dir that leads out of it."""
        problems = [problem for field, value in local_paths(self.manifest.model_dump())
                    if (problem := self._confine(field, value)[1]) is not None]
        try:
            out = self.output_root
        except (OSError, RuntimeError) as exc:
            return [*problems, Problem("output_dir", f"cannot be resolved ({exc})",
                                       "make it a plain folder", rule="paths")]
        if not out.is_relative_to(self.base_dir):
            problems.append(Problem(
                "output_dir", f"{self.manifest.output_dir} resolves, through a symbolic link, "
                              f"to {out}, outside the manifest's folder {self.base_dir}: render "
                              "would write there; nothing was written",
                "make output_dir a real folder inside the manifest's folder (allowed_paths "
                "does not apply to it)", rule="paths"))
        return problems


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif i == 2 and item in ("aws", "static", "lab") and loc[0] == "environments":
            continue  # the discriminator tag of a tagged union adds nothing for the user
        elif item.startswith(("function-after[", "literal[", "union[", "list[")) or item == "[key]":
            continue  # "[key]": the error is about the mapping key itself (its name)
        else:
            parts.append(item)
    return ".".join(parts)


# What each pattern means, in words: shown instead of the raw regular expression.
_PATTERN_HELP: dict[str, tuple[str, str]] = {
    _NAME: ("a name of 2-32 lowercase letters, digits and '-', starting with a letter",
            "prod-stack"),
    _DRIVER: ("a full driver version", "580.95.05"),
    _CUDA: ("a CUDA version", "13.0.2 or 13.0"),
    _SEMVER: ("an exact version", "1.18.0"),
    _TORCH: ("a torch version with its build", "2.9.1+cu130 or 2.13.0+cpu"),
    _SHA256: ("a sha256 of 64 lowercase hex digits", "the output of sha256sum FILE"),
    r"^3\.\d{1,2}$": ("a Python minor version", '"3.12" (quoted)'),
    r"^[A-Za-z0-9][A-Za-z0-9_-]*$": ("a model name of letters, digits, '_' and '-'",
                                     "tiny-linear"),
    r"^[0-9][0-9A-Za-z.]*$": ("a model version", '"1.0" (quoted)'),
    _CONTENT_TYPE: ("a media type", "application/json or image/jpeg"),
    r"^(\d{12}|amazon|self)$": ("an AMI owner: a 12-digit account id, amazon or self",
                                '"099720109477" (quoted)'),
    r"^[a-z0-9][a-z0-9.-]*$": ("a lowercase name of letters, digits, '.' and '-'", "node-1"),
    r"^https?://\S+$": ("an http:// or https:// URL", "https://mirror.example.com/apt"),
    r"^[a-z]{2}(-gov)?-[a-z]+-\d$": ("an AWS region", "us-east-1"),
    r"^[a-z][a-z0-9-]*\.[a-z0-9]+$": ("an EC2 instance type (family.size)", "g6e.xlarge"),
    r"^vpc-[0-9a-f]{8,17}$": ("a VPC id", "vpc-0123456789abcdef0"),
    r"^subnet-[0-9a-f]{8,17}$": ("a subnet id", "subnet-0123456789abcdef0"),
    r"^\d{12}$": ("a 12-digit AWS account id", '"111122223333" (quoted)'),
    _SECRET_VAR: ("the name of a secret store variable: stacklock_endpoint_ and up to 48 "
                  "lowercase letters, digits or '_'", "stacklock_endpoint_prod_tls"),
    _HEALTH_PATH: ("an absolute URL path", "/ping"),
    _ACM_ARN: ("an ACM certificate ARN",
               "arn:aws:acm:us-east-1:111122223333:certificate/<uuid>"),
}


def _members(tp: Any) -> list[Any]:
    """The types of a (possibly Annotated, possibly Union) annotation."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tags(model: type[BaseModel]) -> set[Any]:
    """The Literal values a model's fields take: a tagged union's tag (`provider: aws`)."""
    return {v for f in model.model_fields.values() if get_origin(f.annotation) is Literal
            for v in get_args(f.annotation)}


def allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys the manifest allows beside the last element of a validation error's location
    (walking the schema's models, mappings, lists and tagged unions)."""
    current: list[Any] = [Manifest]
    for key in loc[:-1]:
        members = [m for tp in current for m in _members(tp)]
        tagged = [m for m in members if _is_model(m) and key in _tags(m)
                  and key not in m.model_fields]
        if tagged:  # the union's tag in the location (`aws`), not a key of the input
            current = tagged
            continue
        following: list[Any] = []
        for m in members:
            args = get_args(m)
            if _is_model(m):
                field = m.model_fields.get(str(key))
                if field is not None:
                    following.append(field.annotation)
            elif get_origin(m) in (dict, Mapping) and len(args) == 2:
                following.append(args[1])
            elif get_origin(m) in (list, tuple, Sequence) and args:
                following.append(args[0])
        current = following
    keys = {field.alias or name for tp in current for m in _members(tp) if _is_model(m)
            for name, field in m.model_fields.items()}
    return sorted(keys)


def _hint(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "string_type" and isinstance(err.get("input"), int | float):
        return ('quote it: YAML reads an unquoted 13.0 or 3.10 as a number '
                '(write "13.0.2", "3.10")')
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
        return f"write {_PATTERN_HELP[ctx['pattern']][0]}, like {_PATTERN_HELP[ctx['pattern']][1]}"
    if kind == "literal_error" and isinstance(err.get("input"), int | float):
        return f"use one of {ctx.get('expected', '')}, quoted (YAML reads 17 as a number)"
    if kind == "extra_forbidden":
        loc = tuple(err.get("loc") or ())
        near = closest(str(loc[-1]), allowed_keys(loc)) if loc else None
        if near is not None:
            return f"did you mean {near!r}? fix its spelling, or remove it (docs/manifest.md)"
        return "remove it, or check its spelling against the manifest reference (docs/manifest.md)"
    if kind == "missing":
        return "add this field"
    if kind == "literal_error":
        return f"use one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        return f"match the pattern {ctx.get('pattern', '')}"
    if kind == "union_tag_invalid":
        return "set provider to one of 'aws', 'static', 'lab'"
    if kind == "union_tag_not_found":
        return "add provider: aws | static | lab"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "give a value of the expected type"
    return ""


def _other_union_branch(err: Any) -> bool:
    """An error from the branch of `'official' | list[...]` the input evidently did not mean."""
    loc = [str(x) for x in err["loc"]]
    value = err.get("input")
    if any(x.startswith("literal[") for x in loc) and isinstance(value, list | dict):
        return True
    return (err.get("type") == "list_type" and any(x.startswith("list[") for x in loc)
            and isinstance(value, str))


def problems_from_validation(exc: ValidationError) -> list[Problem]:
    problems = []
    for err in exc.errors(include_url=False):
        if _other_union_branch(err):
            continue
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        kind = err.get("type")
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HELP:
            what = "name" if err["loc"] and err["loc"][-1] == "[key]" else "value"
            msg = f"{what} {err.get('input')!r} is not {_PATTERN_HELP[ctx['pattern']][0]}"
        elif kind == "string_type" and isinstance(err.get("input"), int | float):
            msg = f"expected a string, got the number {err.get('input')!r}"
        problems.append(
            Problem(path=_loc_to_path(tuple(err["loc"])), message=msg, hint=_hint(dict(err)),
                    rule="schema")
        )
    return problems


def _cross_references(m: Manifest) -> list[Problem]:
    return _raw_cross_references(m.model_dump()) + ledger_location(m)[1]


def _raw_cross_references(data: dict[str, Any]) -> list[Problem]:
    """Environments naming unknown stacks, hosts shared between environments.

    Works on the raw mapping too, so that these are reported beside schema errors."""
    problems: list[Problem] = []
    stacks = data.get("stacks")
    envs = data.get("environments")
    if not isinstance(envs, dict):
        return problems
    stack_names = sorted(str(k) for k in stacks) if isinstance(stacks, dict) else []
    for env_name, env in envs.items():
        if not isinstance(env, dict) or not stack_names:
            continue  # no stacks at all: that is the problem reported
        ref = env.get("stack")
        if isinstance(ref, str) and ref not in stack_names:
            problems.append(
                Problem(
                    path=f"environments.{env_name}.stack",
                    message=f"names stack {ref!r}, which is not defined under stacks",
                    hint="use one of: " + ", ".join(stack_names),
                    rule="schema",
                )
            )
    seen: dict[str, str] = {}
    for env_name, env in envs.items():
        if not isinstance(env, dict) or env.get("provider") != "static":
            continue
        hosts = env.get("hosts")
        if not isinstance(hosts, list):
            continue
        for i, host in enumerate(hosts):
            if not isinstance(host, dict) or not isinstance(host.get("address"), str):
                continue
            key = f"{host['address']}:{host.get('port', 22)}"
            if key in seen and seen[key] != env_name:
                problems.append(
                    Problem(
                        path=f"environments.{env_name}.hosts[{i}].address",
                        message=f"{key} is already a host of environment {seen[key]!r}",
                        hint="a host belongs to exactly one environment",
                        rule="schema",
                    )
                )
            seen.setdefault(key, env_name)
    return problems


def _raw_safety(data: dict[str, Any]) -> list[Problem]:
    """File paths that leave the manifest's folder (as written) and loopback static hosts
    without the opt-in: on the raw mapping, so that they are reported beside schema errors."""
    return path_problems(data) + loopback_problems(data)


MAX_MANIFEST_BYTES = 1 << 20  # 1 MiB: a manifest is a page of YAML, not a data set
MAX_DEPTH = 64  # mappings and lists nested deeper than any manifest needs
MAX_NODES = 200_000  # values after expanding aliases (a billion laughs stops here)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (YAML keeps the last).

    Merge keys (`<<: *defaults`) are standard YAML and accepted: a key given explicitly
    overrides a merged one, as YAML says; only explicit keys given twice are refused."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # flatten_mapping (in super) merges it
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _too_deep(text: str) -> int | None:
    """The line where nesting passes MAX_DEPTH (None: it never does); the scanner is not
    recursive, so this runs before the (recursive) composer can overflow the stack."""
    depth = 0
    starts = (yaml.BlockSequenceStartToken, yaml.BlockMappingStartToken,
              yaml.FlowSequenceStartToken, yaml.FlowMappingStartToken)
    ends = (yaml.BlockEndToken, yaml.FlowSequenceEndToken, yaml.FlowMappingEndToken)
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, starts):
            depth += 1
            if depth > MAX_DEPTH:
                return int(token.start_mark.line) + 1
        elif isinstance(token, ends):
            depth -= 1
    return None


def _oversized(data: Any) -> bool:
    """More than MAX_NODES values once aliases are expanded (or a recursive alias)."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_NODES:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _path_join(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _text_problems(data: Any) -> list[Problem]:
    """Every string of the raw manifest (keys too) that no output format can carry safely:
    control characters and newlines, template markers (`${`, `%{`, `{{`, `{%`, `{#`)."""
    problems: list[Problem] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and (why := grammar.text_problem(k)):
                    problems.append(Problem(path=_path_join(where, repr(k)),
                                            message=f"the key {k!r} {why}",
                                            hint="rename it", rule="schema"))
                    continue
                stack.append((_path_join(where, k), v))
        elif isinstance(item, list):
            stack.extend((_path_join(where, i), v) for i, v in enumerate(item))
        elif isinstance(item, str) and (why := grammar.text_problem(item)):
            problems.append(Problem(path=where, message=f"value {item[:80]!r} {why}",
                                    hint="remove it: write plain text on one line",
                                    rule="schema"))
    return sorted(problems, key=lambda p: p.path)


def _name_clashes(data: dict[str, Any]) -> list[Problem]:
    """Stack and environment names that differ only by surrounding space or case."""
    problems: list[Problem] = []
    for section in ("stacks", "environments"):
        names = data.get(section)
        if not isinstance(names, dict):
            continue
        seen: dict[str, str] = {}
        for name in names:
            if not isinstance(name, str):
                continue
            norm = name.strip().casefold()
            if norm in seen:
                problems.append(Problem(
                    path=f"{section}.{name.strip()}",
                    message=f"{name!r} and {seen[norm]!r} are the same name once spaces and "
                            "case are ignored",
                    hint="give each one a distinct name, or merge them", rule="schema"))
            else:
                seen[norm] = name
    return problems


def _partial_rules(data: dict[str, Any]) -> list[Problem]:
    """Compatibility errors of the parts of a manifest that did validate, so that a schema
    error and a rule error are reported together (warnings wait for a valid manifest)."""
    try:
        return [p for p in rules.check_raw(data) if p.severity == "error"]
    except Exception:  # the schema problems are reported whatever happens here
        return []


def _yaml_error(source: str, message: str) -> InvalidInput:
    return InvalidInput(
        f"{source}: {message}",
        problems=[Problem(path="", message=message, hint="fix the YAML", rule="yaml")])


def parse_manifest(text: str, source: str = "stacklock.yaml") -> Manifest:
    """Parse and validate manifest text; raise InvalidInput listing every problem."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise _yaml_error(source, f"the manifest is {len(text)} characters long; at most "
                                  f"{MAX_MANIFEST_BYTES} (1 MiB)")
    try:
        line = _too_deep(text)
        if line is not None:
            raise _yaml_error(source, f"nested more than {MAX_DEPTH} levels deep at line {line}")
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise InvalidInput(
            f"{source}: YAML syntax error{where}: {problem}",
            problems=[Problem(path="", message=f"YAML syntax error{where}: {problem}",
                              hint="fix the YAML syntax", rule="yaml")],
        ) from None
    except RecursionError:
        raise _yaml_error(source, "nested too deeply") from None
    if data is None:
        raise InvalidInput(
            f"{source}: the manifest is empty",
            problems=[Problem(path="", message="the manifest is empty",
                              hint="start from examples/lab.yaml", rule="schema")],
        )
    if not isinstance(data, dict):
        raise InvalidInput(
            f"{source}: the manifest must be a mapping, got {type(data).__name__}",
            problems=[Problem(path="", message="the manifest must be a YAML mapping",
                              hint="start from examples/lab.yaml", rule="schema")],
        )
    if _oversized(data):
        raise _yaml_error(source, f"the manifest expands to more than {MAX_NODES} values "
                                  "(aliases repeated or recursive)")
    early = _text_problems(data) + _name_clashes(data)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems = list(early)
        flagged = {p.path for p in problems}
        problems += [p for p in problems_from_validation(exc) if p.path not in flagged]
        known = {p.path for p in problems}
        problems += [p for p in _raw_cross_references(data) + _raw_safety(data)
                     if p.path not in known]
        problems += _partial_rules(data)
        raise InvalidInput(f"{source}: {len(problems)} problem(s)", problems=problems) from None
    problems = early + _cross_references(manifest) + _raw_safety(data)
    if problems:
        problems += _partial_rules(data)
        raise InvalidInput(f"{source}: {len(problems)} problem(s)", problems=problems)
    return manifest


def _unreadable(p: Path, message: str, hint: str) -> InvalidInput:
    return InvalidInput(f"{p}: {message}",
                        problems=[Problem(path="", message=f"{p}: {message}", hint=hint,
                                          rule="yaml")])


def load_manifest(path: Path | str) -> LoadedManifest:
    p = Path(path)
    try:
        is_dir = p.is_dir()
        exists = p.exists()
    except OSError as exc:
        raise _unreadable(p, f"cannot be read ({exc.strerror or exc})",
                          "check the path and its permissions") from None
    if is_dir:
        raise _unreadable(p, "is a directory, not a manifest file",
                          "pass --manifest PATH/stacklock.yaml")
    if not exists:
        raise InvalidInput(
            f"{p}: no such manifest",
            problems=[Problem(path="", message=f"{p}: no such file",
                              hint="pass --manifest PATH, or run where stacklock.yaml is")],
        )
    if not p.is_file():  # a FIFO or a device would block or never end
        raise _unreadable(p, "is not a regular file", "pass the manifest file itself")
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise _unreadable(p, f"cannot be read ({exc.strerror or exc})",
                          "check the file's permissions") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _unreadable(p, f"is larger than {MAX_MANIFEST_BYTES} bytes (1 MiB)",
                          "a manifest is a page of YAML; check you passed the right file")
    try:
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
        raise InvalidInput(
            f"{p}: {message}",
            problems=[Problem(path="", message=message,
                              hint="save the manifest as UTF-8", rule="yaml")],
        ) from None
    loaded = LoadedManifest(parse_manifest(text, source=str(p)), p.resolve(), text)
    outside = loaded.confinement_problems()
    if outside:
        raise InvalidInput(f"{p}: {len(outside)} file path(s) outside the manifest's folder",
                           problems=outside)
    return loaded
