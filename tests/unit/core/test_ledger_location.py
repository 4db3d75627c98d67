"""Where the evidence ledger lives (`manifest.ledger_location`, the `ledger:` setting) and the
pure parts of an append (`core.ledger.extend`, `backoff`). The S3 side: tests/integration/
test_ledger_s3.py against moto."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core import ledger as core
from stacklock.core.manifest import Manifest, ledger_location, parse_manifest
from stacklock.errors import ExitCode, InvalidInput

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def _data(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text("utf-8"))
    assert isinstance(data, dict)
    return data


AWS = _data("tests/corpus/valid/aws.yaml")  # dev us-east-1, prod us-west-2, no state_bucket


def _parse(data: dict[str, Any]) -> Manifest:
    return parse_manifest(yaml.safe_dump(data, sort_keys=False))


def _problems(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    with pytest.raises(InvalidInput) as info:
        _parse(data)
    assert info.value.exit_code == ExitCode.INVALID
    return [(p.path, p.message, p.hint) for p in info.value.problems]


def test_aws_environments_sharing_a_state_bucket_keep_the_ledger_there() -> None:
    loc, problems = ledger_location(_parse(AWS))
    assert problems == []
    assert loc.bucket == "corpus-aws-tfstate" and loc.key == "corpus-aws/ledger.jsonl"
    assert loc.region == "us-east-1"  # the first environment's state region
    assert loc.url == "s3://corpus-aws-tfstate/corpus-aws/ledger.jsonl"


def test_the_example_names_prods_bucket() -> None:
    loc, _ = ledger_location(_parse(_data("stacklock.yaml")))
    assert (loc.bucket, loc.region, loc.key) == ("acme-serving-prod-tfstate", "us-west-2",
                                                 "acme-serving/ledger.jsonl")


@pytest.mark.parametrize("name", ["examples/lab.yaml", "examples/static.yaml"])
def test_other_providers_keep_a_local_ledger(name: str) -> None:
    loc, problems = ledger_location(_parse(_data(name)))
    assert problems == [] and loc.bucket is None and loc.url == ""


def test_different_state_buckets_need_the_ledger_named() -> None:
    data = copy.deepcopy(AWS)
    data["environments"]["prod"]["state_bucket"] = "corpus-prod-tfstate"
    [(path, message, hint)] = _problems(data)
    assert path == "ledger"
    assert "different buckets" in message and "corpus-prod-tfstate" in message
    assert "ledger: {bucket:" in hint and "store: local" in hint
    data["ledger"] = {"bucket": "corpus-prod-tfstate"}
    loc, _ = ledger_location(_parse(data))
    assert (loc.bucket, loc.region) == ("corpus-prod-tfstate", "us-west-2")
    data["ledger"] = {"store": "local"}
    assert ledger_location(_parse(data))[0].bucket is None


def test_a_bucket_of_no_environment_needs_its_region() -> None:
    data = copy.deepcopy(AWS)
    data["ledger"] = {"bucket": "team-ledger"}
    [(path, message, _)] = _problems(data)
    assert path == "ledger.region" and "team-ledger" in message
    data["ledger"] = {"bucket": "team-ledger", "region": "eu-west-1", "key": "ci/ev.jsonl"}
    loc, _ = ledger_location(_parse(data))
    assert loc.url == "s3://team-ledger/ci/ev.jsonl" and loc.region == "eu-west-1"


def test_store_s3_without_aws_or_a_bucket_is_refused() -> None:
    data = _data("examples/lab.yaml")
    data["ledger"] = {"store": "s3"}
    [(path, message, _)] = _problems(data)
    assert path == "ledger" and "no environment is on AWS" in message


@pytest.mark.parametrize("ledger, where", [
    ({"store": "local", "bucket": "x-bucket"}, "ledger"),
    ({"store": "dynamo"}, "ledger.store"),
    ({"bucket": "Not_A_Bucket"}, "ledger.bucket"),
    ({"region": "mars-1"}, "ledger.region"),
    ({"key": "/abs/ledger.jsonl"}, "ledger.key"),
    ({"key": "a//b"}, "ledger.key"),
    ({"key": "a/../b"}, "ledger.key"),
    ({"key": "a b"}, "ledger.key"),
    ({"bucket": "x-bucket", "colour": "red"}, "ledger.colour"),
])
def test_bad_ledger_settings_name_the_field(ledger: dict[str, Any], where: str) -> None:
    data = copy.deepcopy(AWS)
    data["ledger"] = ledger
    assert where in [p for p, _, _ in _problems(data)]


def test_extend_builds_on_the_head() -> None:
    from stacklock.core import signing

    key = signing.generate("writer")
    trust = signing.Trust.of([key.public])
    assert core.extend([], [], key) == []
    first = core.extend([], [("evidence", {"n": 1}), ("evidence", {"n": 2})], key,
                        "2026-11-04T10:00:00Z")
    assert [r["seq"] for r in first] == [1, 2] and first[0]["prev"] == core.GENESIS
    more = core.extend(first, [("revision", {"fingerprint": "x"})], key)
    assert more[0]["seq"] == 3 and more[0]["prev"] == first[1]["hash"]
    assert core.check_chain(first + more, trust) is None
    assert core.check_chain(first + more, signing.Trust({})) is not None  # nobody trusted


def test_backoff_grows_is_capped_and_jittered() -> None:
    assert core.backoff(0, 1.0) == pytest.approx(0.05)
    assert core.backoff(3, 1.0) == pytest.approx(0.4)
    assert core.backoff(30, 1.0) == 2.0
    assert core.backoff(5, 0.0) == 0.0
    assert core.backoff(2, 0.5) == pytest.approx(0.1)
