"""Mirror and index credentials (issue 13, item 4): where they come from, that they are never
printed, and how they reach the roles (a 0600 extra-vars file, deleted after the play)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from stacklock.core.credentials import (
    Credentials,
    Login,
    env_key,
    extra_vars_args,
    load_credentials,
)
from stacklock.core.manifest import parse_manifest
from stacklock.core.render import repo_root
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.unit

SECRET = "pl4nted-S3cret:with:colons"
ROLES = repo_root() / "ansible" / "roles"


def _manifest() -> Any:
    text = (repo_root() / "examples" / "static.yaml").read_text("utf-8")
    data = yaml.safe_load(text)
    data["package_sources"] = {
        "apt": [{"name": "internal-debian", "uri": "https://mirror.example.org/debian/",
                 "suite": "bookworm", "components": ["main"], "trusted": True}],
        "pip": {"index_url": "https://pypi.internal.example:8443/simple/",
                "extra_index_urls": ["https://download.pytorch.org/whl/cu130"]},
    }
    return parse_manifest(yaml.safe_dump(data))


def test_env_keys() -> None:
    assert env_key("internal-debian") == "INTERNAL_DEBIAN"
    assert env_key("pypi.internal.example") == "PYPI_INTERNAL_EXAMPLE"


def test_from_the_environment() -> None:
    creds = load_credentials(_manifest(), {
        "STACKLOCK_APT_AUTH_INTERNAL_DEBIAN": f"ci:{SECRET}",
        "STACKLOCK_PIP_AUTH": f"pip:{SECRET}",
        "STACKLOCK_PIP_AUTH_DOWNLOAD_PYTORCH_ORG": f"torch:{SECRET}",
    })
    assert creds.apt == {"internal-debian": Login("ci", SECRET)}
    assert creds.pip == {"pypi.internal.example": Login("pip", SECRET),
                         "download.pytorch.org": Login("torch", SECRET)}
    assert SECRET not in repr(creds) and SECRET not in str(creds)
    assert SECRET not in repr(creds.apt["internal-debian"])
    assert creds.extra_vars()["stacklock_apt_auth"] == {
        "internal-debian": {"login": "ci", "password": SECRET}}
    assert "machine pypi.internal.example login pip password " in creds.netrc_text()


def test_a_specific_host_variable_wins_over_the_index_default() -> None:
    creds = load_credentials(_manifest(), {
        "STACKLOCK_PIP_AUTH": "a:b", "STACKLOCK_PIP_AUTH_PYPI_INTERNAL_EXAMPLE": "c:d"})
    assert creds.pip["pypi.internal.example"] == Login("c", "d")


def test_nothing_set_is_empty() -> None:
    creds = load_credentials(_manifest(), {})
    assert creds.empty and creds.extra_vars() == {}


@pytest.mark.parametrize(("environ", "path"), [
    ({"STACKLOCK_APT_AUTH_INTERNAL_DEBIAN": "no-colon"}, "STACKLOCK_APT_AUTH_INTERNAL_DEBIAN"),
    ({"STACKLOCK_APT_AUTH_INTERNAL_DEBIAN": "ci:has space"},
     "STACKLOCK_APT_AUTH_INTERNAL_DEBIAN"),
    ({"STACKLOCK_APT_AUTH_OTHER": "ci:x"}, "STACKLOCK_APT_AUTH_OTHER"),
    ({"STACKLOCK_PIP_AUTH": ":x"}, "STACKLOCK_PIP_AUTH"),
])
def test_unusable_values_are_exit_2_naming_the_variable_not_the_value(
        environ: dict[str, str], path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_credentials(_manifest(), environ)
    assert info.value.exit_code == 2
    assert [p.path for p in info.value.problems] == [path]
    text = info.value.message + " ".join(p.render() for p in info.value.problems)
    assert "has space" not in text


def _secrets_file(tmp_path: Path, mode: int, data: Any) -> Path:
    path = tmp_path / "secrets.yml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(mode)
    return path


def test_secrets_file_0600(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, 0o600, {
        "stacklock_apt_auth": {"internal-debian": {"login": "ci", "password": SECRET}},
        "stacklock_pip_auth": {"pypi.internal.example": {"login": "p", "password": SECRET}}})
    creds = load_credentials(_manifest(), {"STACKLOCK_SECRETS_FILE": str(path)})
    assert creds.apt["internal-debian"].password == SECRET
    assert creds.pip["pypi.internal.example"].login == "p"
    # the environment wins over the file
    creds = load_credentials(_manifest(), {"STACKLOCK_SECRETS_FILE": str(path),
                                           "STACKLOCK_APT_AUTH_INTERNAL_DEBIAN": "env:pw"})
    assert creds.apt["internal-debian"] == Login("env", "pw")


@pytest.mark.parametrize("mode", [0o640, 0o644, 0o604, 0o660])
def test_a_group_or_world_readable_secrets_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secrets_file(tmp_path, mode, {"stacklock_apt_auth": {}})
    with pytest.raises(InvalidInput) as info:
        load_credentials(_manifest(), {"STACKLOCK_SECRETS_FILE": str(path)})
    assert info.value.exit_code == 2
    assert str(path) in info.value.message
    assert info.value.problems[0].hint == f"chmod 600 {path}"


def test_secrets_file_names_must_be_the_manifests(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, 0o600, {
        "stacklock_apt_auth": {"typo": {"login": "a", "password": SECRET}},
        "extra": 1})
    with pytest.raises(InvalidInput) as info:
        load_credentials(_manifest(), {"STACKLOCK_SECRETS_FILE": str(path)})
    paths = sorted(p.path for p in info.value.problems)
    assert paths == [f"{path}: extra", f"{path}: stacklock_apt_auth.typo"]
    assert SECRET not in " ".join(p.render() for p in info.value.problems)


def test_invalid_yaml_does_not_quote_the_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yml"
    path.write_text(f"stacklock_apt_auth: {{internal-debian: {{login: a, password: {SECRET}\n")
    path.chmod(0o600)
    with pytest.raises(InvalidInput) as info:
        load_credentials(_manifest(), {"STACKLOCK_SECRETS_FILE": str(path)})
    assert SECRET not in info.value.message + " ".join(p.render() for p in info.value.problems)


def test_a_vault_file_is_passed_to_ansible_unread(tmp_path: Path) -> None:
    path = tmp_path / "vault.yml"
    path.write_text("$ANSIBLE_VAULT;1.1;AES256\n6162636465\n")
    path.chmod(0o600)
    creds = load_credentials(_manifest(), {"STACKLOCK_SECRETS_FILE": str(path)})
    assert creds.vault_file == path and not creds.empty
    with extra_vars_args(creds) as args:
        assert args == ["-e", f"@{path}"]


def test_extra_vars_file_is_private_and_removed() -> None:
    creds = Credentials(apt={"internal-debian": Login("ci", SECRET)})
    with extra_vars_args(creds) as args:
        assert args[0] == "-e" and args[1].startswith("@")
        path = Path(args[1][1:])
        assert SECRET not in " ".join(args)  # only a path on the command line
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert json.loads(path.read_text())["stacklock_apt_auth"]["internal-debian"][
            "password"] == SECRET
    assert not path.exists() and not path.parent.exists()
    with extra_vars_args(Credentials()) as args:
        assert args == []


# --------------------------------------------------------------------------- the roles


def _tasks(path: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(items: Any) -> None:
        for task in items or []:
            found.append(task)
            for key in ("block", "rescue", "always"):
                walk(task.get(key))

    walk(yaml.safe_load(path.read_text("utf-8")))
    return found


@pytest.mark.parametrize(("tasks", "var", "template"), [
    (ROLES / "stacklock_packages" / "tasks" / "main.yml", "_stacklock_packages_auth",
     "auth.conf.j2"),
    (ROLES / "torchserve" / "tasks" / "install.yml", "_torchserve_pip_auth", "pip.netrc.j2"),
])
def test_every_task_that_touches_credentials_is_no_log(tasks: Path, var: str,
                                                       template: str) -> None:
    # a task touches them when it uses their values (not only `when: ... | length > 0`)
    touching = [t for t in _tasks(tasks) if "block" not in t
                and var in yaml.safe_dump({k: v for k, v in t.items() if k != "when"})]
    writers = [t for t in _tasks(tasks)
               if (t.get("ansible.builtin.template") or {}).get("src") == template]
    assert len(writers) == 1
    for task in [*touching, *writers]:
        assert task.get("no_log") not in (None, False), task["name"]
    task = writers[0]
    assert task["no_log"] is True and task["diff"] is False, task["name"]
    args = task["ansible.builtin.template"]
    assert args["mode"] == "0600" and args["owner"] == "root", task["name"]


def _render(template: Path, **context: Any) -> str:
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    return env.from_string(template.read_text("utf-8")).render(**context)


def test_apt_auth_conf_names_the_repository_uri() -> None:
    text = _render(ROLES / "stacklock_packages" / "templates" / "auth.conf.j2",
                   item={"name": "internal", "uri": "http://10.0.0.5:8080/debian/"},
                   _stacklock_packages_auth={"internal": {"login": "ci", "password": SECRET}})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    # apt uses http:// logins only when the machine names the scheme (apt_auth.conf(5))
    assert lines == [f"machine http://10.0.0.5:8080/debian/ login ci password {SECRET}"]


def test_pip_netrc_has_one_machine_per_host() -> None:
    text = _render(ROLES / "torchserve" / "templates" / "pip.netrc.j2",
                   _torchserve_pip_auth={"b.example": {"login": "u2", "password": "p2"},
                                         "a.example": {"login": "u1", "password": SECRET}})
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [f"machine a.example login u1 password {SECRET}",
                     "machine b.example login u2 password p2"]


def test_the_pip_install_reads_the_netrc() -> None:
    venv = _tasks(ROLES / "torchserve" / "tasks" / "venv.yml")
    install = [t for t in venv if "--require-hashes" in yaml.safe_dump(t) and "block" not in t]
    assert install and install[0]["environment"]["NETRC"] == "{{ torchserve_home }}/pip.netrc"


def test_files_module_modes(tmp_path: Path) -> None:
    from stacklock.core.files import atomic_write, open_append

    private = tmp_path / "out" / ".stacklock" / "audit" / "report.json"
    (tmp_path / "out" / ".stacklock").mkdir(parents=True)
    os.chmod(tmp_path / "out" / ".stacklock", 0o755)
    atomic_write(private, "{}")
    assert private.stat().st_mode & 0o777 == 0o600
    for folder in (private.parent, private.parent.parent):
        assert folder.stat().st_mode & 0o777 == 0o700
    public = atomic_write(tmp_path / "out" / "inventories" / "x.yml", "a: 1\n")
    assert public.stat().st_mode & 0o777 == 0o644
    log = tmp_path / "logs" / "run.log"
    log.parent.mkdir()
    log.write_text("old\n")
    log.chmod(0o644)
    with open_append(log) as fh:
        fh.write("new\n")
    assert log.stat().st_mode & 0o777 == 0o600 and log.read_text() == "old\nnew\n"
