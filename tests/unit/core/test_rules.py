"""The compatibility rules (`stacklock.rules`): each rule with a failing and a passing case.

Every case starts from the valid AWS manifest `tests/corpus/valid/aws.yaml` (driver
580.95.05 open, CUDA 13.0.2, torch 2.9.1+cu130, g6e in dev, p5 in prod) and changes what the
case is about, through the real schema (`parse_manifest`).
"""

from __future__ import annotations

import copy
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core.manifest import Manifest, load_manifest, parse_manifest
from stacklock.core.rules import Compatibility, check, load_compatibility
from stacklock.errors import Problem

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
BASE_FILE = ROOT / "tests" / "corpus" / "valid" / "aws.yaml"
TODAY = date(2026, 11, 23)
S = "stacks.prod-stack"
TS = f"{S}.torchserve_config"


def base() -> dict[str, Any]:
    data = yaml.safe_load(BASE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def build(edits: dict[str, Any]) -> Manifest:
    """The base manifest with dotted-path edits (`stacks.prod-stack.cuda.version`)."""
    data = copy.deepcopy(base())
    for dotted, value in edits.items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return parse_manifest(yaml.safe_dump(data), source="test")


def run(edits: dict[str, Any], today: date = TODAY) -> list[Problem]:
    return check(build(edits), today=today)


def of(problems: list[Problem], rule: str) -> list[Problem]:
    return [p for p in problems if p.rule == rule]


# Shortcuts for the stack fields the cases change.
DRIVER = f"{S}.nvidia_driver.version"
MODULE = f"{S}.nvidia_driver.kernel_module"
CUDA = f"{S}.cuda.version"
TORCH = f"{S}.torch.version"
TOOLKIT = f"{S}.nvidia_container_toolkit.version"
PROD_TYPE = "environments.prod.instance_type"
VOLTA_OK = {PROD_TYPE: "p3.8xlarge", MODULE: "proprietary", CUDA: "12.8.1",
            TORCH: "2.9.1+cu128"}
BLACKWELL_OK = {PROD_TYPE: "p6-b200.48xlarge", CUDA: "12.8.1", TORCH: "2.9.1+cu128"}
ENDPOINT = {"tls": {"secret": "stacklock_endpoint_tls",
                    "acm_certificate_arn": "arn:aws:acm:us-east-1:111122223333:certificate/"
                                           "0a1b2c3d-0a1b-0a1b-0a1b-0a1b2c3d4e5f"},
            "tokens": {"secret": "stacklock_endpoint_tokens"}}


# --------------------------------------------------------------------------- the base


def test_base_manifest_has_no_errors_and_only_the_tested_torch_warning() -> None:
    problems = run({})
    assert [(p.rule, p.severity) for p in problems] == [("torchserve-tested-torch", "warning")]


@pytest.mark.parametrize(
    "path", ["stacklock.yaml", "examples/static.yaml", "tests/corpus/valid/static.yaml"]
)
def test_shipped_manifests_have_no_errors(path: str) -> None:
    if not (ROOT / path).exists():
        pytest.skip(f"{path} not in this tree")
    problems = check(load_manifest(ROOT / path).manifest, today=TODAY)
    assert [p.render() for p in problems if p.severity == "error"] == []


def test_lab_example_has_exactly_the_expected_warnings() -> None:
    problems = check(load_manifest(ROOT / "examples" / "lab.yaml").manifest, today=TODAY)
    assert sorted((p.rule, p.severity) for p in problems) == [
        ("driver-branch-eol", "warning"),
        ("torchserve-tested-torch", "warning"),
    ]


# --------------------------------------------------------------------------- the table of cases
# (rule, severity, path the problem names, failing edits, passing edits)

CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("cuda-known", "error", CUDA,
     {CUDA: "12.7.0", TORCH: "2.9.1+cu128"}, {CUDA: "12.8.1", TORCH: "2.9.1+cu128"}),
    ("cuda-min-driver", "error", DRIVER,
     {DRIVER: "570.86.15"}, {DRIVER: "580.65.06"}),
    ("cuda-min-driver", "error", DRIVER,  # same major, too old a minor: 12.8 needs 570.26
     {DRIVER: "565.57.01", CUDA: "12.8.1", TORCH: "2.9.1+cu128"},
     {DRIVER: "570.26", CUDA: "12.8.1", TORCH: "2.9.1+cu128"}),
    ("torch-cuda-major", "error", TORCH,
     {CUDA: "12.8.1"}, {CUDA: "12.8.1", TORCH: "2.9.1+cu128"}),
    ("torch-cuda-minor", "warning", TORCH,
     {CUDA: "12.8.1", TORCH: "2.9.1+cu126"}, {CUDA: "12.6.3", TORCH: "2.9.1+cu126"}),
    ("torch-build-published", "error", TORCH,
     {CUDA: "12.9.1", TORCH: "2.9.1+cu129"}, {CUDA: "12.9.1", TORCH: "2.8.0+cu129"}),
    ("torch-release-known", "warning", TORCH,
     {TORCH: "2.20.0+cu130"}, {TORCH: "2.14.0+cu130"}),
    ("torch-driver", "error", TORCH,
     {DRIVER: "550.54.14", CUDA: "12.4.1", TORCH: "2.9.1+cu126"},
     {DRIVER: "560.35.03", CUDA: "12.4.1", TORCH: "2.9.1+cu126"}),
    ("toolkit-cve", "error", TOOLKIT, {TOOLKIT: "1.17.3"}, {TOOLKIT: "1.17.8"}),
    ("torchserve-java", "error", f"{S}.java.version",
     {f"{S}.java.version": "11"}, {f"{S}.java.version": "21"}),
    ("torchserve-tested-torch", "warning", TORCH,
     {}, {DRIVER: "580.95.05", CUDA: "12.4.1", TORCH: "2.4.1+cu124"}),
    ("torchserve-tested-torch", "warning", f"{S}.torchserve.version",
     {f"{S}.torchserve.version": "0.9.0", TORCH: "2.4.1+cpu"},
     {f"{S}.torchserve.version": "0.11.1", TORCH: "2.3.1+cpu"}),
    ("torchserve-token-auth", "error", f"{TS}.token_authorization",
     {f"{TS}.token_authorization": False}, {f"{TS}.token_authorization": True}),
    ("torchserve-loopback", "error", f"{TS}.management_address",
     {f"{TS}.management_address": "http://0.0.0.0:8081"},
     {f"{TS}.management_address": "http://localhost:8081"}),
    ("torchserve-loopback", "error", f"{TS}.metrics_address",
     {f"{TS}.metrics_address": "http://10.0.0.5:8082"},
     {f"{TS}.metrics_address": "http://[::1]:8082"}),
    ("torchserve-model-api", "warning", f"{TS}.enable_model_api",
     {f"{TS}.enable_model_api": True}, {f"{TS}.enable_model_api": False}),
    ("torchserve-allowed-urls", "error", f"{TS}.allowed_urls[0]",
     {f"{TS}.allowed_urls": [".*"]}, {f"{TS}.allowed_urls": []}),
    ("aws-instance-family", "error", PROD_TYPE,
     {PROD_TYPE: "gx9.4xlarge"}, {PROD_TYPE: "g4dn.xlarge"}),
    ("gpu-driver-branch", "error", DRIVER,
     {**VOLTA_OK, DRIVER: "590.44.01"}, VOLTA_OK),
    ("gpu-driver-branch", "error", DRIVER,  # Blackwell needs R570
     {PROD_TYPE: "p6-b200.48xlarge", DRIVER: "565.57.01", CUDA: "12.6.3", TORCH: "2.9.1+cu126"},
     BLACKWELL_OK),
    ("gpu-kernel-module", "error", MODULE,
     {**VOLTA_OK, MODULE: "open"}, {**VOLTA_OK, MODULE: "auto"}),
    ("gpu-kernel-module", "error", MODULE,  # Hopper in prod
     {MODULE: "proprietary"}, {MODULE: "auto"}),
    ("gpu-cuda", "error", CUDA,
     {**VOLTA_OK, CUDA: "13.0.2", TORCH: "2.9.1+cu130"}, VOLTA_OK),
    ("gpu-cuda", "error", CUDA,
     {PROD_TYPE: "p6-b200.48xlarge", CUDA: "12.6.3", TORCH: "2.9.1+cu126"}, BLACKWELL_OK),
    ("gpu-torch-build", "error", TORCH,
     {**BLACKWELL_OK, TORCH: "2.9.1+cu126"}, BLACKWELL_OK),
    ("gpu-torch-build", "error", TORCH,
     {**VOLTA_OK, CUDA: "13.0.2", TORCH: "2.9.1+cu130"}, {**VOLTA_OK, TORCH: "2.9.1+cu126"}),
    ("apt-version-matches", "error", f"{S}.nvidia_container_toolkit.apt_version",
     {f"{S}.nvidia_container_toolkit.apt_version": "1.17.8-1"},
     {f"{S}.nvidia_container_toolkit.apt_version": "1.18.0-1"}),
    ("java-package", "error", f"{S}.java.package",
     {f"{S}.java.package": "openjdk-21-jre-headless"},
     {f"{S}.java.package": "openjdk-17-jre-headless"}),
    # the serving endpoint (docs/serving.md)
    ("torchserve-plain-http", "error", f"{TS}.inference_address",
     {f"{TS}.inference_address": "http://0.0.0.0:8080"},
     {f"{TS}.inference_address": "http://0.0.0.0:8080",
      f"{TS}.allow_plain_http_inference": True}),
    ("endpoint-upstream", "error", f"{TS}.inference_address",
     {f"{TS}.inference_address": "http://0.0.0.0:8080", f"{TS}.allow_plain_http_inference": True,
      "environments.dev.endpoint": ENDPOINT, "environments.prod.endpoint": ENDPOINT},
     {"environments.dev.endpoint": ENDPOINT, "environments.prod.endpoint": ENDPOINT}),
    ("endpoint-parity", "warning", "environments.prod.endpoint",
     {"environments.dev.endpoint": ENDPOINT},
     {"environments.dev.endpoint": ENDPOINT, "environments.prod.endpoint": ENDPOINT}),
    ("endpoint-parity", "warning", "environments.prod.endpoint",
     {"environments.dev.endpoint": ENDPOINT,
      "environments.prod.endpoint": {**ENDPOINT, "port": 8443}},
     {"environments.dev.endpoint": {**ENDPOINT, "port": 8443},
      "environments.prod.endpoint": {**ENDPOINT, "port": 8443}}),
]


@pytest.mark.parametrize(
    ("rule", "severity", "path", "failing", "passing"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_rule_fails_and_passes(
    rule: str, severity: str, path: str, failing: dict[str, Any], passing: dict[str, Any]
) -> None:
    bad = of(run(failing), rule)
    assert bad, f"{rule} did not fire for {failing}"
    assert {p.path for p in bad} == {path}
    assert {p.severity for p in bad} == {severity}
    for p in bad:
        assert p.message and p.hint and p.source, p
    assert of(run(passing), rule) == []


# --------------------------------------------------------------------------- what apt installs


def test_a_cve_listed_toolkit_through_apt_version_is_an_error() -> None:
    found = run({f"{S}.nvidia_container_toolkit.apt_version": "1.16.1-1"})
    cve = of(found, "toolkit-cve")
    assert [p.path for p in cve] == [f"{S}.nvidia_container_toolkit.apt_version"] * len(cve)
    assert cve and "CVE-2024-0132" in cve[0].message and "as installed" in cve[0].message
    assert of(found, "apt-version-matches")


def test_another_driver_branch_through_apt_version_meets_the_gpu_rules() -> None:
    # prod runs p5 (Hopper): an R535 driver cannot run CUDA 13 there
    found = run({f"{S}.nvidia_driver.apt_version": "535.309.01-0ubuntu1"})
    paths = {p.path for p in found if p.severity == "error"}
    assert f"{S}.nvidia_driver.apt_version" in paths
    assert {p.rule for p in found if p.path == f"{S}.nvidia_driver.apt_version"} >= {
        "apt-version-matches", "cuda-min-driver"}


@pytest.mark.parametrize("apt", ["1:580.95.05-0ubuntu1", "580.95.05-1", "580.95.05"])
def test_an_apt_version_of_the_same_release_passes(apt: str) -> None:
    found = run({f"{S}.nvidia_driver.apt_version": apt})
    assert [p for p in found if p.severity == "error"] == []


def test_docker_epoch_and_debian_suffixes_read_as_the_release() -> None:
    found = run({f"{S}.docker.apt_version": "5:28.5.1-1~ubuntu.24.04~noble"})
    assert of(found, "apt-version-matches") == []
    (p,) = of(run({f"{S}.docker.apt_version": "5:27.3.1-1~ubuntu.24.04~noble"}),
              "apt-version-matches")
    assert "27.3.1" in p.message


def test_a_java_apt_version_of_another_major_is_an_error() -> None:
    (p,) = of(run({f"{S}.java.apt_version": "21.0.8+9~us1-0ubuntu1~24.04.1"}), "java-package")
    assert p.path == f"{S}.java.apt_version"
    assert of(run({f"{S}.java.apt_version": "17.0.16+8~us1-0ubuntu1~24.04.1"}),
              "java-package") == []


def test_every_rule_has_a_case() -> None:
    documented = set(re.findall(r"^([a-z][a-z0-9-]+) +(?:error|warning) ", _rules_doc(), re.M))
    assert documented == {c[0] for c in CASES} | {"driver-branch-eol"}


def _rules_doc() -> str:
    import stacklock.core.rules

    return stacklock.core.rules.__doc__ or ""


# --------------------------------------------------------------------------- messages


def test_cuda_min_driver_says_what_the_driver_supports() -> None:
    (p,) = of(run({DRIVER: "570.86.15"}), "cuda-min-driver")
    assert "580.65.06" in p.message and "up to 12.8" in p.message
    assert "no CUDA 13.x runs at all" in p.message
    assert "release notes" in p.source


def test_toolkit_cve_names_each_cve_it_is_affected_by() -> None:
    cves = {p.message.split(" is affected by ")[1].split(" ")[0]
            for p in of(run({TOOLKIT: "1.16.1"}), "toolkit-cve")}
    assert cves == {"CVE-2024-0132", "CVE-2025-23359", "CVE-2025-23266"}
    only_latest = of(run({TOOLKIT: "1.17.4"}), "toolkit-cve")
    assert [p.message.split(" is affected by ")[1].split(" ")[0] for p in only_latest] == [
        "CVE-2025-23266"
    ]
    assert "1.17.8" in only_latest[0].hint


def test_uncertain_facts_say_so_in_the_source() -> None:
    (certain,) = of(run({PROD_TYPE: "p5.48xlarge", MODULE: "proprietary"}), "gpu-kernel-module")
    assert "uncertain" not in certain.source
    (uncertain,) = of(run({CUDA: "12.9.1", TORCH: "2.9.1+cu129"}), "torch-build-published")
    assert uncertain.source.endswith("(uncertain: single or secondary source)")


@pytest.mark.parametrize(
    "pattern",
    [".*", "https?://.*", "https://.*", "http.*", "(.*)", "https://.+\\.mar"],
)
def test_allowed_urls_catch_alls_and_broken_regexes_are_errors(pattern: str) -> None:
    bad = of(run({f"{TS}.allowed_urls": [r"https://models\.example\.com/.*", pattern]}),
             "torchserve-allowed-urls")
    assert [p.path for p in bad] == [f"{TS}.allowed_urls[1]"]


@pytest.mark.parametrize(
    "pattern", [r"https://models\.example\.com/.*", r"https://s3\.amazonaws\.com/acme-models/.*"]
)
def test_allowed_urls_restricted_to_a_host_pass(pattern: str) -> None:
    assert of(run({f"{TS}.allowed_urls": [pattern]}), "torchserve-allowed-urls") == []


def test_inference_api_may_listen_on_the_network() -> None:
    problems = run({f"{TS}.inference_address": "http://0.0.0.0:8080"})
    assert of(problems, "torchserve-loopback") == []


# --------------------------------------------------------------------------- driver EOL


def test_driver_branch_eol_depends_on_today() -> None:
    edits = {DRIVER: "535.288.01", CUDA: "12.2.2", TORCH: "2.4.1+cpu"}
    (p,) = of(run(edits, today=date(2026, 11, 23)), "driver-branch-eol")
    assert p.severity == "warning" and p.path == DRIVER and "2026-06-30" in p.message
    assert "R580" in p.hint
    assert of(run(edits, today=date(2026, 6, 30)), "driver-branch-eol") == []
    assert of(run({}, today=date(2026, 11, 23)), "driver-branch-eol") == []  # R580


def test_today_defaults_to_the_real_date() -> None:
    edits = {DRIVER: "535.288.01", CUDA: "12.2.2", TORCH: "2.4.1+cpu"}
    expect = date.today() > date(2026, 6, 30)
    assert bool(of(check(build(edits)), "driver-branch-eol")) == expect


# --------------------------------------------------------------------------- where GPU rules apply


def test_gpu_rules_need_a_known_gpu_static_and_lab_hosts_declare_none() -> None:
    data = base()
    data["stacks"]["prod-stack"]["nvidia_driver"]["kernel_module"] = "proprietary"
    data["environments"] = {
        "prod": {"provider": "static", "stack": "prod-stack",
                 "hosts": [{"name": "h1", "address": "192.0.2.1"}]},
        "lab": {"provider": "lab", "stack": "prod-stack"},
    }
    problems = check(parse_manifest(yaml.safe_dump(data)), today=TODAY)
    assert [p for p in problems if p.rule.startswith(("gpu-", "aws-"))] == []
    # the same stack on p5 (Hopper) is an error
    assert of(run({MODULE: "proprietary"}), "gpu-kernel-module")


def test_each_environment_is_checked_and_named() -> None:
    problems = of(run({"environments.dev.instance_type": "p3.2xlarge", PROD_TYPE: "p3.8xlarge"}),
                  "gpu-kernel-module")
    assert len(problems) == 2
    assert "'dev'" in problems[0].message and "'prod'" in problems[1].message
    assert "V100" in problems[0].message and "sm_70" in problems[0].message


def test_cpu_torch_builds_skip_the_torch_cuda_rules() -> None:
    problems = run({TORCH: "2.9.1+cpu", PROD_TYPE: "p3.8xlarge", MODULE: "auto"})
    rules = {p.rule for p in problems}
    assert not rules & {"torch-cuda-major", "torch-cuda-minor", "torch-build-published",
                        "gpu-torch-build"}
    assert "gpu-cuda" in rules  # the stack's CUDA 13 still drops Volta


def test_check_is_pure_and_ordered() -> None:
    m = build({TOOLKIT: "1.16.1", PROD_TYPE: "gx9.4xlarge", f"{S}.java.version": "11"})
    first, second = check(m, today=TODAY), check(m, today=TODAY)
    assert first == second
    paths = [p.path for p in first]
    assert paths.index(TOOLKIT) < paths.index(PROD_TYPE)  # stacks before environments


# --------------------------------------------------------------------------- the data file


def test_data_file_facts_all_cite_known_sources() -> None:
    data = load_compatibility()
    raw = data.raw
    assert raw["schema"] == Compatibility.SCHEMA
    for key, src in raw["sources"].items():
        assert src["title"] and src["url"], key
    facts = [*data.cuda_min_driver.values(), *data.torch_builds.values(), *data.torch_archs,
             *data.toolkit_cves, *data.branches.values(), *data.archs.values(),
             *data.gpus.values(), *data.families.values(), *data.ts_tested.values()]
    assert len(facts) > 50
    assert all(f.source for f in facts)


def test_data_file_marks_the_uncertain_reference_entries() -> None:
    data = load_compatibility()
    assert data.cuda_min_driver["13.3"].uncertain
    assert not data.cuda_min_driver["13.0"].uncertain
    assert data.families["p4de"].uncertain
    assert data.torch_builds["2.6"].uncertain and not data.torch_builds["2.5"].uncertain


def test_data_file_matches_the_reference_facts() -> None:
    data = load_compatibility()
    assert str(data.cuda_min_driver["12.8"]["min_driver"]) == "570.26"
    assert data.gpus[data.families["p3"]["gpu"]]["arch"] == "volta"
    assert data.gpus[data.families["p5en"]["gpu"]]["sm"] == 90
    assert data.archs["volta"]["last_driver_branch"] == 580
    assert data.archs["blackwell"]["min_cuda"] == "12.8"
    assert data.archs["hopper"]["needs_open"] and not data.archs["turing"]["needs_open"]
    assert data.archs["turing"]["open_module"] and not data.archs["pascal"]["open_module"]
    cu130 = data.torch_arch_range("13.2")
    assert cu130 is not None and (cu130["min_sm"], cu130["max_sm"]) == (75, 120)
    cu126 = data.torch_arch_range("12.6")
    assert cu126 is not None and (cu126["min_sm"], cu126["max_sm"]) == (50, 90)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schema="other/v9"), "schema"),
        (lambda d: d["ec2_families"].update(zz={"gpu": "Z9", "source": "ec2-accelerated"}),
         "unknown GPU"),
        (lambda d: d["gpus"]["T4"].update(source="nowhere"), "unknown source"),
    ],
)
def test_a_broken_data_file_is_rejected(mutate: Any, message: str) -> None:
    raw = copy.deepcopy(load_compatibility().raw)
    mutate(raw)
    with pytest.raises(ValueError, match=message):
        Compatibility(raw)


def test_data_file_branch_max_cuda_agrees_with_the_driver_table() -> None:
    data = load_compatibility()
    for branch, fact in data.branches.items():
        runs = [c for c, f in data.cuda_min_driver.items()
                if int(str(f["min_driver"]).split(".")[0]) <= branch and not f.uncertain]
        newest = max(runs, key=lambda c: tuple(int(x) for x in c.split(".")))
        assert int(newest.split(".")[0]) == fact["max_cuda_major"], branch


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("instance_type", ["g4dn.xlarge", "p3.2xlarge", "p4de.24xlarge",
                                           "p5en.48xlarge", "p6-b200.48xlarge", "m5.large"])
def test_check_never_raises_on_odd_combinations(instance_type: str) -> None:
    m0 = build({PROD_TYPE: instance_type})
    stack = m0.stacks["prod-stack"]
    count = 0
    for driver in ("450.248.02", "535.309.01", "570.26", "580.95.05", "610.43.02", "999.99.99"):
        for cuda in ("11.8.89", "12.1", "12.7.0", "12.8.1", "13.0.2", "13.3.0", "99.9"):
            for torch in ("2.2.0+cu121", "2.9.1+cu126", "2.9.1+cu130", "2.13.0+cu132",
                          "2.13.0+cpu", "3.0.0+cu100"):
                s = stack.model_copy(update={
                    "nvidia_driver": stack.nvidia_driver.model_copy(update={"version": driver}),
                    "cuda": stack.cuda.model_copy(update={"version": cuda}),
                    "torch": stack.torch.model_copy(update={"version": torch}),
                })
                m = m0.model_copy(update={"stacks": {"prod-stack": s}})
                for p in check(m, today=TODAY):
                    assert p.path and p.message and p.hint and p.rule and p.source, p
                    assert p.severity in ("error", "warning")
                count += 1
    assert count == 6 * 7 * 6
