"""Hostile and odd manifests (issue 13, item 3).

(a) A few hundred manifests generated from one valid base that sets every free-text field,
    each with one hostile value injected (line breaks, control characters, `${x}`, `%{x}`,
    `{{ x }}`, `{% x %}`, quotes, backslashes, commas, credentials in URLs, numeric host
    forms, whitespace-variant names, coerced numbers and booleans): each is refused by
    `stacklock validate` with exit 2, an ERROR naming the field, no internal error, quickly.
(b) The accepted-but-unusual values (dots, dashes, underscores, '+', '~', ':' in versions,
    IPv6 addresses, ports) are rendered and the output parsed with real parsers (terraform
    fmt and python-hcl2 for .tf, yaml.safe_load for group_vars, a java.util.Properties
    parser for config.properties, a sources.list parser for apt sources): the structure is
    the one the templates mean, and every value comes back exactly as written.
(c) The writers escape on their own (defence in depth): HCL, properties, group_vars.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hcl2
import jinja2
import pytest
import yaml

from stacklock.cli import main
from stacklock.core.lock import build_lock, config_text
from stacklock.core.manifest import LoadedManifest, parse_manifest
from stacklock.core.render import _yaml, hcl, render_tree

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STACK = "stacks.serving"
AMIS = {"serving": {"us-east-1": "ami-0123456789abcdef0"}}


def base() -> dict[str, Any]:
    """A valid manifest with a value in every free-text field (all three providers)."""
    return {
        "version": 1,
        "project": "hostile-test",
        "output_dir": "out",
        "package_sources": {
            "apt": [{
                "name": "mirror",
                "uri": "https://mirror.example.com/debian",
                "suite": "bookworm",
                "components": ["main", "contrib"],
                "signing_key": "keys/mirror.asc",
            }],
            "pip": {
                "index_url": "https://pypi.example.com/simple",
                "extra_index_urls": ["https://download.example.com/whl/cu130"],
                "find_links": ["https://wheels.example.com/links"],
                "trusted_hosts": ["pypi.example.com"],
            },
            "ca_bundle": "certs/ca.pem",
        },
        "stacks": {"serving": {
            "os": {"distribution": "ubuntu", "release": "24.04"},
            "nvidia_driver": {"version": "580.95.05", "kernel_module": "open",
                              "apt_version": "580.95.05-0ubuntu1"},
            "cuda": {"version": "13.0.2", "apt_version": "13.0.2-1"},
            "docker": {"version": "28.5.1", "apt_version": "5:28.5.1-1~ubuntu.24.04~noble"},
            "nvidia_container_toolkit": {"version": "1.18.0", "apt_version": "1.18.0-1"},
            "python": {"version": "3.12"},
            "torch": {"version": "2.9.1+cu130"},
            "torchserve": {"version": "0.12.0", "model_archiver_version": "0.12.0"},
            "java": {"version": "17", "package": "openjdk-17-jre-headless",
                     "apt_version": "17.0.16+8~us1-0ubuntu1~24.04.1"},
            "models": [{"name": "tiny-linear", "version": "1.0",
                        "archive": "https://models.example.com/tiny-linear.mar",
                        "sha256": "5f1c0d0a3b9e8c7d6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e"}],
            "torchserve_config": {
                "inference_address": "http://127.0.0.1:8080",
                "management_address": "http://127.0.0.1:8081",
                "metrics_address": "http://127.0.0.1:8082",
                "default_workers_per_model": 2,
                "job_queue_size": 100,
                "allowed_urls": [r"https://models\.example\.com/.*"],
            },
            "ami": {"owner": "099720109477",
                    "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20251022"},
        }},
        "environments": {
            "cloud": {
                "provider": "aws", "stack": "serving", "region": "us-east-1",
                "instance_type": "g6e.xlarge", "count": 2, "root_volume_size": 200,
                "key_name": "ops-key", "admin_cidrs": ["203.0.113.0/24"],
                "client_cidrs": ["198.51.100.0/24"], "availability_zones": ["us-east-1a"],
                "access": "bastion", "bastion": "ops@bastion.example.com:2222",
                "state_bucket": "acme-tfstate", "state_region": "us-east-1",
            },
            "onprem": {
                "provider": "static", "stack": "serving",
                "hosts": [
                    {"name": "gpu-1", "address": "192.0.2.10", "user": "deploy", "port": 22},
                    {"name": "gpu-2", "address": "gpu-2.example.com"},
                ],
            },
            "lab": {"provider": "lab", "stack": "serving", "count": 1},
        },
        "lab": {"network": "10.213.0.0/16", "image": "stacklock-lab:bookworm",
                "mirror_port": 8700},
    }


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _leaves(v, (*path, i))
    else:
        yield path, data


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else part)
    return out


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


STRINGS = [(p, v) for p, v in _leaves(base()) if isinstance(v, str)]
URL_FIELDS = {"uri", "index_url", "extra_index_urls", "find_links", "archive"}
REGEX_FIELDS = {"allowed_urls"}
HOST_FIELDS = {"address", "trusted_hosts"}

# Refused in any string of the manifest: (label, how to make the hostile value from a good one)
EVERYWHERE: list[tuple[str, Callable[[str], str]]] = [
    ("newline", lambda v: v + "\n  injected: true"),
    ("cr", lambda v: v + "\rx"),
    ("tab", lambda v: v[:1] + "\t" + v[1:]),
    ("nul", lambda v: v + "\x00"),
    ("bell", lambda v: v + "\x07"),
    ("escape", lambda v: v + "\x1b[31m"),
    ("del", lambda v: v + "\x7f"),
    ("line-separator", lambda v: v + "\u2028x"),
    ("terraform-interpolation", lambda v: v + "${file(\"/etc/passwd\")}"),
    ("terraform-directive", lambda v: v + "%{ if true }x%{ endif }"),
    ("jinja-expression", lambda v: v + "{{ lookup('env','HOME') }}"),
    ("jinja-statement", lambda v: v + "{% raw %}"),
    ("jinja-comment", lambda v: v + "{# x #}"),
]
# Refused where the field's grammar has no place for them (not in regexes, not in URLs)
GRAMMAR: list[tuple[str, Callable[[str], str], set[str]]] = [
    ("double-quote", lambda v: v + '"', REGEX_FIELDS),
    ("backslash", lambda v: v + "\\", REGEX_FIELDS),
    ("space", lambda v: v + " x", REGEX_FIELDS | {"name"}),
    ("comma", lambda v: v + ",x", URL_FIELDS),
]


def _cases() -> list[tuple[str, dict[str, Any], str]]:
    """Every string field gets 3 of the EVERYWHERE classes and 2 of the GRAMMAR ones, in
    rotation, so that each class meets many fields and the test stays fast."""
    cases: list[tuple[str, dict[str, Any], str]] = []
    for i, (path, value) in enumerate(STRINGS):
        field = next(p for p in reversed(path) if isinstance(p, str))
        where = _dotted(path)
        if field == "provider":  # the tag of the environment's kind: the error names the env
            where = _dotted(path[:-1])
        for k in range(3):
            label, make = EVERYWHERE[(3 * i + k) % len(EVERYWHERE)]
            cases.append((f"{where}:{label}", _set(base(), path, make(value)), where))
        for k in range(2):
            label, make2, skip = GRAMMAR[(2 * i + k) % len(GRAMMAR)]
            if field in skip:
                continue
            cases.append((f"{where}:{label}", _set(base(), path, make2(value)), where))
    return cases + _special_cases()


CLOUD = ("environments", "cloud")
ONPREM_HOST = ("environments", "onprem", "hosts", 0)
SRC = ("package_sources",)
TSC = ("stacks", "serving", "torchserve_config")


def _special_cases() -> list[tuple[str, dict[str, Any], str]]:
    b = base()
    out: list[tuple[str, dict[str, Any], str]] = []
    # numeric host forms that alias other hosts
    form: str
    path: tuple[Any, ...]
    bad: Any
    for form in ("3325256715", "0x7f.1", "198.051.100.11", "1.2.3", "127.1", "0177.0.0.1",
                 "2001:DB8::1", "2001:db8:0:0::1", "fe80::1%eth0", "Gpu-2.example.com",
                 "-gpu.example.com", "gpu_2.example.com", "a..b"):
        out.append((f"address:{form}", _set(b, (*ONPREM_HOST, "address"), form),
                    "environments.onprem.hosts[0].address"))
        out.append((f"bastion-host:{form}", _set(b, (*CLOUD, "bastion"), f"ops@{form}"),
                    "environments.cloud.bastion"))
        out.append((f"trusted-host:{form}",
                    _set(b, (*SRC, "pip", "trusted_hosts", 0), form),
                    "package_sources.pip.trusted_hosts[0]"))
        out.append((f"index-host:{form}",
                    _set(b, (*SRC, "pip", "index_url"), f"https://{form}/simple"),
                    "package_sources.pip.index_url"))
    # bastion: extra SSH options, no user, bad port
    for bad in ("-oProxyCommand=touch /tmp/x", "ops@host -oProxyCommand=x", "bastion.example.com",
                "ops@bastion.example.com:0", "ops@bastion.example.com:99999", "Ops@bastion",
                "ops@bastion.example.com:22:22", "ops@@bastion"):
        out.append((f"bastion:{bad}", _set(b, (*CLOUD, "bastion"), bad),
                    "environments.cloud.bastion"))
    # credentials in URLs: refused, the message says where credentials come from
    for path in ((*SRC, "pip", "index_url"), (*SRC, "pip", "extra_index_urls", 0),
                 (*SRC, "pip", "find_links", 0), (*SRC, "apt", 0, "uri"),
                 (*SRC, "apt", 0, "signing_key")):
        good = "https://user:secret@mirror.example.com/x"
        out.append((f"{_dotted(path)}:credentials", _set(b, path, good), _dotted(path)))
    for bad in ("ftp://mirror.example.com/", "https://", "https://mirror.example.com/a b",
                "https://mirror.example.com/%zz", "https://mirror.example.com:99999/",
                "https://mirror.example.com/#frag", "javascript:alert(1)"):
        out.append((f"index:{bad}", _set(b, (*SRC, "pip", "index_url"), bad),
                    "package_sources.pip.index_url"))
    # apt suites and components
    for bad in ("bookworm main", "../../etc", "[trusted=yes]", "bookworm#x"):
        out.append((f"suite:{bad}", _set(b, (*SRC, "apt", 0, "suite"), bad),
                    "package_sources.apt[0].suite"))
        out.append((f"component:{bad}", _set(b, (*SRC, "apt", 0, "components", 0), bad),
                    "package_sources.apt[0].components[0]"))
    # users, packages, versions
    for bad in ("Root", "1user", "user name", "-oX", "a" * 33, "us$er"):
        out.append((f"user:{bad}", _set(b, (*ONPREM_HOST, "user"), bad),
                    "environments.onprem.hosts[0].user"))
    for bad in ("Openjdk-17", "openjdk 17", "-openjdk", "o", "openjdk-17=1.0"):
        out.append((f"package:{bad}", _set(b, ("stacks", "serving", "java", "package"), bad),
                    "stacks.serving.java.package"))
    for comp in ("nvidia_driver", "cuda", "docker", "nvidia_container_toolkit", "java"):
        for bad in ("latest", "1.0*", ">= 1.0", "1.0 -1", "v1.0", "1.0-", "None"):
            p = ("stacks", "serving", comp, "apt_version")
            out.append((f"{comp}.apt_version:{bad}", _set(b, p, bad), _dotted(p)))
    # AWS names, zones, image, AMI
    for bad in ("us-east-1", "useast1a", "us-east-1A"):
        out.append((f"az:{bad}", _set(b, (*CLOUD, "availability_zones", 0), bad),
                    "environments.cloud.availability_zones[0]"))
    for bad in ("stacklock-lab", "stacklock-lab:latest", "Stacklock:1", "a b:1"):
        out.append((f"image:{bad}", _set(b, ("lab", "image"), bad), "lab.image"))
    for bad in ("ubuntu*", "ab", "ubuntu;rm", "x" * 129):
        out.append((f"ami:{bad}", _set(b, ("stacks", "serving", "ami", "name"), bad),
                    "stacks.serving.ami.name"))
    for cidr in ("0.0.0.0/0", "::/0"):
        out.append((f"admin-cidr:{cidr}", _set(b, (*CLOUD, "admin_cidrs"), [cidr]),
                    "environments.cloud.admin_cidrs[0]"))
    # regexes: commas, backtracking, huge repetitions, broken
    for bad in ("https://a\\.example\\.com/.*,.*", "(a+)+$", "(a|ab)*c", "(.*)*x", "a{99999999}",
                "a{1001}", "[", "x" * 600, ".*.*.*.*.*x"):
        out.append((f"allowed_urls:{bad[:20]}", _set(b, (*TSC, "allowed_urls"), [bad]),
                    "stacks.serving.torchserve_config.allowed_urls[0]"))
    for bad in ("http://127.0.0.1:8080/x", "http://127.0.0.1", "http://127.0.0.1:0",
                "http://127.0.0.1:99999", "http://127.1:8081", "http://0x7f000001:8081"):
        out.append((f"management:{bad}", _set(b, (*TSC, "management_address"), bad),
                    "stacks.serving.torchserve_config.management_address"))
    # coerced numbers and booleans
    for path in ((*CLOUD, "count"), (*CLOUD, "root_volume_size"), (*ONPREM_HOST, "port"),
                 ("lab", "mirror_port"), ("environments", "lab", "count"),
                 (*TSC, "default_workers_per_model"), (*TSC, "job_queue_size")):
        for bad in (True, "2", 2.0, "0x10"):
            out.append((f"{_dotted(path)}:{bad!r}", _set(b, path, bad), _dotted(path)))
    for path in ((*TSC, "token_authorization"), (*SRC, "apt", 0, "trusted"), (*CLOUD, "gpu")):
        for bad in ("yes", 1, "true"):
            out.append((f"{_dotted(path)}:{bad!r}", _set(b, path, bad), _dotted(path)))
    # paths
    for bad in ("/abs/../x", "out dir", "~/$HOME"):
        out.append((f"output_dir:{bad}", _set(b, ("output_dir",), bad), "output_dir"))
    for bad in ("certs/ca pem", "certs/ca;pem"):
        out.append((f"ca_bundle:{bad}", _set(b, (*SRC, "ca_bundle"), bad),
                    "package_sources.ca_bundle"))
    # files outside the manifest's folder (issue 19): absolute, '..', file:// URLs
    for bad in ("/etc/shadow", "../secrets/ca.pem", "certs/../../ca.pem", "/etc/ssl/../shadow"):
        for path in ((*SRC, "ca_bundle"), (*SRC, "apt", 0, "signing_key"),
                     (*SRC, "pip", "find_links", 0)):
            out.append((f"{_dotted(path)}:{bad}", _set(b, path, bad), _dotted(path)))
    out.append(("find_links:file-url", _set(b, (*SRC, "pip", "find_links", 0),
                                            "file://localhost/srv/wheels"),
                "package_sources.pip.find_links[0]"))
    for bad in ("/srv/models/m.mar", "../m.mar"):
        path = ("stacks", "serving", "models", 0, "archive")
        out.append((f"archive:{bad}", _set(b, path, bad), _dotted(path)))
    # static host addresses that name no single remote host (issue 19)
    for bad in ("0.0.0.0", "::", "0.0.0.1", "224.0.0.1", "ff02::1", "255.255.255.255",
                "127.0.0.1", "127.1.2.3", "::1", "::ffff:7f00:1", "localhost", "a.localhost"):
        out.append((f"address:{bad}", _set(b, (*ONPREM_HOST, "address"), bad),
                    "environments.onprem.hosts[0].address"))
    return out


CASES = _cases()


def _name_cases() -> list[tuple[str, str, str]]:
    """Whitespace and case variants of names: (label, manifest text, path)."""
    text = yaml.safe_dump(base(), sort_keys=False)
    out = []
    dup_env = text.replace("  lab:\n    provider: lab", "  'lab ':\n    provider: lab\n"
                           "    stack: serving\n  lab:\n    provider: lab", 1)
    out.append(("env-space", dup_env, "environments.lab"))
    dup_stack = text.replace("stacks:\n", "stacks:\n  ' serving': {}\n", 1)
    out.append(("stack-space", dup_stack, "stacks.serving"))
    host = yaml.safe_dump(_set(base(), ("environments", "onprem", "hosts", 1, "address"),
                               "192.0.2.10"), sort_keys=False)
    out.append(("same-address", host, "environments.onprem.hosts"))
    name = yaml.safe_dump(_set(base(), ("environments", "onprem", "hosts", 1, "name"),
                               "gpu-1."), sort_keys=False)
    out.append(("same-name-trailing-dot", name, "environments.onprem.hosts"))
    return out


NAME_CASES = _name_cases()


def _validate(tmp: Path, text: str) -> tuple[int, dict[str, Any], str]:
    manifest = tmp / "stacklock.yaml"
    manifest.write_text(text, encoding="utf-8")
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(["validate", "--manifest", str(manifest), "--format", "json"])
        except SystemExit as exc:
            code = exc.code
    assert isinstance(code, int)
    doc = json.loads(out.getvalue()) if out.getvalue().strip() else {}
    return code, doc, err.getvalue()


def test_the_base_is_valid(tmp_path: Path) -> None:
    code, doc, err = _validate(tmp_path, yaml.safe_dump(base()))
    assert code == 0, (doc, err)
    assert not [p for p in doc["problems"] if p["severity"] == "error"]


def test_enough_generated_cases() -> None:
    assert len(CASES) + len(NAME_CASES) >= 300


def test_every_hostile_manifest_is_refused_naming_its_field(tmp_path: Path) -> None:
    failures = []
    for label, data, path in CASES:
        code, doc, err = _validate(tmp_path, yaml.safe_dump(data, allow_unicode=False))
        errors = [p for p in doc.get("problems", []) if p["severity"] == "error"]
        if code != 2 or "internal error" in err or not any(p["path"] == path for p in errors):
            failures.append((label, code, path, [(p["path"], p["message"][:90])
                                                 for p in errors][:4], err[-200:]))
    assert not failures, "\n".join(map(repr, failures[:30])) + f"\n{len(failures)} failed"


@pytest.mark.parametrize(("label", "text", "path"), NAME_CASES, ids=[c[0] for c in NAME_CASES])
def test_names_that_differ_only_by_space_or_case_are_refused(
    label: str, text: str, path: str, tmp_path: Path
) -> None:
    code, doc, err = _validate(tmp_path, text)
    errors = [p for p in doc.get("problems", []) if p["severity"] == "error"]
    assert code == 2, (label, errors, err)
    assert any(p["path"] == path for p in errors), errors


def test_credentials_in_a_url_say_where_credentials_belong(tmp_path: Path) -> None:
    data = _set(base(), (*SRC, "pip", "index_url"), "https://me:s3cret@pypi.example.com/simple")
    code, doc, _err = _validate(tmp_path, yaml.safe_dump(data))
    (p,) = [p for p in doc["problems"] if p["path"] == "package_sources.pip.index_url"]
    assert code == 2 and "credentials" in p["message"] and "environment" in p["message"]
    assert "s3cret" not in json.dumps(doc), "the secret is echoed back"


def test_schema_and_rule_errors_are_reported_together(tmp_path: Path) -> None:
    data = _set(base(), ("stacks", "serving", "nvidia_container_toolkit"),
                {"version": "1.16.1"})
    data["owner"] = "someone"
    code, doc, _err = _validate(tmp_path, yaml.safe_dump(data))
    paths = {p["path"] for p in doc["problems"] if p["severity"] == "error"}
    assert code == 2
    assert {"owner", "stacks.serving.nvidia_container_toolkit.version"} <= paths


def test_yaml_merge_keys_are_standard_yaml(tmp_path: Path) -> None:
    text = yaml.safe_dump(base(), sort_keys=False).replace(
        "environments:\n", "x-defaults: &hosts\n  provider: static\n  stack: serving\n"
        "environments:\n", 1)
    text = text.replace("  onprem:\n    provider: static\n    stack: serving\n",
                        "  onprem:\n    <<: *hosts\n", 1)
    code, doc, err = _validate(tmp_path, text)
    # the anchor's own key is unknown; the merge itself is accepted
    assert code == 2 and {p["path"] for p in doc["problems"]} == {"x-defaults"}, (doc, err)
    merged = text.replace("x-defaults: &hosts\n  provider: static\n  stack: serving\n", "")
    merged = merged.replace("    <<: *hosts\n",
                            "    <<: {provider: static, stack: serving}\n    stack: serving\n")
    code, doc, err = _validate(tmp_path, merged)
    assert code == 0, (doc, err)


@pytest.mark.parametrize("what", ["deep-lists", "deep-maps", "laughs", "huge", "recursive",
                                  "directory", "fifo", "unreadable", "latin1", "huge-regex"])
def test_nothing_crashes_or_hangs_validate(what: str, tmp_path: Path) -> None:
    path = tmp_path / "stacklock.yaml"
    if what == "deep-lists":
        path.write_text("version: 1\nx: " + "[" * 10000 + "]" * 10000 + "\n")
    elif what == "deep-maps":
        path.write_text("version: 1\nx: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")
    elif what == "laughs":
        lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
        path.write_text("\n".join(lines) + "\n")
    elif what == "huge":
        path.write_text("version: 1\n" + "# padding\n" * 200_000)
    elif what == "recursive":
        path.write_text("version: 1\nx: &x [*x]\n")
    elif what == "directory":
        path.mkdir()
    elif what == "fifo":
        import os

        os.mkfifo(path)
    elif what == "unreadable":
        path.write_text("version: 1\n")
        path.chmod(0)
    elif what == "latin1":
        path.write_bytes("project: caf\xe9\n".encode("latin-1"))
    elif what == "huge-regex":
        data = _set(base(), (*TSC, "allowed_urls"), ["a{99999999}", "(a+)+$"])
        path.write_text(yaml.safe_dump(data))
    import contextlib
    import io
    import signal

    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"{what}: validate did not return within 120 s (it hangs)")

    # a hang guard, not a speed measurement: a FIFO or a catastrophic regex must not block
    # validate forever (speed is measured in benchmarks, never asserted)
    err = io.StringIO()
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as exited:
            main(["validate", "--manifest", str(path)])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if what == "unreadable" and path.is_file() and path.stat().st_mode and _root():
        pytest.skip("root reads a mode-000 file")
    assert exited.value.code == 2, err.getvalue()
    assert "internal error" not in err.getvalue() and "Traceback" not in err.getvalue()
    assert str(path) in err.getvalue() or "ERROR" in err.getvalue()


def _root() -> bool:
    import os

    return os.geteuid() == 0


# --------------------------------------------------------------------------- (b) accepted values


def unusual() -> dict[str, Any]:
    """Valid, but every unusual character each grammar allows."""
    data = base()
    data["package_sources"] = {
        "apt": [{"name": "mirror.a-1", "uri": "http://[2001:db8::5]:8080/debian/~x+y_z",
                 "suite": "stable/updates", "components": ["main", "non-free-firmware"],
                 "signing_key": "https://mirror.example.com:8443/keys/a_b~c+d.asc"},
                {"name": "flat", "uri": "https://10.0.0.5/flat/", "suite": "./",
                 "trusted": True}],
        "pip": {"index_url": "https://pypi.example.com:8443/simple/?a=1&b=2,3",
                "extra_index_urls": ["http://[2001:db8::6]/whl/cu130"],
                "find_links": ["wheels/local_dir~x+y"],
                "trusted_hosts": ["pypi.example.com:8443", "[2001:db8::6]"]},
        "ca_bundle": "/etc/ssl/certs/corp_ca-2026+1.pem",
    }
    data["allowed_paths"] = ["/etc/ssl/certs"]  # the CA bundle lives outside the manifest's folder
    s = data["stacks"]["serving"]
    s["ami"]["name"] = "ubuntu/images (hvm) [gp3] o'neil@build_x-1.2"
    s["torchserve_config"]["allowed_urls"] = [r"https://models\.example\.com/v1/[a-z0-9_-]+\.mar",
                                              r"https://s3\.amazonaws\.com/acme\x2dmodels/.*"]
    s["torchserve_config"]["inference_address"] = "http://[::1]:8443"
    s["models"][0]["archive"] = "https://models.example.com:8443/a/tiny-linear_v1.0~b+c.mar"
    env = data["environments"]["cloud"]
    env.update({"key_name": "ops.key+1=a@b-c_d", "bastion": "_ops-1@[2001:db8::1]:2222",
                "availability_zones": ["us-east-1f"], "state_bucket": "acme.tf-state"})
    data["environments"]["onprem"]["hosts"] = [
        {"name": "gpu-1.rack-2", "address": "2001:db8::10", "user": "_svc-deploy_1", "port": 2222},
        {"name": "gpu-2", "address": "gpu-2.dc-1.example.com", "user": "a"},
    ]
    data["lab"]["image"] = "registry.example.com:5000/lab/node:2026.11-b_1"
    return data


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("unusual")
    text = yaml.safe_dump(unusual(), sort_keys=False)
    loaded = LoadedManifest(parse_manifest(text), tmp / "stacklock.yaml", text)
    lock = build_lock(loaded, copy.deepcopy(AMIS))
    return render_tree(loaded, lock), lock


def _hcl_string(raw: str) -> str:
    """The value of an HCL quoted string literal as python-hcl2 returns it (with quotes)."""
    assert raw.startswith('"') and raw.endswith('"'), raw
    body = raw[1:-1]
    assert not re.search(r"(?<!\$)\$\{|(?<!%)%\{", body.replace("$${", "").replace("%%{", "")), \
        f"an interpolation or directive survived: {raw}"
    out = re.sub(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)",
                 lambda m: {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}.get(
                     m.group(1), chr(int(m.group(1)[1:], 16)) if len(m.group(1)) > 1 else "?"),
                 body)
    return out.replace("$${", "${").replace("%%{", "%{")


def _terraform_fmt(text: str) -> None:
    exe = shutil.which("terraform")
    if exe is None:
        return
    result = subprocess.run([exe, "fmt", "-"], input=text, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_unusual_values_keep_the_terraform_structure(
    rendered: tuple[dict[str, str], dict[str, Any]]
) -> None:
    tree, _lock = rendered
    plain_loaded = LoadedManifest(parse_manifest(yaml.safe_dump(base())),
                                  Path("/tmp/plain/stacklock.yaml"), "")
    plain = render_tree(plain_loaded, build_lock(plain_loaded, copy.deepcopy(AMIS)))
    want = unusual()
    for rel, text in tree.items():
        if not rel.endswith(".tf"):
            continue
        _terraform_fmt(text)
        parsed = hcl2.loads(text)
        other = hcl2.loads(plain[rel])
        assert _shape(parsed) == _shape(other), rel
    main_tf = hcl2.loads(tree["terraform/environments/cloud/main.tf"])
    call = main_tf["module"][0]['"gpu_nodes"'] if '"gpu_nodes"' in main_tf["module"][0] \
        else main_tf["module"][0]["gpu_nodes"]
    assert _hcl_string(call["key_name"]) == want["environments"]["cloud"]["key_name"]
    assert [_hcl_string(z) for z in call["availability_zones"]] == ["us-east-1f"]
    static = hcl2.loads(tree["terraform/environments/onprem/main.tf"])
    nodes = static["module"][0].get('"nodes"') or static["module"][0]["nodes"]
    hosts = nodes["hosts"]
    assert [_hcl_string(h["address"]) for h in hosts] == ["2001:db8::10", "gpu-2.dc-1.example.com"]
    assert [_hcl_string(h["user"]) for h in hosts] == ["_svc-deploy_1", "a"]
    lab = hcl2.loads(tree["terraform/environments/lab/main.tf"])
    lab_nodes = lab["module"][0].get('"nodes"') or lab["module"][0]["nodes"]
    assert _hcl_string(lab_nodes["image"]) == want["lab"]["image"]
    outputs = tree["terraform/environments/cloud/outputs.tf"]
    assert '"_ops-1@[2001:db8::1]:2222"' in outputs
    comment = [line for line in tree["terraform/environments/cloud/main.tf"].splitlines()
               if "resolved for" in line]
    assert len(comment) == 1 and comment[0].lstrip().startswith("#")


def _shape(parsed: Any) -> Any:
    """Keys and list lengths, not values: what an injection would change."""
    if isinstance(parsed, dict):
        return {k: _shape(v) for k, v in parsed.items()}
    if isinstance(parsed, list):
        return [_shape(v) for v in parsed] if all(isinstance(v, dict) for v in parsed) \
            else len(parsed)
    return type(parsed).__name__


def test_unusual_values_round_trip_through_group_vars(
    rendered: tuple[dict[str, str], dict[str, Any]]
) -> None:
    tree, _lock = rendered
    want = unusual()["package_sources"]
    for env in ("cloud", "onprem", "lab"):
        gv = yaml.safe_load(tree[f"inventories/{env}/group_vars/{env}/stacklock.yml"])
        assert gv["stacklock_pip_index_url"] == want["pip"]["index_url"]
        assert gv["stacklock_pip_extra_index_urls"] == want["pip"]["extra_index_urls"]
        assert gv["stacklock_pip_find_links"] == want["pip"]["find_links"]
        assert gv["stacklock_pip_trusted_hosts"] == want["pip"]["trusted_hosts"]
        assert gv["stacklock_ca_bundle"] == want["ca_bundle"]
        for got, repo in zip(gv["stacklock_apt_repositories"], want["apt"], strict=True):
            assert {k: got[k] for k in repo} == repo


def parse_properties(text: str) -> dict[str, str]:
    """java.util.Properties.load, for the subset a writer can produce (and then some)."""
    out: dict[str, str] = {}
    logical: list[str] = []
    pending = ""
    for line in text.split("\n"):
        line = line.lstrip(" \t\f")  # a continuation line also loses its leading space
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2 == 1:
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    for entry in logical:
        m = re.match(r"((?:\\.|[^=: \t\f\\])*)[ \t\f]*[=:]?[ \t\f]*(.*)", entry, re.S)
        assert m
        key, value = (_unescape(m.group(1)), _unescape(m.group(2)))
        out[key] = value
    return out


def _unescape(text: str) -> str:
    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)",
                  lambda m: {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}.get(
                      m.group(1), chr(int(m.group(1)[1:], 16)) if len(m.group(1)) == 5
                      else m.group(1)), text, flags=re.S)


def test_unusual_values_round_trip_through_config_properties(
    rendered: tuple[dict[str, str], dict[str, Any]]
) -> None:
    _tree, lock = rendered
    config = lock["stacks"]["serving"]["torchserve"]["config"]
    text = config_text(config)
    parsed = parse_properties(text)
    assert parsed == config
    assert parsed["allowed_urls"].split(",") == unusual()["stacks"]["serving"][
        "torchserve_config"]["allowed_urls"]
    assert len(text.splitlines()) == len(config)
    assert _role_template(config) == text, "the role and the lock must write the same bytes"


def _role_template(config: dict[str, Any]) -> str:
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)
    template = (ROOT / "ansible/roles/torchserve/templates/config.properties.j2").read_text()
    return env.from_string(template).render(torchserve_config=config)


def parse_sources_list(text: str) -> list[dict[str, Any]]:
    """One-line-style sources.list entries: type, [options], uri, suite, components."""
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)((?:\s+\S+)*)", line)
        assert m, line
        entries.append({"type": m.group(1), "options": (m.group(2) or "").split(),
                        "uri": m.group(3), "suite": m.group(4),
                        "components": m.group(5).split()})
    return entries


def test_unusual_values_keep_one_apt_sources_line(
    rendered: tuple[dict[str, str], dict[str, Any]]
) -> None:
    tree, _lock = rendered
    gv = yaml.safe_load(tree["inventories/cloud/group_vars/cloud/stacklock.yml"])
    env = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)
    env.filters["bool"] = bool
    template = env.from_string(
        (ROOT / "ansible/roles/stacklock_packages/templates/repository.list.j2").read_text())
    for repo in gv["stacklock_apt_repositories"]:
        (entry,) = parse_sources_list(template.render(item=repo))
        assert entry["uri"] == repo["uri"] and entry["suite"] == repo["suite"]
        if not repo["suite"].endswith("/"):
            assert entry["components"] == repo["components"]
        assert ("trusted=yes" in entry["options"]) == repo["trusted"]


# --------------------------------------------------------------------------- (c) the writers


HOSTILE_TEXT = ['a"\n} resource "x" "y" {', "${file(\"/etc/passwd\")}", "%{ if true }x%{ endif }",
                "back\\slash", "tab\there", "nul\x00x", "uni\u2028code \U0001f600", "$${x}", "$$"]


@pytest.mark.parametrize("value", HOSTILE_TEXT)
def test_hcl_strings_escape_everything(value: str) -> None:
    text = f"a = {hcl(value)}\nb = {hcl([value, {'k': value}])}\n"
    parsed = hcl2.loads(text)
    assert set(parsed) == {"a", "b"}
    assert _hcl_string(parsed["a"]) == value
    _terraform_fmt(text)


@pytest.mark.parametrize("value", [*HOSTILE_TEXT, " leading", "a,b", "x=y:z", "#!"])
def test_properties_values_escape_line_breaks(value: str) -> None:
    config = {"allowed_urls": value, "model_store": "/m"}
    text = config_text(config)
    assert parse_properties(text) == config
    assert _role_template(config) == text


def test_group_vars_mark_template_markers_unsafe() -> None:
    text = _yaml({"a": "{{ lookup('pipe', 'id') }}", "b": ["x{% raw %}", "plain"], "c": "ok"})
    assert "a: !unsafe '{{ lookup(''pipe'', ''id'') }}'" in text
    assert "!unsafe 'x{% raw %}'" in text and "c: ok" in text

    class Loader(yaml.SafeLoader):
        pass

    def unsafe(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[str, Any]:
        assert isinstance(node, yaml.ScalarNode)
        return ("unsafe", loader.construct_scalar(node))

    Loader.add_constructor("!unsafe", unsafe)
    back = yaml.load(text, Loader=Loader)  # a SafeLoader subclass
    assert back["a"] == ("unsafe", "{{ lookup('pipe', 'id') }}")
    assert back["b"] == [("unsafe", "x{% raw %}"), "plain"]
