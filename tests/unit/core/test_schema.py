"""The manifest schema (`stacklock.manifest`): each rule with a failing and a passing case.

Cases edit the valid manifests of `tests/corpus/valid/` one field at a time and go through
`parse_manifest`, the function every command uses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core.manifest import load_manifest, parse_manifest
from stacklock.errors import ExitCode, InvalidInput, Problem

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
VALID = ROOT / "tests" / "corpus" / "valid"
DELETE = object()
S = "stacks.prod-stack"
DEV = "environments.dev"


def base(name: str = "aws") -> dict[str, Any]:
    data = yaml.safe_load((VALID / f"{name}.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def edit(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node: Any = data
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    elif isinstance(node, list) and int(last) == len(node):
        node.append(value)
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


def problems(data: Any) -> list[Problem]:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    try:
        parse_manifest(text, source="test.yaml")
    except InvalidInput as exc:
        assert exc.exit_code == ExitCode.INVALID
        assert exc.problems, "InvalidInput without problems"
        return exc.problems
    return []


# (base, field edited, bad value, path the problem must name, good value)
CASES: list[tuple[str, str, Any, str, Any]] = [
    # unknown keys anywhere
    ("aws", "owner", "team-a", "owner", DELETE),
    ("aws", f"{S}.nvidia_driver.kernel_modul", "open", f"{S}.nvidia_driver.kernel_modul", DELETE),
    ("aws", f"{S}.torchserve_config.workers", 2, f"{S}.torchserve_config.workers", DELETE),
    ("aws", f"{DEV}.instance_count", 2, f"{DEV}.instance_count", DELETE),
    ("aws", "package_sources.pip.index", "x", "package_sources.pip.index", DELETE),
    ("static", "environments.prod.hosts.0.ip", "192.0.2.9", "environments.prod.hosts[0].ip",
     DELETE),
    # missing required fields
    ("aws", "version", DELETE, "version", 1),
    ("aws", "project", DELETE, "project", "corpus-aws"),
    ("aws", "environments", DELETE, "environments", base()["environments"]),
    ("aws", f"{S}.cuda", DELETE, f"{S}.cuda", {"version": "13.0.2"}),
    ("aws", f"{S}.os", DELETE, f"{S}.os", {"distribution": "ubuntu", "release": "24.04"}),
    ("aws", f"{DEV}.region", DELETE, f"{DEV}.region", "eu-west-1"),
    ("aws", f"{DEV}.admin_cidrs", DELETE, f"{DEV}.admin_cidrs", ["10.0.0.0/8"]),
    ("aws", f"{DEV}.provider", DELETE, DEV, "aws"),
    ("static", "environments.prod.hosts", DELETE, "environments.prod.hosts",
     [{"name": "h", "address": "192.0.2.99"}]),
    # empty collections
    ("aws", "stacks", {}, "stacks", base()["stacks"]),
    ("aws", f"{DEV}.client_cidrs", [], f"{DEV}.client_cidrs", ["0.0.0.0/0"]),
    ("static", "environments.prod.hosts", [], "environments.prod.hosts",
     [{"name": "h", "address": "192.0.2.99"}]),
    # wrong types
    ("aws", "environments.prod.count", "two", "environments.prod.count", 3),
    ("aws", f"{S}.torchserve_config.token_authorization", "maybe",
     f"{S}.torchserve_config.token_authorization", True),
    ("aws", f"{S}.python.version", 3.1, f"{S}.python.version", "3.10"),
    ("aws", f"{S}.cuda.version", 13.0, f"{S}.cuda.version", "13.0"),
    ("aws", f"{S}.java.version", 17, f"{S}.java.version", "17"),
    ("aws", f"{S}.models", {"name": "x"}, f"{S}.models", []),
    ("aws", "stacks", ["prod-stack"], "stacks", base()["stacks"]),
    # patterns
    ("aws", "project", "Corpus_AWS", "project", "corpus-aws"),
    ("aws", f"{S}.nvidia_driver.version", "580", f"{S}.nvidia_driver.version", "570.26"),
    ("aws", f"{S}.nvidia_driver.version", "580.95.05.1", f"{S}.nvidia_driver.version",
     "535.309.01"),
    ("aws", f"{S}.cuda.version", "13", f"{S}.cuda.version", "13.0.88"),
    ("aws", f"{S}.docker.version", "28.5", f"{S}.docker.version", "27.3.1"),
    ("aws", f"{S}.nvidia_container_toolkit.version", "1.18", f"{S}.nvidia_container_toolkit.version",
     "1.18.1"),
    ("aws", f"{S}.torch.version", "2.9.1", f"{S}.torch.version", "2.9.1+cu130"),
    ("aws", f"{S}.torch.version", "2.9.1+rocm6.4", f"{S}.torch.version", "2.9.1+cu130"),
    ("aws", f"{S}.torchserve.version", "0.12", f"{S}.torchserve.version", "0.12.0"),
    ("aws", f"{S}.python.version", "2.7", f"{S}.python.version", "3.11"),
    ("aws", f"{S}.models.0.sha256", "0" * 63, f"{S}.models[0].sha256", "a" * 64),
    ("aws", f"{S}.models.0.sha256", "A" * 64, f"{S}.models[0].sha256", "f" * 64),
    ("aws", f"{S}.models.0.name", "tiny linear", f"{S}.models[0].name", "tiny_linear"),
    ("aws", f"{S}.models.0.version", "v1", f"{S}.models[0].version", "1.0.2"),
    ("aws", f"{DEV}.region", "us_east_1", f"{DEV}.region", "us-gov-west-1"),
    ("aws", f"{DEV}.instance_type", "g6e", f"{DEV}.instance_type", "g6e.2xlarge"),
    ("aws", f"{DEV}.vpc_id", "vpc-xyz", f"{DEV}.vpc_id", "vpc-0123456789abcdef0"),
    ("aws", f"{DEV}.subnet_ids", ["subnet-1"], f"{DEV}.subnet_ids[0]",
     ["subnet-0123456789abcdef0"]),
    ("aws", f"{DEV}.account_id", "1234", f"{DEV}.account_id", "111122223333"),
    ("aws", f"{S}.ami", {"owner": "canonical", "name": "ubuntu-noble"}, f"{S}.ami.owner",
     {"owner": "099720109477", "name": "ubuntu-noble"}),
    ("aws", "package_sources.pip.index_url", "pypi.org/simple", "package_sources.pip.index_url",
     "https://pypi.example.com/simple"),
    # names of stacks and environments (mapping keys)
    ("aws", "stacks.Prod_Stack", base()["stacks"]["prod-stack"], "stacks.Prod_Stack", DELETE),
    ("aws", "environments.x", {"provider": "lab", "stack": "prod-stack"}, "environments.x",
     DELETE),
    # choices
    ("aws", f"{S}.os", {"distribution": "centos", "release": "24.04"},
     f"{S}.os.distribution", {"distribution": "debian", "release": "12"}),
    ("aws", f"{S}.os", {"distribution": "ubuntu", "release": "12"}, f"{S}.os",
     {"distribution": "debian", "release": "12"}),
    ("aws", f"{S}.nvidia_driver.kernel_module", "closed", f"{S}.nvidia_driver.kernel_module",
     "auto"),
    ("aws", f"{S}.cuda.components", "all", f"{S}.cuda.components", "runtime"),
    ("aws", f"{S}.java.version", "8", f"{S}.java.version", "21"),
    ("aws", f"{S}.torchserve_config.metrics_mode", "json", f"{S}.torchserve_config.metrics_mode",
     "log"),
    ("aws", f"{DEV}.provider", "gcp", DEV, "aws"),
    ("aws", f"{DEV}.access", "vpn", f"{DEV}.access", "ssm"),
    ("aws", "version", 2, "version", 1),
    # ranges
    ("aws", "environments.prod.count", 0, "environments.prod.count", 100),
    ("aws", f"{DEV}.root_volume_size", 20, f"{DEV}.root_volume_size", 30),
    ("aws", f"{S}.torchserve_config.default_workers_per_model", 0,
     f"{S}.torchserve_config.default_workers_per_model", 64),
    ("aws", f"{S}.torchserve_config.max_request_size", 100,
     f"{S}.torchserve_config.max_request_size", 1024),
    ("static", "environments.prod.hosts.0.port", 0, "environments.prod.hosts[0].port", 65535),
    ("aws", "lab.mirror_port", 80, "lab.mirror_port", 8080),
    # values checked by validators
    ("aws", f"{DEV}.admin_cidrs", ["203.0.113.7/24"], f"{DEV}.admin_cidrs[0]", ["203.0.113.7/32"]),
    ("aws", f"{DEV}.admin_cidrs", ["office"], f"{DEV}.admin_cidrs[0]", ["2001:db8::/32"]),
    ("aws", f"{DEV}.access", "bastion", DEV, "public"),
    ("aws", f"{S}.ami", {"owner": "099720109477", "name": "ubuntu-noble-24.04-*"},
     f"{S}.ami.name", {"owner": "099720109477", "name": "ubuntu-noble-24.04-20251022"}),
    ("aws", f"{S}.models.0.archive", "models/tiny.tar.gz", f"{S}.models[0].archive",
     "models/tiny.mar"),
    ("aws", f"{S}.models.0.archive", "http://models.example.com/tiny.mar",
     f"{S}.models[0].archive", "https://models.example.com/tiny.mar"),
    ("aws", f"{S}.models.1", base()["stacks"]["prod-stack"]["models"][0], f"{S}.models",
     {**base()["stacks"]["prod-stack"]["models"][0], "name": "other"}),
    ("aws", f"{S}.docker.apt_version", "28.5.*", f"{S}.docker.apt_version",
     "5:28.5.1-1~ubuntu.24.04~noble"),
    ("aws", f"{S}.torchserve_config.management_address", "127.0.0.1:8081",
     f"{S}.torchserve_config.management_address", "http://127.0.0.1:9081"),
    ("aws", "package_sources.apt", [{"name": "m", "uri": "http://m/apt", "suite": "./"}],
     "package_sources.apt[0]", [{"name": "m", "uri": "http://m/apt", "suite": "./",
                              "trusted": True}]),
    ("aws", "package_sources.apt", "mirror", "package_sources.apt", "official"),
    ("static", "environments.prod.hosts.0.address", "not an address!",
     "environments.prod.hosts[0].address", "gpu-p1.example.com"),
    ("aws", "lab.network", "8.8.0.0/16", "lab.network", "10.213.0.0/16"),
    ("aws", "lab.network", "10.213.0.0/24", "lab.network", "10.200.0.0/20"),
    ("aws", "parity.may_differ", ["instance_type"], "parity.may_differ", ["count"]),
    ("aws", "output_dir", "/etc", "output_dir", "out/dir"),
    ("aws", "output_dir", "../elsewhere", "output_dir", "."),
    # cross references
    ("aws", "environments.prod.stack", "prod-stak", "environments.prod.stack", "prod-stack"),
    ("static", "environments.prod.hosts.1", {"name": "gpu-p2", "address": "192.0.2.20"},
     "environments.prod.hosts", {"name": "gpu-p2", "address": "192.0.2.21"}),
    ("static", "environments.prod.hosts.1.name", "gpu-p1", "environments.prod.hosts", "gpu-p3"),
    ("static", "environments.prod.hosts.0.address", "192.0.2.10",
     "environments.prod.hosts[0].address", "192.0.2.11"),
]


@pytest.mark.parametrize(
    ("which", "field", "bad", "path", "good"),
    CASES,
    ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)],
)
def test_schema_rule_fails_and_passes(
    which: str, field: str, bad: Any, path: str, good: Any
) -> None:
    found = problems(edit(base(which), field, bad))
    assert [p.path for p in found] == [path], [p.render() for p in found]
    (p,) = found
    assert p.message and p.severity == "error"
    assert "^" not in p.message and "\\d" not in p.message, "a raw regex in the message"
    assert problems(edit(base(which), field, good)) == []


def test_the_valid_bases_are_valid() -> None:
    assert problems(base("aws")) == []
    assert problems(base("static")) == []


def test_a_port_makes_a_second_host_on_the_same_address_distinct() -> None:
    data = edit(base("static"), "environments.prod.hosts.0.address", "192.0.2.10")
    assert problems(edit(data, "environments.prod.hosts.0.port", 2200)) == []


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize(
    ("field", "bad", "words"),
    [
        (f"{S}.nvidia_driver.version", "580", "full driver version"),
        (f"{S}.models.0.sha256", "abc", "64 lowercase hex"),
        (f"{S}.torch.version", "2.9.1", "with its build"),
        (f"{DEV}.instance_type", "g6e", "instance type"),
    ],
)
def test_pattern_errors_are_explained_in_words(field: str, bad: str, words: str) -> None:
    (p,) = problems(edit(base(), field, bad))
    assert words in p.message and repr(bad) in p.message
    assert "like" in p.hint


def test_unquoted_numbers_get_a_quoting_hint() -> None:
    (p,) = problems(edit(base(), f"{S}.python.version", 3.1))
    assert "number" in p.message and "quote" in p.hint


def test_unknown_key_hint() -> None:
    (p,) = problems(edit(base(), "projekt", "x"))
    assert p.message == "unknown key" and "spelling" in p.hint


def test_unknown_stack_lists_the_defined_ones() -> None:
    (p,) = problems(edit(base(), "environments.prod.stack", "nope"))
    assert "'nope'" in p.message and "prod-stack" in p.hint


# --------------------------------------------------------------------------- all at once


def test_three_independent_mistakes_are_three_problems() -> None:
    data = edit(base(), f"{S}.models.0.sha256", "xyz")
    data = edit(data, "environments.prod.count", "many")
    data = edit(data, f"{S}.nvidia_driver.colour", "green")
    assert sorted(p.path for p in problems(data)) == [
        "environments.prod.count",
        f"{S}.models[0].sha256",
        f"{S}.nvidia_driver.colour",
    ]


def test_cross_references_are_reported_beside_schema_errors() -> None:
    data = edit(base("static"), "environments.staging.hosts.0.address", "192.0.2.20")
    data = edit(data, "environments.prod.stack", "missing")
    data = edit(data, "project", "BAD")
    assert sorted(p.path for p in problems(data)) == [
        "environments.prod.hosts[0].address",
        "environments.prod.stack",
        "project",
    ]


def test_many_mistakes_all_reported() -> None:
    chosen = [c for c in CASES if c[0] == "aws" and c[2] is not DELETE
              and c[1].startswith((f"{S}.torchserve_config.", f"{S}.nvidia_driver.", f"{DEV}."))
              and not c[1].endswith(".provider")]
    fields = [c[1] for c in chosen]
    chosen = [c for c in chosen if fields.count(c[1]) == 1]
    data = base()
    for _, field, bad, _, _ in chosen:
        data = edit(data, field, bad)
    assert len(chosen) >= 10
    assert sorted(p.path for p in problems(data)) == sorted(c[3] for c in chosen)


# --------------------------------------------------------------------------- not a manifest


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "the manifest is empty"),
        ("# only a comment\n", "the manifest is empty"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("just a string\n", "must be a YAML mapping"),
        ("version: 1\nproject: [unclosed\n", "YAML syntax error at line 3"),
        ("version: 1\n\tproject: tab\n", "YAML syntax error"),
        ("version: 1\nproject: ab\nproject: cd\n", "duplicate key 'project'"),
    ],
)
def test_text_that_is_not_a_manifest(text: str, words: str) -> None:
    (p,) = problems(text)
    assert words in p.message and p.hint


def test_duplicate_environment_keys_are_not_silently_merged() -> None:
    text = (VALID / "aws.yaml").read_text(encoding="utf-8")
    text = text.replace("  prod:\n    provider: aws", "  dev:\n    provider: aws")
    (p,) = problems(text)
    assert "duplicate key 'dev'" in p.message and "line" in p.message


def test_load_manifest_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        load_manifest(tmp_path / "nope.yaml")
    assert info.value.exit_code == ExitCode.INVALID
    assert "no such file" in info.value.problems[0].message


def test_load_manifest_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("version: 1\n", encoding="utf-8")
    with pytest.raises(InvalidInput) as info:
        load_manifest(path)
    assert str(path) in info.value.message
    assert {p.path for p in info.value.problems} == {"project", "stacks", "environments"}


def test_load_manifest_of_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes((VALID / "aws.yaml").read_bytes().replace(b"corpus-aws", b"corpus-aws #\xe9", 1))
    with pytest.raises(InvalidInput) as info:
        load_manifest(path)
    assert "not UTF-8" in info.value.problems[0].message
    assert "UTF-8" in info.value.problems[0].hint
    path.write_bytes((VALID / "aws.yaml").read_bytes())
    assert load_manifest(path).manifest.project == "corpus-aws"


# --------------------------------------------------------------------------- static host addresses
#
# A static host's address names one host: never an address that names none or many, and this
# machine (loopback) only where the environment says so (`allow_loopback: true`).

HOST0 = "environments.prod.hosts.0.address"
HOST0_PATH = "environments.prod.hosts[0].address"


@pytest.mark.parametrize(("address", "words"), [
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("0.1.2.3", "this network"),
    ("224.0.0.251", "multicast"),
    ("239.1.2.3", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("127.0.0.1", "loopback"),
    ("127.0.0.53", "loopback"),
    ("::1", "loopback"),
    ("::ffff:7f00:1", "loopback"),  # IPv4-mapped 127.0.0.1
    ("localhost", "loopback"),
    ("db.localhost", "loopback"),
])
def test_a_static_host_address_that_names_no_single_remote_host_is_refused(
        address: str, words: str) -> None:
    found = problems(edit(base("static"), HOST0, address))
    assert [p.path for p in found] == [HOST0_PATH], [p.render() for p in found]
    assert words in found[0].message, found[0].message


@pytest.mark.parametrize("address", ["192.0.2.255", "10.0.0.0", "gpu-p1.example.com",
                                     "2001:db8::10", "localhost-gpu.example.com"])
def test_ordinary_addresses_and_host_names_stay_allowed(address: str) -> None:
    assert problems(edit(base("static"), HOST0, address)) == []


def test_loopback_needs_the_environment_s_opt_in() -> None:
    data = edit(base("static"), HOST0, "127.0.0.1")
    (p,) = problems(data)
    assert "allow_loopback: true on environment prod" in p.hint
    assert problems(edit(data, "environments.prod.allow_loopback", True)) == []
    # the opt-in of another environment does not cover this one
    other = edit(data, "environments.staging.allow_loopback", True)
    assert [p.path for p in problems(other)] == [HOST0_PATH]
    # and it allows loopback only: an unspecified address stays refused
    nowhere = edit(edit(data, "environments.prod.allow_loopback", True), HOST0, "0.0.0.0")
    assert [p.path for p in problems(nowhere)] == [HOST0_PATH]


def test_address_problems_are_reported_beside_schema_errors() -> None:
    data = edit(base("static"), HOST0, "localhost")
    data = edit(data, "environments.staging.hosts.0.address", "255.255.255.255")
    data = edit(data, "project", "BAD")
    assert sorted(p.path for p in problems(data)) == [
        HOST0_PATH, "environments.staging.hosts[0].address", "project"]


# --------------------------------------------------------------------------- file paths
#
# Every file a manifest names stays inside the manifest's folder (symbolic links followed)
# unless `allowed_paths` names its folder: refused at validate when the text says so, at
# load (every command) when a link leads out, and again where lock and render read the file.

GOLDEN = ROOT / "tests" / "golden" / "static-lab"
MODEL0 = "stacks.s1.models[0]"
SECRET = "AKIA-NOT-A-REAL-SECRET-but-it-must-never-reach-the-lock"


def _golden(path: str, value: Any) -> dict[str, Any]:
    data = yaml.safe_load((GOLDEN / "manifest.yaml").read_text(encoding="utf-8"))
    return edit(data, path, value)


def _smoke(input_file: str) -> dict[str, Any]:
    return {"input_file": input_file, "content_type": "application/json", "expected": [1.0]}


@pytest.mark.parametrize(("path", "value", "field"), [
    ("stacks.s1.models.0.smoke", _smoke("/root/.aws/credentials"), f"{MODEL0}.smoke.input_file"),
    ("stacks.s1.models.0.smoke", _smoke("../../etc/shadow"), f"{MODEL0}.smoke.input_file"),
    ("stacks.s1.models.0.smoke", _smoke("req/../../x.json"), f"{MODEL0}.smoke.input_file"),
    ("stacks.s1.models.0.archive", "/srv/models/fixture.mar", f"{MODEL0}.archive"),
    ("stacks.s1.models.0.archive", "../models/fixture.mar", f"{MODEL0}.archive"),
    ("package_sources.ca_bundle", "/home/ci/.ssh/id_ed25519", "package_sources.ca_bundle"),
    ("package_sources.ca_bundle", "../ca.pem", "package_sources.ca_bundle"),
    ("package_sources.apt.0.signing_key", "/etc/keys/a.asc", "package_sources.apt[0].signing_key"),
    ("package_sources.pip.find_links", ["../wheels"], "package_sources.pip.find_links[0]"),
    ("package_sources.pip.find_links", ["file://localhost/srv/wheels"],
     "package_sources.pip.find_links[0]"),
])
def test_a_path_leaving_the_manifest_s_folder_is_refused_at_validate(
        path: str, value: Any, field: str) -> None:
    found = problems(_golden(path, value))
    assert [p.path for p in found] == [field], [p.render() for p in found]
    assert "outside the manifest's folder" in found[0].message
    assert "allowed_paths: [" in found[0].hint


def test_allowed_paths_lets_a_named_folder_in_and_nothing_beside_it() -> None:
    data = _golden("package_sources.ca_bundle", "/etc/pki/tls/ca.pem")
    assert [p.path for p in problems(data)] == ["package_sources.ca_bundle"]
    assert problems(edit(data, "allowed_paths", ["/etc/pki/tls"])) == []
    assert problems(edit(data, "allowed_paths", ["/etc/pki/tls/"])) == []
    # a folder's name as a prefix of another's is not that folder
    assert [p.path for p in problems(edit(data, "allowed_paths", ["/etc/pki/tl"]))] == [
        "package_sources.ca_bundle"]
    # '..' after an allowed folder leaves it
    escaped = edit(data, "package_sources.ca_bundle", "/etc/pki/tls/../../shadow")
    assert [p.path for p in problems(edit(escaped, "allowed_paths", ["/etc/pki/tls"]))] == [
        "package_sources.ca_bundle"]
    # relative folders, reached with '..'
    shared = _golden("stacks.s1.models.0.archive", "../shared/fixture.mar")
    assert problems(edit(shared, "allowed_paths", ["../shared"])) == []


@pytest.mark.parametrize(("entry", "words"), [("/", "every file"), ("/etc/..", "every file"),
                                              (".", "always allowed"), ("a b", "plain path")])
def test_allowed_paths_entries_are_folders_not_everything(entry: str, words: str) -> None:
    found = problems(edit(base("static"), "allowed_paths", [entry]))
    assert [p.path for p in found] == ["allowed_paths[0]"] and words in found[0].message


@pytest.fixture()
def golden_case(tmp_path: Path) -> Path:
    """The golden manifest with its lock and model in tmp/case/, a secret in tmp/outside/."""
    import shutil

    dst = tmp_path / "case"
    shutil.copytree(GOLDEN, dst, ignore=shutil.ignore_patterns("expected"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(SECRET)
    shutil.copy(dst / "models" / "fixture.mar", tmp_path / "outside" / "fixture.mar")
    (dst / "certs").mkdir()
    (dst / "certs" / "internal-ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    return dst / "manifest.yaml"


def _write(manifest: Path, data: dict[str, Any]) -> None:
    manifest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _tree(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for root in roots for p in sorted(root.rglob("*"))}


def _cli(manifest: Path, *args: str, process: bool = False) -> tuple[int, str]:
    """`stacklock -m MANIFEST ARGS` through the CLI's entry point here, or (PROCESS) the
    installed CLI in a process of its own."""
    import os
    import subprocess
    import sys

    if not process:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from clirun import stacklock

        r = stacklock("-m", str(manifest), *args, cwd=manifest.parent,
                      env={"NO_COLOR": "1", "COLUMNS": "400"})
        return r.returncode, r.stdout + r.stderr
    exe = Path(sys.executable).parent / "stacklock"
    res = subprocess.run([str(exe), "-m", str(manifest), *args], cwd=manifest.parent,
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "NO_COLOR": "1", "COLUMNS": "400"})
    return res.returncode, res.stdout + res.stderr


def _link_case(case: Path, how: str) -> tuple[dict[str, Any], str]:
    """Make `how` (a symbolic link leading out of the manifest's folder); the manifest data and
    the field the refusal must name."""
    outside = case.parent.parent / "outside"
    data = yaml.safe_load(case.read_text(encoding="utf-8"))
    if how == "smoke-input-file-link":
        (case.parent / "request.json").symlink_to(outside / "secret.txt")
        return edit(data, "stacks.s1.models.0.smoke", _smoke("request.json")), \
            f"{MODEL0}.smoke.input_file"
    if how == "smoke-input-folder-link":
        (case.parent / "requests").symlink_to(outside, target_is_directory=True)
        return edit(data, "stacks.s1.models.0.smoke", _smoke("requests/secret.txt")), \
            f"{MODEL0}.smoke.input_file"
    if how == "archive-link":
        (case.parent / "models" / "fixture.mar").unlink()
        (case.parent / "models" / "fixture.mar").symlink_to(outside / "fixture.mar")
        return data, f"{MODEL0}.archive"
    if how == "models-folder-link":
        import shutil

        shutil.rmtree(case.parent / "models")
        (case.parent / "models").symlink_to(outside, target_is_directory=True)
        return data, f"{MODEL0}.archive"
    if how == "ca-bundle-link":
        (case.parent / "certs" / "internal-ca.pem").unlink()
        (case.parent / "certs" / "internal-ca.pem").symlink_to(outside / "secret.txt")
        return data, "package_sources.ca_bundle"
    if how == "find-links-folder-link":
        (case.parent / "wheels").symlink_to(outside, target_is_directory=True)
        return edit(data, "package_sources.pip.find_links", ["wheels"]), \
            "package_sources.pip.find_links[0]"
    if how == "output-dir-link":
        (case.parent / "expected").symlink_to(outside, target_is_directory=True)
        return data, "output_dir"
    raise AssertionError(how)


LINK_CASES = ["smoke-input-file-link", "smoke-input-folder-link", "archive-link",
              "models-folder-link", "ca-bundle-link", "find-links-folder-link", "output-dir-link"]


@pytest.mark.parametrize("how", LINK_CASES)
def test_a_symbolic_link_leading_out_is_refused_by_every_command_and_nothing_is_written(
        golden_case: Path, how: str) -> None:
    data, field = _link_case(golden_case, how)
    _write(golden_case, data)
    outside = golden_case.parent.parent / "outside"
    before = _tree(golden_case.parent, outside)
    commands = (["validate"], ["lock", "--offline"], ["render"], ["render", "--check"])
    # each case runs one command (each command at least once) as a process of its own
    in_a_process = commands[LINK_CASES.index(how) % len(commands)]
    for command in commands:
        code, out = _cli(golden_case, *command, process=command is in_a_process)
        assert code == 2, (command, out)
        assert f"ERROR {field}: " in out, (command, out)
        assert str(outside.resolve()) in out, "the message names where the link leads"
        assert "allowed_paths" in out, "the message says how to allow it"
        assert "Traceback" not in out and "internal error" not in out, out
        assert SECRET not in out
    assert _tree(golden_case.parent, outside) == before, "a refused command wrote a file"
    with pytest.raises(InvalidInput) as info:
        load_manifest(golden_case)
    assert info.value.exit_code == ExitCode.INVALID
    assert [p.path for p in info.value.problems] == [field]


@pytest.mark.parametrize("how", [h for h in LINK_CASES if h != "output-dir-link"])
def test_allowed_paths_lets_the_same_link_through(golden_case: Path, how: str) -> None:
    from stacklock.core import lock as lockmod

    data, _field = _link_case(golden_case, how)
    outside = golden_case.parent.parent / "outside"
    _write(golden_case, edit(data, "allowed_paths", [str(outside)]))
    loaded = load_manifest(golden_case)
    if how.startswith("find-links"):
        src = lockmod.pip_sources(loaded, loaded.manifest.stacks["s1"])
        assert src["find_links"] == [str(outside.resolve())]
        return
    locked = lockmod.build_lock(loaded)
    if how.startswith("smoke"):
        import base64

        smoke = locked["stacks"]["s1"]["models"][0]["smoke"]
        assert base64.b64decode(smoke["input_base64"]).decode() == SECRET


def test_a_link_inside_an_allowed_folder_that_leads_further_out_is_refused(
        golden_case: Path) -> None:
    outside = golden_case.parent.parent / "outside"
    elsewhere = golden_case.parent.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "key.pem").write_text(SECRET)
    (outside / "ca.pem").symlink_to(elsewhere / "key.pem")
    data = yaml.safe_load(golden_case.read_text(encoding="utf-8"))
    data = edit(data, "package_sources.ca_bundle", str(outside / "ca.pem"))
    _write(golden_case, edit(data, "allowed_paths", [str(outside)]))
    with pytest.raises(InvalidInput) as info:
        load_manifest(golden_case)
    (p,) = info.value.problems
    assert p.path == "package_sources.ca_bundle"
    assert str((elsewhere / "key.pem").resolve()) in p.message


def test_lock_and_render_check_again_when_a_link_changes_after_loading(
        golden_case: Path) -> None:
    """Readers resolve each path again (LoadedManifest.local_file): a file swapped for a link
    between load and read is refused, not read."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    outside = golden_case.parent.parent / "outside"
    data = yaml.safe_load(golden_case.read_text(encoding="utf-8"))
    (golden_case.parent / "request.json").write_text('{"inputs": [1]}')
    _write(golden_case, edit(data, "stacks.s1.models.0.smoke", _smoke("request.json")))
    loaded = load_manifest(golden_case)
    locked = lockmod.build_lock(loaded)
    (golden_case.parent / "request.json").unlink()
    (golden_case.parent / "request.json").symlink_to(outside / "secret.txt")
    with pytest.raises(InvalidInput) as info:
        lockmod.build_lock(loaded)
    assert [p.path for p in info.value.problems] == [f"{MODEL0}.smoke.input_file"]
    (golden_case.parent / "certs" / "internal-ca.pem").unlink()
    (golden_case.parent / "certs" / "internal-ca.pem").symlink_to(outside / "secret.txt")
    with pytest.raises(InvalidInput) as info:
        rendermod.render_tree(loaded, locked)
    assert [p.path for p in info.value.problems] == ["package_sources.ca_bundle"]


def test_render_points_ansible_at_the_ca_bundle_in_the_manifest_s_folder(
        golden_case: Path) -> None:
    """ca_bundle is a controller file the torchserve role copies (`copy: src:`): rendered
    relative to the inventory like the model archives (Ansible would otherwise look for a
    relative path in the role's files/), absolute only when the manifest gave an absolute
    path in an allowed folder."""
    from stacklock.core import lock as lockmod
    from stacklock.core import render as rendermod

    loaded = load_manifest(golden_case)
    tree = rendermod.render_tree(loaded, lockmod.build_lock(loaded))
    gv = yaml.safe_load(tree["inventories/onprem/group_vars/onprem/stacklock.yml"])
    value = gv["stacklock_ca_bundle"]
    assert value.startswith("{{ inventory_dir }}/"), value
    inventory = loaded.output_root / "inventories" / "onprem"
    target = (inventory / value.removeprefix("{{ inventory_dir }}/")).resolve()
    assert target == (golden_case.parent / "certs" / "internal-ca.pem").resolve()
    outside = golden_case.parent.parent / "outside"
    data = yaml.safe_load(golden_case.read_text(encoding="utf-8"))
    data = edit(data, "package_sources.ca_bundle", str(outside / "secret.txt"))
    _write(golden_case, edit(data, "allowed_paths", [str(outside)]))
    loaded = load_manifest(golden_case)
    tree = rendermod.render_tree(loaded, lockmod.build_lock(loaded))
    gv = yaml.safe_load(tree["inventories/onprem/group_vars/onprem/stacklock.yml"])
    assert gv["stacklock_ca_bundle"] == str(outside / "secret.txt")


def test_a_misspelt_required_key_hides_no_rule_error() -> None:
    """`pythn` for the required `python` (and `regoin` for `region`): the schema errors, with
    the key they meant, and the rule error of the same stack, all at once (issue #21)."""
    data = edit(base(), f"{S}.nvidia_driver.version", "535.54.03")  # too old for CUDA 13
    data["stacks"]["prod-stack"]["pythn"] = data["stacks"]["prod-stack"].pop("python")
    data["environments"]["dev"]["regoin"] = data["environments"]["dev"].pop("region")
    found = {p.path: p for p in problems(data)}
    assert set(found) == {f"{S}.python", f"{S}.pythn", f"{DEV}.region", f"{DEV}.regoin",
                          f"{S}.nvidia_driver.version"}
    assert "needs NVIDIA driver" in found[f"{S}.nvidia_driver.version"].message
    assert "did you mean 'python'?" in found[f"{S}.pythn"].hint
    assert "did you mean 'region'?" in found[f"{DEV}.regoin"].hint


@pytest.mark.parametrize(("where", "typo", "meant"), [
    ("", "promotoin", "promotion"),
    (S, "torchserv", "torchserve"),
    (f"{S}.nvidia_driver", "kernel_modul", "kernel_module"),
    (f"{S}.models.0", "shaa256", "sha256"),
    (DEV, "instance_typ", "instance_type"),
])
def test_unknown_key_names_the_closest_allowed_one(where: str, typo: str, meant: str) -> None:
    data = edit(base(), f"{where}.{typo}" if where else typo, "x")
    path = f"{where}.{typo}".replace(".models.0.", ".models[0].") if where else typo
    found = {p.path: p for p in problems(data)}
    assert f"did you mean {meant!r}?" in found[path].hint


def test_an_unknown_key_far_from_any_suggests_nothing() -> None:
    found = {p.path: p for p in problems(edit(base(), "zzzqqq", 1))}
    assert "did you mean" not in found["zzzqqq"].hint
