"""The roles' files rendered on the controller, byte for byte as the play writes them.

`render` is what `ansible.builtin.template` does with a role's `templates/NAME.j2` (read
ansible/plugins/action/template.py): the source read as text and trusted as a template, the
`template_*` variables and `ansible_managed` added, ansible-core's own Templar with
`trim_blocks` on, `lstrip_blocks` off, newline sequence "\\n", trailing newlines preserved and
backslashes left alone, the result encoded as UTF-8. `copy_content` and `render_content` do the
same for a task's `ansible.builtin.copy: content:`.

`variables` layers what a task of a play sees, lowest first: every role's
`defaults/main.yml`, then the host's variables (its rendered group_vars), then every role's
`vars/main.yml`, then the task's own variables (an `include_role`'s `vars:`, the loop `item`),
then what the task read from the node (a registered result, `ansible_facts`). The role files
are loaded as Ansible loads them (trusted templates, evaluated lazily when used); the host's
variables are data: the verify play's reference task hands them over already templated.

What the controller cannot decide raises `RenderError`: a variable only the node has (an
undefined fact), or a template that reads the clock or the controller (`template_run_date`,
`template_host`, `now()`, a lookup). The roles are found where the rest of stacklock finds
`ansible/` (stacklock.core.render.repo_root: the checkout, else the installed share).

ansible-core is imported on first use (it is a dependency; the import takes a moment).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stacklock.core.render import repo_root

#: the variables ansible.builtin.template adds that depend on when, where or by whom the
#: template was rendered, and the Jinja calls that read the clock or the controller: a
#: template that uses one has no bytes the controller can know in advance
VOLATILE = frozenset({"template_host", "template_uid", "template_mtime", "template_run_date",
                      "template_fullpath", "now", "lookup", "query", "q"})

#: ansible.builtin.template's defaults (its task options; the roles set none of them)
NEWLINE_SEQUENCE = "\n"
TRIM_BLOCKS = True
LSTRIP_BLOCKS = False
OUTPUT_ENCODING = "utf-8"


class RenderError(Exception):
    """A file whose bytes the controller cannot render (the message says why)."""


def roles_dir() -> Path:
    return repo_root() / "ansible" / "roles"


# --------------------------------------------------------------------------- ansible-core


@functools.cache
def _loader() -> Any:
    from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]

    return DataLoader()


def _trusting() -> bool:
    """ansible-core 2.19+: only strings trusted as templates are templated."""
    import ansible.template  # type: ignore[import-untyped]

    return hasattr(ansible.template, "trust_as_template")


def _trust(text: str) -> Any:
    if _trusting():
        from ansible.template import trust_as_template

        return trust_as_template(text)
    return text


@functools.cache
def _load(path: Path) -> Any:
    """A role file as Ansible loads it (its strings trusted as templates)."""
    if not path.is_file():
        return None
    if _trusting():
        return _loader().load_from_file(str(path), cache="none", trusted_as_template=True)
    return _loader().load_from_file(str(path), cache="none")


def _templar(variables: Mapping[str, Any], searchpath: Sequence[str] = ()) -> Any:
    from ansible.template import Templar

    templar = Templar(loader=_loader(), variables=dict(variables))
    if searchpath:
        templar = templar.copy_with_new_env(searchpath=list(searchpath),
                                            available_variables=dict(variables))
    return templar


def _errors() -> tuple[type[Exception], ...]:
    from ansible.errors import AnsibleError  # type: ignore[import-untyped]

    return (AnsibleError,)


# --------------------------------------------------------------------------- variables


def role_defaults(role: str) -> dict[str, Any]:
    return dict(_load(roles_dir() / role / "defaults" / "main.yml") or {})


def role_vars(role: str) -> dict[str, Any]:
    return dict(_load(roles_dir() / role / "vars" / "main.yml") or {})


def variables(host: Mapping[str, Any], roles: Sequence[str], *,
              task: Mapping[str, Any] | None = None,
              node: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The variables a task of `roles` sees (see the module's docstring for the layers)."""
    out: dict[str, Any] = {}
    for role in roles:
        out.update(role_defaults(role))
    out.update(host)
    for role in roles:
        out.update(role_vars(role))
    out.update(task or {})
    out.update(node or {})
    return out


def value(variables: Mapping[str, Any], expression: str) -> Any:
    """`{{ expression }}` evaluated with these variables, as plain data."""
    try:
        result = _templar(variables).template(_trust("{{ " + expression + " }}"))
    except _errors() as exc:
        raise RenderError(f"{expression}: {_message(exc)}") from None
    return _plain(result)


def _plain(data: Any) -> Any:
    """Ansible's tagged and lazy values as plain JSON data."""
    return json.loads(json.dumps(data, default=str))


def _message(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# --------------------------------------------------------------------------- the role's tasks


def role_tasks(role: str) -> Iterator[Mapping[str, Any]]:
    """Every task of the role's tasks/*.yml, those inside blocks included."""
    def walk(items: Any) -> Iterator[Mapping[str, Any]]:
        for item in items or []:
            if not isinstance(item, Mapping):
                continue
            if "block" in item:
                for key in ("block", "rescue", "always"):
                    yield from walk(item.get(key))
            else:
                yield item
    for path in sorted((roles_dir() / role / "tasks").glob("*.yml")):
        yield from walk(_load(path))


def _module_args(task: Mapping[str, Any], *modules: str) -> Mapping[str, Any] | None:
    for name in modules:
        for key in (f"ansible.builtin.{name}", f"ansible.legacy.{name}", name):
            args = task.get(key)
            if isinstance(args, Mapping):
                return args
    return None


def include_vars(role: str, included: str) -> dict[str, Any]:
    """The `vars:` of the role's task that includes role `included` (as loaded: templates)."""
    for task in role_tasks(role):
        args = _module_args(task, "include_role", "import_role")
        if args is not None and args.get("name") == included:
            return dict(task.get("vars") or {})
    raise RenderError(f"role {role} includes no role {included}")


def copy_content(role: str, dest: str) -> Any:
    """The `content:` of the role's `ansible.builtin.copy` task that writes `dest`."""
    for task in role_tasks(role):
        args = _module_args(task, "copy")
        if args is not None and str(args.get("dest")) == dest and "content" in args:
            return args["content"]
    raise RenderError(f"role {role} has no copy task with content for {dest}")


# --------------------------------------------------------------------------- rendering


def template_path(role: str, src: str) -> Path:
    return roles_dir() / role / "templates" / src


def _volatile(source: str) -> set[str]:
    """The VOLATILE names the template reads (anywhere: a conservative check); parsed by
    Jinja with the extensions Ansible may enable (the template itself is rendered by Ansible)."""
    import jinja2
    from jinja2 import nodes

    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.do", "jinja2.ext.loopcontrols"]
                                 ).parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"not a valid template: {exc}") from None
    return {n.name for n in ast.find_all(nodes.Name) if n.ctx == "load"} & VOLATILE


def render(role: str, src: str, variables: Mapping[str, Any], *, dest: str) -> bytes:
    """The bytes `ansible.builtin.template: {src: SRC, dest: DEST}` writes in role `role`."""
    path = template_path(role, src)
    try:
        source = path.read_text("utf-8")
    except OSError as exc:
        raise RenderError(f"{path}: {exc.strerror}") from None
    volatile = _volatile(source)
    if volatile:
        raise RenderError(f"{path} uses {', '.join(sorted(volatile))}: its bytes change "
                          f"with the run")
    from ansible.template import generate_ansible_template_vars

    temp_vars = dict(variables)
    added = dict(generate_ansible_template_vars(src, str(path), dest))
    if _trusting() and "ansible_managed" in variables:
        added.pop("ansible_managed", None)  # 2.19+: a variable of the user's wins
    temp_vars.update(added)
    overrides = {"trim_blocks": TRIM_BLOCKS, "lstrip_blocks": LSTRIP_BLOCKS}
    # the action's search path: the role's and the template's folders, each with templates/
    searchpath = [str(p) for d in (roles_dir() / role, path.parent) for p in (d / "templates", d)]
    try:
        if _trusting():
            templar = _templar(temp_vars, searchpath)
            text = templar.template(_trust(source), escape_backslashes=False,
                                    overrides={**overrides,
                                               "newline_sequence": NEWLINE_SEQUENCE})
        else:  # 2.17 and 2.18 (not exercised here: the venv pins 2.19)
            from ansible.template import AnsibleEnvironment

            templar = _templar(variables).copy_with_new_env(
                environment_class=AnsibleEnvironment, searchpath=searchpath,
                newline_sequence=NEWLINE_SEQUENCE, available_variables=temp_vars)
            text = templar.do_template(source, preserve_trailing_newlines=True,
                                       escape_backslashes=False, overrides=overrides)
    except _errors() as exc:
        raise RenderError(f"{path}: {_message(exc)}") from None
    return str(text if text is not None else "").encode(OUTPUT_ENCODING)


def render_content(content: Any, variables: Mapping[str, Any]) -> bytes:
    """The bytes `ansible.builtin.copy: {content: CONTENT}` writes (the argument templated
    as the task's arguments are, a list or mapping written as JSON)."""
    try:
        data = _templar(variables).template(content)
    except _errors() as exc:
        raise RenderError(_message(exc)) from None
    if isinstance(data, (dict, list)):
        return json.dumps(data).encode()
    return str(data).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["RenderError", "copy_content", "include_vars", "render", "render_content",
           "role_defaults", "role_tasks", "role_vars", "roles_dir", "sha256", "template_path",
           "value", "variables"]
