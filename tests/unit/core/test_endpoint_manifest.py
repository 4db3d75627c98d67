"""The serving endpoint (environments.ENV.endpoint, docs/serving.md): the manifest's settings and
their errors, validate's refusal of plain HTTP off loopback, and what render writes for them
(paths and pins, never a secret; the AWS load balancer's four inputs, only where the module
declares them)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import render as rendermod
from stacklock.core import rules
from stacklock.core.lock import package_data, read_lock
from stacklock.core.manifest import load_manifest, parse_manifest
from stacklock.errors import ExitCode, InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
LAB = ROOT / "examples" / "lab.yaml"
ARN = "arn:aws:acm:us-east-1:111122223333:certificate/0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"
LAB_EP = {"port": 8443, "tls": {"lab_ca": True}, "tokens": {"lab": True}}


def lab_data() -> dict[str, Any]:
    data = yaml.safe_load(LAB.read_text("utf-8"))
    assert isinstance(data, dict)
    return data


def with_endpoint(endpoint: Any, env: str = "dev", data: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    data = data or lab_data()
    data["environments"][env]["endpoint"] = endpoint
    return data


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidInput) as exc:
        parse_manifest(yaml.safe_dump(data), source="test")
    assert exc.value.exit_code == ExitCode.INVALID
    return [(p.path, p.message) for p in exc.value.problems]


# --------------------------------------------------------------------------- the schema


def test_no_endpoint_is_the_default() -> None:
    data = lab_data()
    for env in data["environments"].values():
        env.pop("endpoint", None)
    m = parse_manifest(yaml.safe_dump(data))
    assert all(env.endpoint is None for env in m.environments.values())
    assert not m.stacks["lab-2026-11"].torchserve_config.allow_plain_http_inference


def test_the_lab_serves_every_environment_the_same_way() -> None:
    """examples/lab.yaml: one endpoint (lab CA, lab tokens, metrics for the lab's scrape
    token) in every environment, so the demo lab and every test lab derived from it has it."""
    m = parse_manifest(LAB.read_text("utf-8"))
    eps = [env.endpoint for env in m.environments.values()]
    assert all(ep is not None and ep.tls.lab_ca and ep.tokens.lab and ep.metrics is not None
               and ep.metrics.tokens.lab and ep.port == 8443 for ep in eps)
    assert len({ep.model_dump_json() for ep in eps if ep is not None}) == 1
    assert eps[0] is not None and eps[0].certificate_min_days == 14


def test_metrics_tokens_from_the_lab_are_lab_only() -> None:
    data = yaml.safe_load((ROOT / "examples" / "static.yaml").read_text("utf-8"))
    env = next(iter(data["environments"]))
    data["environments"][env]["endpoint"] = {
        "tls": {"cert_file": "c.pem", "key_file": "c.key"}, "tokens": {"file": "t"},
        "metrics": {"tokens": {"lab": True}}}
    assert any("lab environments only" in msg for _, msg in problems(data))


def test_an_endpoint_with_its_defaults() -> None:
    m = parse_manifest(yaml.safe_dump(with_endpoint({"tls": {"lab_ca": True},
                                                      "tokens": {"lab": True}})))
    ep = m.environments["dev"].endpoint
    assert ep is not None
    assert (ep.port, ep.client_auth, ep.health_check_path) == (443, "token", "/ping")


@pytest.mark.parametrize(("endpoint", "path", "words"), [
    ({"tls": {"cert_file": "a.pem"}, "tokens": {"lab": True}},
     "environments.dev.endpoint.tls", "cert_file and key_file go together"),
    ({"tls": {}, "tokens": {"lab": True}},
     "environments.dev.endpoint.tls", "name where the node certificate comes from"),
    ({"tls": {"lab_ca": True, "secret": "stacklock_endpoint_tls"}, "tokens": {"lab": True}},
     "environments.dev.endpoint.tls", "secret and lab_ca are given"),
    ({"tls": {"lab_ca": True}, "tokens": {}},
     "environments.dev.endpoint.tokens", "exactly one source"),
    ({"tls": {"lab_ca": True}, "tokens": {"lab": True, "file": "t"}},
     "environments.dev.endpoint.tokens", "file and lab"),
    ({"tls": {"secret": "my_tls"}, "tokens": {"lab": True}},
     "environments.dev.endpoint.tls.secret", "is not"),
    ({"tls": {"lab_ca": True}, "tokens": {"lab": True}, "port": 0},
     "environments.dev.endpoint.port", "greater than or equal to 1"),
    ({"tls": {"lab_ca": True}, "tokens": {"lab": True}, "client_auth": "mtls"},
     "environments.dev.endpoint.client_auth", "'token'"),
    ({"tls": {"lab_ca": True}, "tokens": {"lab": True}, "health_check_path": "ping"},
     "environments.dev.endpoint.health_check_path", "ping"),
    ({"tls": {"lab_ca": True}, "tokens": {"lab": True}, "token": "x" * 40},
     "environments.dev.endpoint.token", "unknown key"),
    ({"tls": {"lab_ca": True, "acm_certificate_arn": ARN}, "tokens": {"lab": True}},
     "environments.dev", "acm_certificate_arn names the AWS load balancer"),
])
def test_endpoint_errors_name_the_field(endpoint: dict[str, Any], path: str, words: str) -> None:
    found = problems(with_endpoint(endpoint))
    assert any(p == path and words in m for p, m in found), found


def test_lab_only_sources_are_refused_elsewhere() -> None:
    data = yaml.safe_load((ROOT / "examples" / "static.yaml").read_text("utf-8"))
    env = next(iter(data["environments"]))
    data["environments"][env]["endpoint"] = LAB_EP
    found = problems(data)
    assert any(p == f"environments.{env}" and "lab_ca is the lab's own CA" in m
               for p, m in found), found


def test_aws_needs_the_load_balancers_acm_certificate() -> None:
    data = yaml.safe_load((ROOT / "stacklock.yaml").read_text("utf-8"))
    env = next(iter(data["environments"]))
    data["environments"][env]["endpoint"] = {"tls": {"secret": "stacklock_endpoint_tls"},
                                             "tokens": {"secret": "stacklock_endpoint_tokens"}}
    found = problems(data)
    assert any(p == f"environments.{env}" and "acm_certificate_arn is needed on AWS" in m
               for p, m in found), found


@pytest.mark.parametrize("field", ["tls.cert_file", "tls.key_file", "tokens.file"])
@pytest.mark.parametrize("value", ["/etc/ssl/private/node.key", "../outside/node.key"])
def test_endpoint_files_are_confined_like_every_manifest_path(field: str, value: str) -> None:
    ep: dict[str, Any] = {"tls": {"cert_file": "tls/c.pem", "key_file": "tls/k.pem"},
                          "tokens": {"file": "tls/tokens"}}
    section, key = field.split(".")
    ep[section][key] = value
    found = problems(with_endpoint(ep))
    assert any(p == f"environments.dev.endpoint.{field}" and "outside the manifest's folder" in m
               for p, m in found), found


def test_an_endpoint_file_reached_through_a_symlink_is_refused(tmp_path: Path) -> None:
    case = lab_copy(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "node.key").write_text("not a key\n")
    (case.parent / "tls").symlink_to(outside)
    write(case, with_endpoint({"tls": {"cert_file": "tls/node.pem", "key_file": "tls/node.key"},
                               "tokens": {"lab": True}}))
    with pytest.raises(InvalidInput) as exc:
        load_manifest(case)
    assert any(p.path == "environments.dev.endpoint.tls.key_file"
               and "through a symbolic link" in p.message for p in exc.value.problems)


# --------------------------------------------------------------------------- validate


def test_plain_http_off_loopback_is_refused_unless_opted_out() -> None:
    data = lab_data()
    cfg = data["stacks"]["lab-2026-11"]["torchserve_config"]
    cfg["inference_address"] = "http://0.0.0.0:8080"
    found = [p for p in rules.check(parse_manifest(yaml.safe_dump(data)))
             if p.rule == "torchserve-plain-http"]
    assert [(p.severity, p.path) for p in found] == [
        ("error", "stacks.lab-2026-11.torchserve_config.inference_address")]
    assert "allow_plain_http_inference: true" in found[0].hint
    cfg["allow_plain_http_inference"] = True
    assert not [p for p in rules.check(parse_manifest(yaml.safe_dump(data)))
                if p.rule == "torchserve-plain-http"]


def test_validate_exits_2_naming_the_field(tmp_path: Path) -> None:
    import subprocess
    import sys

    case = lab_copy(tmp_path)
    data = lab_data()
    data["stacks"]["lab-2026-11"]["torchserve_config"]["inference_address"] = (
        "http://10.0.0.5:8080")
    write(case, data)
    result = subprocess.run([sys.executable, "-m", "stacklock.cli", "-m", str(case), "validate"],
                            capture_output=True, text=True, check=False, timeout=120,
                            env={**os.environ, "STACKLOCK_HOME": str(ROOT), "NO_COLOR": "1",
                                 "COLUMNS": "200"})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "torchserve_config.inference_address" in output
    assert "allow_plain_http_inference" in output


# --------------------------------------------------------------------------- render


def lab_copy(tmp_path: Path) -> Path:
    case = tmp_path / "case"
    case.mkdir()
    shutil.copytree(ROOT / "examples" / "models", case / "models")
    shutil.copy(ROOT / "examples" / "lab.lock", case / "lab.lock")
    shutil.copy(LAB, case / "lab.yaml")
    return case / "lab.yaml"


def write(path: Path, data: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def render(path: Path) -> dict[str, str]:
    loaded = load_manifest(path)
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    return rendermod.render_tree(loaded, lock)


def without_endpoints(data: dict[str, Any]) -> dict[str, Any]:
    for env in data["environments"].values():
        env.pop("endpoint", None)
    return data


def test_render_without_an_endpoint_writes_no_endpoint_variable(tmp_path: Path) -> None:
    case = lab_copy(tmp_path)
    write(case, without_endpoints(lab_data()))
    tree = render(case)
    assert not any("serving_endpoint" in text for text in tree.values())


def test_render_writes_paths_and_pins_never_a_secret(tmp_path: Path) -> None:
    case = lab_copy(tmp_path)
    tls = case.parent / "tls"
    tls.mkdir()
    secret_key = "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"
    token = "f" * 64
    (tls / "prod.pem").write_text("-----BEGIN CERTIFICATE-----\nCERT\n")
    (tls / "prod.key").write_text(secret_key)
    (tls / "prod.tokens").write_text(token + "\n")
    data = with_endpoint(LAB_EP, data=without_endpoints(lab_data()))
    data = with_endpoint({"port": 8443, "tls": {"cert_file": "tls/prod.pem",
                                                "key_file": "tls/prod.key"},
                          "tokens": {"file": "tls/prod.tokens"}}, "prod", data)
    write(case, data)
    tree = render(case)
    for text in tree.values():
        assert "SECRETKEYBYTES" not in text and token not in text
    dev = yaml.safe_load(tree["inventories/dev/group_vars/dev/stacklock.yml"])
    prod = yaml.safe_load(tree["inventories/prod/group_vars/prod/stacklock.yml"])
    staging = tree["inventories/staging/group_vars/staging/stacklock.yml"]
    assert "serving_endpoint" not in staging
    nginx = package_data()["endpoint"]["debian12"]
    assert dev["serving_endpoint_packages"] == nginx == prod["serving_endpoint_packages"]
    assert dev["serving_endpoint_port"] == 8443 and dev["serving_endpoint_enabled"] is True
    assert dev["serving_endpoint_upstream"] == "http://127.0.0.1:8080"
    assert (dev["serving_endpoint_tls_source"], dev["serving_endpoint_tokens_source"]) == (
        "lab_ca", "lab")
    assert dev["serving_endpoint_lab_dir"] == "{{ inventory_dir }}/../../.stacklock/endpoint"
    assert prod["serving_endpoint_tls_key_src"] == "{{ inventory_dir }}/../../../tls/prod.key"
    assert prod["serving_endpoint_tokens_src"] == "{{ inventory_dir }}/../../../tls/prod.tokens"
    assert "serving_endpoint_lab_dir" not in prod
    # the lab's private state folder is one git ignores
    ignored = (ROOT / ".gitignore").read_text()
    assert re.search(r"^\.stacklock/$", ignored, re.M) and rendermod.LAB_ENDPOINT_DIR.startswith(
        ".stacklock/")


def test_an_os_without_a_known_nginx_needs_its_version(tmp_path: Path) -> None:
    case = lab_copy(tmp_path)
    write(case, with_endpoint(LAB_EP))
    loaded = load_manifest(case)
    # as if packages.yaml knew no nginx for Debian 12
    ep = loaded.manifest.environments["dev"].endpoint
    assert ep is not None
    original = package_data()
    try:
        original["endpoint"], saved = {}, original["endpoint"]
        with pytest.raises(InvalidInput) as exc:
            rendermod.endpoint_packages(loaded, "dev", ep)
        assert exc.value.problems[0].path == "environments.dev.endpoint.nginx_apt_version"
        pinned = rendermod.endpoint_packages(
            loaded, "dev", ep.model_copy(update={"nginx_apt_version": "1.24.0-2ubuntu7.5"}))
        assert pinned == [{"name": "nginx", "version": "1.24.0-2ubuntu7.5"},
                          {"name": "nginx-common", "version": "1.24.0-2ubuntu7.5"}]
    finally:
        original["endpoint"] = saved


# --------------------------------------------------------------------------- the AWS module


def _aws_case(tmp_path: Path, endpoint: dict[str, Any] | None) -> Path:
    case = tmp_path / "aws"
    shutil.copytree(ROOT, case, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".cache", "tests", "docs", "examples", "benchmarks", "inventories",
        "terraform", "ee", "*.pyc", "__pycache__", ".stacklock"))
    data = yaml.safe_load((ROOT / "stacklock.yaml").read_text("utf-8"))
    if endpoint is not None:
        for env in data["environments"].values():
            env["endpoint"] = endpoint
    write(case / "stacklock.yaml", data)
    return case / "stacklock.yaml"


def _home(tmp_path: Path, declares: bool) -> Path:
    """A stacklock home whose gpu_node_aws module declares the endpoint variables or not."""
    home = tmp_path / "home"
    shutil.copytree(ROOT / "terraform" / "modules", home / "terraform" / "modules")
    variables = home / "terraform" / "modules" / "gpu_node_aws" / "variables.tf"
    text = variables.read_text()
    text = re.sub(r'(?ms)^variable "endpoint_[a-z_]+" \{.*?^\}\n', "", text)
    if declares:
        for name, kind in (("endpoint_enabled", "bool"), ("endpoint_port", "number"),
                           ("endpoint_acm_certificate_arn", "string"),
                           ("endpoint_health_check_path", "string")):
            text += f'\nvariable "{name}" {{\n  type = {kind}\n}}\n'
    variables.write_text(text)
    return home


ENDPOINT_AWS = {"tls": {"secret": "stacklock_endpoint_tls", "acm_certificate_arn": ARN},
                "tokens": {"secret": "stacklock_endpoint_tokens"},
                # Ubuntu's nginx: packages.yaml records none, the manifest names it
                "nginx_apt_version": "1.24.0-2ubuntu7.5"}


@pytest.mark.parametrize("declares", [False, True])
def test_aws_without_an_endpoint_renders_as_before(tmp_path: Path, declares: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKLOCK_HOME", str(_home(tmp_path, declares)))
    loaded = load_manifest(ROOT / "stacklock.yaml")
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    tree = rendermod.render_tree(loaded, lock)
    assert not any(re.search(r"^\s*endpoint_[a-z_]+\s*=", text, re.M)
                   for rel, text in tree.items() if rel.endswith(".tf"))


def test_aws_endpoint_needs_a_module_that_declares_it(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    case = _aws_case(tmp_path, ENDPOINT_AWS)
    shutil.copy(ROOT / "stacklock.lock", case.with_suffix(".lock"))
    monkeypatch.setenv("STACKLOCK_HOME", str(_home(tmp_path, declares=False)))
    loaded = load_manifest(case)
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    with pytest.raises(InvalidInput) as exc:
        rendermod.render_tree(loaded, lock)
    (problem,) = exc.value.problems
    assert problem.path.startswith("environments.") and problem.path.endswith(".endpoint")
    assert "endpoint_acm_certificate_arn" in problem.message


def test_aws_endpoint_passes_exactly_the_four_inputs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    case = _aws_case(tmp_path, {**ENDPOINT_AWS, "port": 8443, "health_check_path": "/ping"})
    shutil.copy(ROOT / "stacklock.lock", case.with_suffix(".lock"))
    monkeypatch.setenv("STACKLOCK_HOME", str(_home(tmp_path, declares=True)))
    loaded = load_manifest(case)
    lock = read_lock(loaded.lock_path)
    assert lock is not None
    tree = rendermod.render_tree(loaded, lock)
    mains = {rel: text for rel, text in tree.items() if rel.endswith("/main.tf")}
    assert mains
    for text in mains.values():
        found = dict(re.findall(r"^  (endpoint_[a-z_]+) += (.+)$", text, re.M))
        assert found == {"endpoint_enabled": "true", "endpoint_port": "8443",
                         "endpoint_acm_certificate_arn": f'"{ARN}"',
                         "endpoint_health_check_path": '"/ping"'}
    if shutil.which("terraform"):
        import subprocess

        folder = tmp_path / "fmt"
        folder.mkdir()
        (folder / "main.tf").write_text(next(iter(mains.values())))
        res = subprocess.run(["terraform", "fmt", "-check", "-diff", str(folder)],
                             capture_output=True, text=True, check=False,
                             env={**os.environ, "TF_IN_AUTOMATION": "1"})
        assert res.returncode == 0, res.stdout + res.stderr
