"""The main job end to end on a real local lab, and real deviations that verify must catch.

One lab (dev, staging, prod; one node each) is provisioned once for this module through the
CLI: real Terraform creates the node containers, real Ansible configures them over SSH from
the local mirror, and the verify play collects the real stack. Each deviation test then
changes one real thing on one real node, checks that `stacklock verify` exits 1 naming the
environment, the node, the component, expected and actual, and puts the node back. The tests
run in file order; the last ones stop and remove node containers and need no repair.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def unhint(text: str) -> str:
    """Hints name the manifest in use (`stacklock -m PATH COMMAND`); the command is what the
    assertions check."""
    return re.sub(r"stacklock -m \S+ ", "stacklock ", text)

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PROJECT = "sle2e"
NETWORK = "10.214"  # this test's own lab range (the demo's is 10.213): both can coexist
ENVS = ("dev", "staging", "prod")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth pairs, dockerd)"
    for tool in ("ip", "ssh", "debootstrap", "dockerd", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run scripts/bootstrap.sh (make test does)"
    return None


def container(env: str) -> str:
    return f"{PROJECT}-{env}-1"


def sl(manifest: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def on_node(env: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker", "exec", container(env), "bash", "-ec", script],
                         capture_output=True, text=True, timeout=300, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"on {env}: {script}\n{res.stdout}\n{res.stderr}")
    return res


def verify_json(manifest: Path) -> tuple[int, dict[str, Any]]:
    res = sl(manifest, "verify", "--format", "json", timeout=600)
    try:
        return res.returncode, json.loads(res.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"verify printed no JSON (exit {res.returncode}):\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}") from None


def deviation(report: dict[str, Any], env: str, component: str) -> dict[str, Any]:
    found = [c for c in report["deviations"]
             if c["environment"] == env and c["component"] == component]
    assert found, (f"no deviation {env}/{component}; deviations: "
                   + json.dumps(report["deviations"], indent=1)[:3000])
    return found[0]


REV_A, REV_B = "lab-2026-11", "lab-2026-12"


def with_second_revision(text: str) -> str:
    """The example with what the promotion tests need: prod on 2 nodes (canary 1, then a
    batch of 1: the suite's time budget), a promotion order, and a second stack (revision B)
    that differs from the example's (A) in a pinned package (the container toolkit 1.18.0) and a model version
    (tiny-linear 2.0: other archive bytes, other answers, y = 3x + 2)."""
    import copy
    import hashlib

    import yaml

    data = yaml.safe_load(text)
    b = copy.deepcopy(data["stacks"][REV_A])
    b["nvidia_container_toolkit"]["version"] = "1.18.0"
    archive = ROOT / "examples/models/tiny-linear-2.0.mar"
    model = b["models"][0]
    model.update(version="2.0", archive="models/tiny-linear-2.0.mar",
                 sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    if "smoke" in model:  # the same input, revision B's answers
        model["smoke"] = SMOKE_B
    data["stacks"][REV_B] = b
    data["environments"]["prod"].update(count=2, rollout={"canary": 1, "batch": 1,
                                                          "max_failures": 0})
    data["promotion"] = list(ENVS)
    return yaml.safe_dump(data, sort_keys=False)


SMOKE_B: dict[str, Any] = {"input": '{"inputs": [1, 2, 3]}', "content_type": "application/json",
                           "expected": [5.0, 8.0, 11.0], "tolerance": 1.0e-6}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, lab_docker: str) -> Iterator[Path]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # `lab_docker`: the session's Docker daemon and image (conftest: started if none runs,
    # and then stopped at the end of the session)
    work = tmp_path_factory.mktemp("lab")
    (work / "models").mkdir()
    shutil.copy(ROOT / "examples/models/tiny-linear.mar", work / "models/tiny-linear.mar")
    shutil.copy(ROOT / "examples/models/tiny-linear-2.0.mar",
                work / "models/tiny-linear-2.0.mar")
    text = (ROOT / "examples/lab.yaml").read_text()
    text = re.sub(r"^project: .*$", f"project: {PROJECT}", text, flags=re.M)
    text = text.replace("10.213.", f"{NETWORK}.")
    manifest = work / "lab.yaml"
    manifest.write_text(with_second_revision(text))
    for step in (["lock"], ["render"]):
        res = sl(manifest, *step)
        assert res.returncode == 0, res.stderr
    try:
        yield manifest
    finally:
        sl(manifest, "destroy", "--all", timeout=600)
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"name={PROJECT}-"],
                                   capture_output=True, text=True, check=False).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)


@pytest.fixture(scope="module")
def provisioned(lab: Path) -> dict[str, Any]:
    started = time.monotonic()
    # prod is the last environment of the promotion order: --yes (no terminal here); the
    # order is walked: dev, then staging, then prod, each verified before the next
    res = sl(lab, "provision", "--all", "--yes", timeout=2400)
    seconds = time.monotonic() - started
    assert res.returncode == 0, (f"provision failed ({seconds:.0f} s):\n{res.stderr[-4000:]}\n"
                                 f"{res.stdout[-6000:]}")
    return {"stderr": res.stderr, "stdout": res.stdout, "seconds": seconds}


# --------------------------------------------------------------------------- clean lab


def test_provision_all_ends_in_parity(lab: Path, provisioned: dict[str, Any]) -> None:
    out = provisioned["stdout"] + provisioned["stderr"]
    for env in ENVS:
        assert container(env) in out
    assert "parity: all nodes match the lock and each other" in out
    # the promotion order walked: each environment verified before the next one's gate
    for n, env in enumerate(ENVS, start=1):
        assert f"wave {n}/3 of the promotion order: {env}" in out, out[-4000:]
    code, report = verify_json(lab)
    assert code == 0, report["problems"]
    assert report["ok"] is True and report["deviations"] == [] and report["unreachable"] == []
    assert {n["environment"] for n in report["nodes"]} == set(ENVS)
    # the comparison really saw the stack, not an empty report
    observed = report["observed"]["prod"][container("prod")]
    assert observed["docker.version"] == "20.10.24"
    assert observed["torch.version"] == "2.13.0+cpu"
    assert observed["torchserve.running"] == "true"
    # the model's answer: the smoke test ran on every node and matched (examples/lab.yaml)
    smoke = [c for c in report["checks"] if c["component"] == "model.tiny-linear.smoke"]
    assert {c["node"] for c in smoke} == {n["node"] for n in report["nodes"]}, smoke
    assert all(c["status"] == "match" for c in smoke), smoke
    assert smoke[0]["expected"] == "[3.0, 5.0, 7.0] within 1e-06"
    assert observed["model.tiny-linear.smoke"] == "[3.0, 5.0, 7.0]"


def test_second_configure_skips_every_node_then_converges_only_the_deviating_one(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    # an unchanged lab: the stack facts prove every node matches, site.yml does not run
    res = sl(lab, "configure", "--all", "--yes", timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    for env in ENVS:
        assert f"skip      {env}/{container(env)}: matches its lock" in res.stderr, res.stderr
    assert "site.yml not run" in res.stderr and "play Install" not in res.stderr
    # real deviations on one node, staging: a hold removed; setuptools, a transitive
    # dependency of torch, replaced by Debian's own wheel (another version); a distribution
    # added to the venv by hand. verify names each; only staging is configured, and the
    # configure converges it back (held again, the locked setuptools, the extra one gone)
    on_node("staging", "apt-mark unhold docker.io >/dev/null")
    on_node("staging", f"{VENV}/bin/python -m pip install -q --no-deps --no-index "
                       "/usr/share/python-wheels/setuptools-66.1.1-py3-none-any.whl")
    on_node("staging", f"mkdir -p {SITE}/handmade-1.0.dist-info && printf "
                       "'Metadata-Version: 2.1\\nName: handmade\\nVersion: 1.0\\n' "
                       f"> {SITE}/handmade-1.0.dist-info/METADATA")
    try:
        code, report = verify_json(lab)
        assert code == 1
        hold = deviation(report, "staging", "hold.docker.io")
        assert hold["actual"] == "not held", hold
        dev = deviation(report, "staging", "pip.setuptools")
        assert dev["actual"] == "66.1.1" and dev["expected"] != "66.1.1"
        extra = deviation(report, "staging", "venv.unlocked")
        assert extra["expected"] == "none" and extra["actual"] == "handmade==1.0"
        assert {d["environment"] for d in report["deviations"]} == {"staging"}, \
            report["deviations"]
        res = sl(lab, "configure", "--all", "--yes", timeout=1800)
        assert res.returncode == 0, res.stderr[-4000:]
        decided = re.search(rf"configure staging/{container('staging')}: (\d+) deviation\(s\): ",
                            res.stderr)
        assert decided and int(decided.group(1)) >= 3, res.stderr[-4000:]
        for env in ("dev", "prod"):
            assert f"skip      {env}/{container(env)}" in res.stderr
        assert "site.yml on 1 of 4 node(s)" in res.stderr
        assert "configured dev, staging, prod: 1 host(s), changed=" in res.stderr
        assert f"{container('dev')}:" not in res.stderr.split("site.yml on 1 of 4")[1]
    finally:
        on_node("staging", "apt-mark hold docker.io >/dev/null", check=False)
        on_node("staging", f"rm -rf {SITE}/handmade-1.0.dist-info", check=False)
    assert verify_json(lab)[0] == 0


HTTP_PROBE = """
import json, sys, urllib.request, urllib.error
url, body, token = sys.argv[1], sys.argv[2], sys.argv[3]
headers = {"Content-Type": "application/json"}
if token:
    keys = json.load(open("/var/lib/torchserve/key_file.json"))
    headers["Authorization"] = "Bearer " + keys[token]["key"]
req = urllib.request.Request(url, data=body.encode() or None, headers=headers)
try:
    with urllib.request.urlopen(req, timeout=30) as resp:
        print(resp.status, resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
except OSError as exc:  # not listening (yet)
    print(0, exc)
"""


def node_http(env: str, url: str, body: str = "", token: str = "") -> tuple[int, str]:
    """An HTTP request made on the node itself (its own loopback), as a client there would."""
    res = subprocess.run(["docker", "exec", container(env), "python3", "-c", HTTP_PROBE, url,
                          body, token], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stderr
    code, _, text = res.stdout.strip().partition(" ")
    return int(code), text


def test_torchserve_answers_with_the_pinned_model(lab: Path, provisioned: dict[str, Any]) -> None:
    url = "http://127.0.0.1:8080/predictions/tiny-linear"
    code, text = node_http("staging", url, "[1.0, 2.0, 3.0]", token="inference")
    assert code == 200, text
    assert json.loads(text) == [3.0, 5.0, 7.0]  # y = 2x + 1
    code, _ = node_http("staging", url, "[1.0, 2.0, 3.0]")  # no token: refused
    assert code in (400, 401, 403)


def test_a_client_in_the_lab_network_gets_predictions_over_tls_from_every_node(
        lab: Path, provisioned: dict[str, Any]) -> None:
    """A client in the lab network, not on any node (the host, over each node's veth), calls
    every node's endpoint as the manifest gives it: TLS on its port, verified against the lab
    CA for the node's address, the environment's client token; the locked answer, 401 without
    the token, 400 over plain HTTP."""
    import ssl
    import urllib.error
    import urllib.request

    import yaml

    data = yaml.safe_load(lab.read_text())
    out = lab.parent / data["output_dir"]
    state = out / ".stacklock" / "endpoint"
    ctx = ssl.create_default_context(cafile=str(state / "ca" / "ca.pem"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))

    def post(url: str, token: str | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=b'{"inputs": [1, 2, 3]}', headers=headers)
        try:
            with opener.open(req, timeout=30) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    seen = []
    for env in ENVS:
        port = data["environments"][env]["endpoint"]["port"]
        model = data["stacks"][data["environments"][env]["stack"]]["models"][0]
        token = (state / env / "tokens").read_text().split()[-1]
        hosts = yaml.safe_load((out / "inventories" / env / "hosts.yml").read_text())
        for name, host in hosts["all"]["children"][env]["hosts"].items():
            url = f"https://{host['ansible_host']}:{port}/predictions/{model['name']}"
            started = time.monotonic()
            status, body = post(url, token)
            took = time.monotonic() - started
            assert status == 200, (env, name, status, body[:200])
            assert json.loads(body) == model["smoke"]["expected"], (env, name)
            assert post(url, None)[0] == 401, (env, name)
            plain = urllib.request.Request(url.replace("https://", "http://"), data=b"{}",
                                           headers={"Authorization": f"Bearer {token}"})
            try:
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(plain,
                                                                                  timeout=10)
                raise AssertionError(f"{env}/{name}: plain HTTP was answered")
            except urllib.error.HTTPError as exc:
                assert exc.code == 400, (env, name)
            seen.append(f"{env}/{name} {took * 1000:.0f} ms")
    print("TLS predictions:", ", ".join(seen))
    assert len(seen) == 4, seen  # dev, staging, prod (two nodes)


def test_prometheus_scrapes_every_lab_node_over_the_lab_network(
        lab: Path, provisioned: dict[str, Any], tmp_path: Path) -> None:
    """Debian's Prometheus, started by scripts/lab-prometheus.sh on 127.0.0.1 with the config
    monitoring/prometheus_config.py generates from the lab's inventories, scrapes every node of
    every environment over the lab network: TLS against the lab CA, the lab's scrape token
    (a 0600 file Prometheus reads). Every node is up, its TorchServe metrics carry the locked
    model name and version, and the parity metrics of a real `verify --prometheus` (the
    controller's textfile: the nodes export none of their own) are there for every node. A
    second job in the same config, the same nodes with a wrong token, is down (401)."""
    import ssl
    import urllib.request

    import yaml
    from prometheus_lab import LabPrometheus, extra_job, inventory_nodes, secret_file

    if shutil.which("prometheus") is None and os.geteuid() != 0:
        pytest.skip("prometheus is not installed and cannot be installed here")
    data = yaml.safe_load(lab.read_text())
    out = lab.parent / data["output_dir"]
    state = out / ".stacklock" / "endpoint"
    ca, scrape = state / "ca" / "ca.pem", state / "_metrics" / "tokens"
    assert scrape.is_file() and scrape.stat().st_mode & 0o777 == 0o600
    inventories = out / "inventories"
    nodes = inventory_nodes(inventories)
    counts = {env: data["environments"][env].get("count", 1) for env in ENVS}
    assert {env: sum(e == env for e, _, _ in nodes) for env in ENVS} == counts, nodes
    port = data["environments"]["dev"]["endpoint"]["port"]
    assert {data["environments"][env]["endpoint"]["port"] for env in ENVS} == {port}
    locked = {env: {(m["name"], str(m["version"]))
                    for m in data["stacks"][data["environments"][env]["stack"]]["models"]}
              for env in ENVS}

    # a prediction on every node (over TLS, the client token): TorchServe counts it under the
    # locked version, so every node has a request counter to scrape
    ctx = ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    for env, name, address in nodes:
        token = (state / env / "tokens").read_text().split()[-1]
        for model, _ in sorted(locked[env]):
            req = urllib.request.Request(
                f"https://{address}:{port}/predictions/{model}", data=b'{"inputs": [1, 2, 3]}',
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            with opener.open(req, timeout=30) as resp:
                assert resp.status == 200, (env, name)
    # the parity metrics: a real verify writes the controller's textfile
    textfile = tmp_path / "stacklock.prom"
    res = sl(lab, "verify", "--fast", "--prometheus", str(textfile), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the same nodes with a wrong token, as a second job of the same Prometheus
    wrong = secret_file(tmp_path / "wrong-token", "not-the-scrape-token\n")
    jobs = tmp_path / "extra-jobs.yml"
    jobs.write_text(yaml.safe_dump([extra_job("torchserve-wrong-token", inventories, port=port,
                                              ca_file=ca, bearer_token_file=wrong)]))

    started = time.monotonic()
    with LabPrometheus.start(inventories, textfile, ["--node-port", str(port), "--ca-file",
                                                     str(ca), "--bearer-token-file",
                                                     str(scrape)],
                             extra_jobs=jobs) as prom:
        # every node twice (the right and the wrong token) and the textfile
        targets = prom.wait_until_scraped(up_jobs={"stacklock", "torchserve"},
                                          expected=2 * len(nodes) + 1, timeout=60)
        waited = time.monotonic() - started
        seen = sorted((t["labels"]["job"], t["labels"].get("environment", "-"),
                       t["labels"].get("node", "-"), t["scrapeUrl"], t["health"])
                      for t in targets if t["labels"]["job"] != "stacklock")
        assert seen == sorted(
            (job, env, name, f"https://{address}:{port}/metrics", health)
            for env, name, address in nodes
            for job, health in (("torchserve", "up"), ("torchserve-wrong-token", "down"))), \
            (targets, prom.proc.poll())
        [textfile_target] = [t for t in targets if t["labels"]["job"] == "stacklock"]
        assert textfile_target["health"] == "up", textfile_target
        assert textfile_target["scrapeUrl"].startswith("http://127.0.0.1:"), textfile_target
        assert all("401" in t["lastError"] for t in targets
                   if t["labels"]["job"] == "torchserve-wrong-token"), targets
        # the same through the query API: up is 1 with the scrape token, 0 with a wrong one
        up = {(r["metric"]["job"], r["metric"]["environment"], r["metric"]["node"]):
              r["value"][1] for r in prom.query('up{job=~"torchserve.*"}')}
        assert up == {**{("torchserve", e, n): "1" for e, n, _ in nodes},
                      **{("torchserve-wrong-token", e, n): "0" for e, n, _ in nodes}}, up
        # TorchServe's metrics of every node carry the model's name and its locked version
        # (a request made on a node's own loopback without a version, as an earlier test of
        # this module makes on staging, is TorchServe's `default`: every client request
        # through the endpoint is counted under the locked version)
        served = {(r["metric"]["environment"], r["metric"]["node"], r["metric"]["model_name"],
                   r["metric"]["model_version"])
                  for r in prom.query('ts_inference_requests_total{job="torchserve",'
                                      'model_version!="default"} > 0')}
        assert served == {(e, n, m, v) for e, n, _ in nodes for m, v in locked[e]}, served
        latency = prom.query('count by (environment, node) '
                             '(ts_inference_latency_microseconds{job="torchserve"})')
        assert {(r["metric"]["environment"], r["metric"]["node"]) for r in latency} \
            == {(e, n) for e, n, _ in nodes}, latency
        # no model version served that the environment's lock does not name (the join the
        # TorchServeUnlockedModelVersion alert makes)
        assert prom.query('ts_inference_requests_total{job="torchserve",model_version!='
                          '"default"} unless on (environment, model_name, model_version) '
                          'stacklock_model_info') == []
        # stacklock's parity metrics, per node: reached, no deviation, the smoke test passed
        def per_node(promql: str) -> dict[tuple[str, str], str]:
            return {(r["metric"]["environment"], r["metric"]["node"]): r["value"][1]
                    for r in prom.query(promql)}
        every = {(e, n) for e, n, _ in nodes}
        assert per_node('stacklock_parity_node_reachable{job="stacklock"}') \
            == dict.fromkeys(every, "1")
        assert per_node('stacklock_parity_checks{job="stacklock",status="deviation",'
                        'node!="*"}') == dict.fromkeys(every, "0")
        matched = per_node('stacklock_parity_checks{job="stacklock",status="match",node!="*"}')
        assert set(matched) == every and all(int(v) > 0 for v in matched.values()), matched
        smoke = {(r["metric"]["environment"], r["metric"]["node"], r["metric"]["model_name"],
                  r["metric"]["model_version"]): r["value"][1]
                 for r in prom.query('stacklock_model_smoke_ok{job="stacklock"}')}
        assert smoke == {(e, n, m, v): "1" for e, n, _ in nodes for m, v in locked[e]}, smoke
        ok = {r["metric"]["environment"]: r["value"][1]
              for r in prom.query('stacklock_parity_ok{job="stacklock"}')}
        assert ok == dict.fromkeys(ENVS, "1"), ok
        durations = {t["labels"].get("node", "textfile"): t["lastScrapeDuration"]
                     for t in targets if t["labels"]["job"] in ("stacklock", "torchserve")}
    # Prometheus listened on 127.0.0.1 only, and stopped: its port is closed, its folder gone
    assert f"==> prometheus on http://127.0.0.1:{prom.port} " in prom.output, prom.output
    assert prom.proc.returncode is not None
    folder = Path(prom.output.split("(config ")[1].split(")")[0]).parent
    assert folder.name.startswith("stacklock-prometheus.") and not folder.exists()
    with pytest.raises(OSError):
        prom.targets()
    print(f"\nPrometheus: {len(targets)} targets scraped, every node up, in {waited:.1f} s; "
          "scrape durations: " + ", ".join(f"{k} {v * 1000:.0f} ms"
                                           for k, v in sorted(durations.items())))


def test_standalone_playbook_reaches_the_same_verdict(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    inv = lab.parent / "lab" / "inventories"
    argv = [str(BIN / "ansible-playbook"), "-i", str(inv / "dev"), "-i", str(inv / "staging"),
            "-i", str(inv / "prod"), "ansible/playbooks/verify.yml",
            "-e", f"stacklock_report_path={lab.parent / 'standalone.json'}"]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         check=False)
    assert res.returncode == 0, res.stdout[-4000:]
    report = json.loads((lab.parent / "standalone.json").read_text())
    assert report["exit_code"] == 0 and report["nodes"]


def test_fast_path_gives_the_same_report_as_the_playbook(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    """`verify --fast` (asyncssh, the same facts module) and the verify play give the same
    report: on the clean lab through the CLI, then on copies of the inventories (nothing
    changed on the nodes) with a deviation, an untrusted host key, a missing interpreter, a
    refused key, a refused port and an option the module refuses. Only timings may differ,
    and the wording of why a node could not be reached (the status, exit 3, is the same)."""
    import tempfile

    import yaml

    from stacklock.flows import fastverify

    def same(report: dict[str, Any], *, reasons: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(json.dumps(report))
        for node in data["nodes"] + data["unreachable"]:
            node.pop("facts_seconds", None)
            if not reasons and not node["reachable"]:
                node["error"] = ""
        if not reasons:
            data.pop("problems")
            for check in data["checks"]:
                if check["status"] == "unreachable":
                    check["detail"] = ""
        return data

    def compared(play: dict[str, Any], fast: dict[str, Any], *, reasons: bool = True) -> None:
        a, b = same(play, reasons=reasons), same(fast, reasons=reasons)
        for key in a:
            assert a[key] == b[key], (key, json.dumps(a[key], indent=1)[:3000],
                                      json.dumps(b[key], indent=1)[:3000])
        assert a == b

    # 1. the clean lab, both through the CLI
    play_res = sl(lab, "verify", "--format", "json", timeout=600)
    fast_res = sl(lab, "verify", "--fast", "--format", "json", timeout=600)
    assert play_res.returncode == 0, play_res.stdout[-3000:] + play_res.stderr[-3000:]
    assert fast_res.returncode == 0, fast_res.stdout[-3000:] + fast_res.stderr[-3000:]
    play, fast = json.loads(play_res.stdout), json.loads(fast_res.stdout)
    assert len(play["checks"]) > 100 and play["exit_code"] == 0
    compared(play, fast)

    # 2. copies of the inventories, broken on purpose (one change per environment)
    out_dir = lab.parent / "lab"
    work = Path(tempfile.mkdtemp(prefix="stacklock-fastcmp-"))
    other = work / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)

    def both(name: str, host_vars: dict[str, dict[str, Any]], group_vars: dict[str, Any],
             known_hosts_of: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        invs = []
        for env in ENVS:
            inv = work / name / "inventories" / env
            shutil.copytree(out_dir / "inventories" / env, inv)
            hosts = inv / "hosts.yml"
            doc = yaml.safe_load(hosts.read_text())
            for hv in doc["all"]["children"][env]["hosts"].values():
                hv.update(host_vars.get(env, {}))
            hosts.write_text(yaml.safe_dump(doc))
            gv = inv / "group_vars" / env / "stacklock.yml"
            gv.write_text(yaml.safe_dump(yaml.safe_load(gv.read_text())
                                         | group_vars.get(env, {})))
            invs.append(inv)
        if not (work / name / ".stacklock").exists():
            (work / name / ".stacklock").symlink_to(out_dir / ".stacklock")
        if known_hosts_of:
            known = work / name / "inventories" / known_hosts_of / "known_hosts"
            addr = known.read_text().splitlines()[-1].split()[0]
            key = " ".join(Path(f"{other}.pub").read_text().split()[:2])
            known.write_text(f"{addr} {key}\n")
        argv = [str(BIN / "ansible-playbook"), "ansible/playbooks/verify.yml",
                "-e", f"stacklock_report_path={work / name / 'play.json'}",
                "-e", "stacklock_verify_fail=false",
                "-e", json.dumps({"stacklock_verify_environments": list(ENVS)})]
        for inv in invs:
            argv += ["-i", str(inv)]
        # a fresh ControlPersist folder: a master left by step 1 would skip the key check
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(work / name / "cp"))
        res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600,
                             check=False, env=env)
        assert res.returncode in (0, 2, 4), res.stdout[-3000:]
        play = json.loads((work / name / "play.json").read_text())
        rep = fastverify.collect(invs, list(ENVS), report_path=work / name / "fast.json",
                                 quiet=True)
        fast = json.loads((work / name / "fast.json").read_text())
        assert int(rep.exit_code) == fast["exit_code"]
        return play, fast

    def reason(report: dict[str, Any], env: str) -> str:
        return next(str(n["error"]) for n in report["unreachable"] if n["environment"] == env)

    try:
        # dev: another host key trusted; staging: the lock wants another Docker (a deviation
        # read on the node); prod: no such interpreter (the module cannot run)
        play, fast = both("a", {"prod": {"ansible_python_interpreter": "/usr/bin/python9"}},
                          {"staging": {"docker_version": "99.0.0"}}, "dev")
        assert play["exit_code"] == fast["exit_code"] == 3
        assert {n["environment"] for n in play["unreachable"]} == {"dev", "prod"}
        assert "stacklock trust dev" in unhint(reason(play, "dev"))
        assert deviation(play, "staging", "docker.version")["expected"] == "99.0.0"
        assert deviation(fast, "staging", "docker.version")["actual"] == deviation(
            play, "staging", "docker.version")["actual"]
        assert reason(fast, "dev") == reason(play, "dev")
        compared(play, fast, reasons=False)
        # dev: a key the node refuses; staging: a probe timeout AnsibleModule refuses;
        # prod: a port nothing listens on
        play, fast = both("b", {"dev": {"ansible_ssh_private_key_file": str(other)},
                                "prod": {"ansible_port": 2}},
                          {"staging": {"stacklock_verify_probe_timeout": "soon"}}, None)
        assert play["exit_code"] == fast["exit_code"] == 3
        assert {n["environment"] for n in fast["unreachable"]} == set(ENVS)
        for report in (play, fast):
            assert "Permission denied" in reason(report, "dev")
            assert "Connection refused" in reason(report, "prod")
            assert "probe_timeout" in reason(report, "staging")
        compared(play, fast, reasons=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_clean_lab_audits_without_drift(lab: Path, provisioned: dict[str, Any]) -> None:
    prom = lab.parent / "audit.prom"
    res = sl(lab, "audit", "--format", "json", "--prometheus", str(prom), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert [e["status"] for e in doc["environments"]] == ["ok", "ok", "ok"]
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert "stacklock_drift" in families
    assert all(s.value == 0 for s in families["stacklock_drift"].samples)


# --------------------------------------------------------------------------- deviations


TOOLKIT = ("nvidia-container-toolkit", "nvidia-container-toolkit-base",
           "libnvidia-container-tools", "libnvidia-container1")


def install_toolkit(env: str, version: str, hold: bool) -> None:
    """Another (or the pinned) toolkit on a node, by hand: what an operator might do."""
    pins = " ".join(f"{p}={version}" for p in TOOLKIT)
    on_node(env, f"apt-mark unhold {' '.join(TOOLKIT)} >/dev/null; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            f"--allow-change-held-packages {pins} >/dev/null"
            + (f"; apt-mark hold {' '.join(TOOLKIT)} >/dev/null" if hold else ""))


@pytest.fixture()
def mirror_served(provisioned: dict[str, Any]) -> Iterator[None]:
    """The lab's mirror, served while a test installs packages by hand (stopped after)."""
    from stacklock.adapters import mirror

    handle = mirror.start_server(f"{NETWORK}.0.1", 8700)
    try:
        yield
    finally:
        mirror.stop_server(handle)


def test_other_package_version_on_prod_is_caught(
    lab: Path, provisioned: dict[str, Any], mirror_served: None
) -> None:
    install_toolkit("prod", "1.18.0-1", hold=False)
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "prod", "package.nvidia-container-toolkit")
        assert dev["node"] == container("prod")
        assert dev["expected"] == "1.17.8-1" and dev["actual"] == "1.18.0-1"
        # the same deviation as audit drift, attributed to prod's stack
        res = sl(lab, "audit", "prod", "--format", "json", timeout=600)
        assert res.returncode == 1, res.stderr[-3000:]
        findings = json.loads(res.stdout)["environments"][0]["findings"]
        assert any(f["kind"] == "stack" and f["component"] == "package.nvidia-container-toolkit"
                   and f["actual"] == "1.18.0-1" for f in findings), findings
        # the standalone play fails too, naming it
        inv = lab.parent / "lab" / "inventories"
        play = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inv / "prod"), "-i", str(inv / "dev"),
             "ansible/playbooks/verify.yml",
             "-e", f"stacklock_report_path={lab.parent / 'standalone-dev.json'}"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
        assert play.returncode != 0 and "nvidia-container-toolkit" in play.stdout
    finally:
        install_toolkit("prod", "1.17.8-1", hold=True)
    assert verify_json(lab)[0] == 0


def test_replaced_model_archive_on_staging_is_caught(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    store = "/var/lib/torchserve/model-store/tiny-linear.mar"
    # the mtime put back (touch -r): the digest cache must not be fooled (size, ctime)
    on_node("staging", f"cp -p {store} /root/tiny-linear.mar.orig; "
            f"printf 'other bytes' >> {store}; touch -r /root/tiny-linear.mar.orig {store}")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "staging", "archive.tiny-linear.mar.sha256")
        assert dev["node"] == container("staging")
        assert dev["expected"] != dev["actual"] and dev["actual"]
    finally:
        on_node("staging", f"cp -p /root/tiny-linear.mar.orig {store}")
    assert verify_json(lab)[0] == 0


def test_hold_removed_is_caught(lab: Path, provisioned: dict[str, Any]) -> None:
    on_node("dev", "apt-mark unhold docker.io >/dev/null")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "dev", "hold.docker.io")
        assert dev["expected"] == "held" and dev["actual"] == "not held"
    finally:
        on_node("dev", "apt-mark hold docker.io >/dev/null")
    assert verify_json(lab)[0] == 0


def test_torchserve_stopped_on_dev_is_caught(lab: Path, provisioned: dict[str, Any]) -> None:
    on_node("dev", "systemctl stop torchserve")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "dev", "torchserve.running")
        assert dev["node"] == container("dev")
        assert dev["expected"] == "true" and dev["actual"] == "false"
    finally:
        on_node("dev", "systemctl start torchserve")
        for _ in range(120):  # serving again: /ping healthy and the model's workers ready
            if on_node("dev", "/opt/torchserve/torchserve-ping /var/lib/torchserve/key_file.json "
                              "http://127.0.0.1:8080 http://127.0.0.1:8081 tiny-linear",
                       check=False).returncode == 0:
                break
            time.sleep(1)
    assert verify_json(lab)[0] == 0


VENV = "/opt/torchserve/venv"
SITE = f"{VENV}/lib/python3.11/site-packages"


def test_lab_lock_holds_the_whole_closure_with_hashes(lab: Path) -> None:
    lock = json.loads((ROOT / "examples" / "lab.lock").read_text())
    pins = lock["stacks"]["lab-2026-11"]["pip"]
    names = {p["name"] for p in pins}
    assert {"torch", "torchserve", "filelock", "jinja2", "sympy", "networkx", "pip",
            "setuptools"} <= names
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) for p in pins for f in p["files"])


def test_the_venv_holds_exactly_the_locked_closure(lab: Path, provisioned: dict[str, Any]) -> None:
    lock = json.loads((ROOT / "examples" / "lab.lock").read_text())
    want = {p["name"]: p["version"] for p in lock["stacks"]["lab-2026-11"]["pip"]}
    out = on_node("prod", f"{VENV}/bin/python -m pip list --format=json "
                          "--disable-pip-version-check").stdout
    have = {re.sub(r"[-_.]+", "-", d["name"]).lower(): d["version"] for d in json.loads(out)}
    assert have == want


def test_sbom_is_valid_and_reproducible_on_the_lab(
    lab: Path, provisioned: dict[str, Any], tmp_path: Path
) -> None:
    from test_sbom_diff import check_sbom  # the same checks as on the demo lab

    check_sbom(lab, tmp_path, ENVS, container("dev"))  # a node of ENVS[0]


def test_diff_is_empty_then_names_a_hand_installed_package_on_the_lab(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    from test_sbom_diff import check_diff

    check_diff(lab, "staging", container("staging"))


def test_removed_pin_protection_file_is_caught(lab: Path, provisioned: dict[str, Any]) -> None:
    pref = "/etc/apt/preferences.d/stacklock-docker.pref"
    on_node("prod", f"mv {pref} /root/docker.pref.orig")
    try:
        code, report = verify_json(lab)
        assert code == 1
        dev = deviation(report, "prod", "apt_pin.docker.io")
        assert dev["expected"] == "20.10.24+dfsg1-1+deb12u1+b6" and dev["actual"] == "not pinned"
        assert "/etc/apt/preferences.d/stacklock-*.pref" in dev["detail"]
    finally:
        on_node("prod", f"mv /root/docker.pref.orig {pref}")
    assert verify_json(lab)[0] == 0


def test_every_member_of_a_pinned_set_is_held_and_an_unknown_family_member_is_caught(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    lock = json.loads(lab.with_suffix(".lock").read_text())
    driver = next(iter(lock["stacks"].values()))["apt"]["nvidia_driver"]
    assert len(driver) == 28 and "nvidia-support" in {p["name"] for p in driver}
    # a dependency-set member (not a top package) unheld, and a family member the lock does
    # not know installed by hand
    on_node("prod", "apt-mark unhold nvidia-support >/dev/null")
    on_node("prod", "d=$(mktemp -d); mkdir -p $d/DEBIAN; printf 'Package: "
                    "libnvidia-stacklock-probe1\\nVersion: 535.1-1\\nArchitecture: all\\n"
                    "Maintainer: t <t@localhost>\\nDescription: verify test\\n' "
                    "> $d/DEBIAN/control; dpkg-deb --root-owner-group -b $d /tmp/p.deb "
                    ">/dev/null; dpkg -i /tmp/p.deb >/dev/null; rm -rf $d /tmp/p.deb")
    try:
        code, report = verify_json(lab)
        assert code == 1
        held = deviation(report, "prod", "hold.nvidia-support")
        assert held["expected"] == "held" and held["actual"] == "not held"
        extra = deviation(report, "prod", "apt.unpinned")
        assert extra["expected"].startswith("none")
        assert extra["actual"] == "libnvidia-stacklock-probe1=535.1-1"
    finally:
        on_node("prod", "dpkg -P libnvidia-stacklock-probe1 >/dev/null 2>&1 || true; "
                        "apt-mark hold nvidia-support >/dev/null")
    assert verify_json(lab)[0] == 0


def test_docker_stopped_everywhere_is_caught_even_in_one_environment(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    for env in ENVS:
        on_node(env, "systemctl stop docker.socket docker.service")
    try:
        res = sl(lab, "verify", "staging", "--format", "json", timeout=600)
        assert res.returncode == 1, res.stderr[-3000:]
        report = json.loads(res.stdout)
        dev = deviation(report, "staging", "service.docker")
        assert dev["expected"] == "active" and dev["actual"] != "active"
    finally:
        for env in ENVS:
            on_node(env, "systemctl start docker.service")
    assert verify_json(lab)[0] == 0


def test_a_probe_that_times_out_is_could_not_look_exit_3(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    """Exit 3, never 1: the values were not read (here: every probe given 1 ms)."""
    inv = lab.parent / "lab" / "inventories"
    out = lab.parent / "timeout.json"
    res = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv / "dev"), "ansible/playbooks/verify.yml",
         "-e", f"stacklock_report_path={out}", "-e", "stacklock_verify_probe_timeout=0.001",
         "-e", "stacklock_verify_fail=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    report = json.loads(out.read_text())
    assert report["exit_code"] == 3
    blocked = [c for c in report["checks"] if c["status"] == "could-not-look"]
    assert blocked and all("could not look" in c["detail"] for c in blocked)
    assert any("timed out" in c["detail"] or "no answer" in c["detail"] for c in blocked)
    assert report["deviations"] == [], report["deviations"]


# --------------------------------------------------------------------------- promotion
# Two revisions of the lab stack (A: the example's; B: toolkit 1.18.0 and tiny-linear 2.0).
# Every environment verified A while provisioning (evidence in the ledger). The change moves
# dev to B by a manifest edit; promote carries it to staging, then canary-first to prod.


def node_of(env: str, i: int) -> str:
    return f"{PROJECT}-{env}-{i}"


def set_stack(manifest: Path, env: str, stack: str) -> None:
    """The reviewed manifest edit an engineer makes (the one `promote` makes itself)."""
    from stacklock.flows.promote import set_stack as edit

    manifest.write_text(edit(manifest.read_text(), env, stack))


def answers(node: str) -> list[float]:
    """What TorchServe on that node answers for [1, 2]: A gives [3, 5], B gives [5, 8]."""
    res = subprocess.run(["docker", "exec", node, "python3", "-c", HTTP_PROBE,
                          "http://127.0.0.1:8080/predictions/tiny-linear", "[1.0, 2.0]",
                          "inference"], capture_output=True, text=True, timeout=120,
                         check=False)
    code, _, text = res.stdout.strip().partition(" ")
    assert code == "200", res.stdout + res.stderr
    return list(json.loads(text))


def toolkit_on(node: str) -> str:
    res = subprocess.run(["docker", "exec", node, "dpkg-query", "-W", "-f", "${Version}",
                          "nvidia-container-toolkit"], capture_output=True, text=True,
                         timeout=60, check=True)
    return res.stdout.strip()


def test_promotion_is_refused_without_evidence(lab: Path, provisioned: dict[str, Any]) -> None:
    res = sl(lab, "status")
    assert res.returncode == 0, res.stderr[-3000:]
    # provisioning's passing verify recorded A's evidence for every environment
    for env in ENVS:
        assert re.search(rf"{env}\s.*{REV_A}", res.stdout), res.stdout
    set_stack(lab, "dev", REV_B)
    for step_ in (["lock"], ["render"]):
        assert sl(lab, *step_).returncode == 0
    res = sl(lab, "promote", "staging")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "refused" in res.stderr and "dev" in res.stderr, res.stderr[-3000:]
    assert f"stack: {REV_A}" in lab.read_text().split("staging:")[1].split("prod:")[0]
    # prod can never get a revision staging has not verified, even by a hand edit
    before = lab.read_text()
    set_stack(lab, "prod", REV_B)
    assert sl(lab, "render").returncode == 0
    res = sl(lab, "rollout", "prod")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "never verified in staging (nor in prod)" in res.stderr, res.stderr[-3000:]
    # every other path that changes a node refuses it too, before touching one
    for args in (["configure", "prod", "--yes"], ["configure", "--all", "--yes"],
                 ["provision", "prod", "--yes"]):
        res = sl(lab, *args)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "never verified in staging (nor in prod)" in res.stderr, res.stderr[-3000:]
    inv = lab.parent / "lab" / "inventories" / "prod"
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inv),
                          "ansible/playbooks/site.yml"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode != 0 and "never verified in staging (nor in prod)" in res.stdout
    assert "PLAY [Install the pinned GPU serving stack]" not in res.stdout
    code, report = verify_json(lab)
    assert code == 1
    found = deviation(report, "prod", "stack.revision")
    assert "never verified" in found["detail"], found
    assert toolkit_on(node_of("prod", 1)) == "1.17.8-1"  # nothing was touched
    lab.write_text(before)
    assert sl(lab, "render").returncode == 0


def test_dev_then_staging_roll_out_the_new_revision(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    res = sl(lab, "rollout", "dev", timeout=1800)
    assert res.returncode == 0, res.stderr[-5000:]
    assert answers(node_of("dev", 1)) == [5.0, 8.0] and toolkit_on(node_of("dev", 1)) == "1.18.0-1"
    res = sl(lab, "promote", "staging", "--rollout", timeout=1800)
    assert res.returncode == 0, res.stderr[-5000:]
    assert f"environments.staging.stack {REV_A} -> {REV_B}" in res.stderr
    assert answers(node_of("staging", 1)) == [5.0, 8.0]
    # prod is behind staging now: a full verify says so (strict), prod alone passes
    code, report = verify_json(lab)
    assert code == 1
    assert report["observed"]["dev"][node_of("dev", 1)]["model.tiny-linear.smoke"] == \
        "[5.0, 8.0, 11.0]"
    assert "prod is behind staging" in deviation(report, "prod", "stack.revision")["detail"]
    assert sl(lab, "verify", "prod").returncode == 0




def test_failed_canary_halts_prod_and_rollback_restores_it(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    canary = node_of("prod", 1)
    # the fault: TorchServe cannot serve again on the canary (a broken host: another process
    # holds its inference port). Not a drop-in: configure removes unknown drop-ins (#18)
    # TorchServe is stopped first so that the squatter really gets the port; the check below
    # proves it holds it (systemd-run returns before the process binds)
    subprocess.run(["docker", "exec", canary, "bash", "-ec",
                    "systemctl stop torchserve && "
                    "systemd-run --unit=sl-port-squatter python3 -m http.server 8080 "
                    "--bind 127.0.0.1 && for _ in $(seq 50); do "
                    "python3 -c 'import urllib.request as u; u.urlopen(\"http://127.0.0.1:8080/\")' "
                    "2>/dev/null && exit 0; sleep 0.2; done; "
                    "exit 1"], check=True, capture_output=True)
    try:
        started = time.monotonic()
        res = sl(lab, "promote", "prod", "--rollout", timeout=1800)
        print(f"halted canary rollout: {time.monotonic() - started:.0f} s")
        assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-5000:]
        assert "halted" in res.stderr and "1 later batch(es) untouched" in res.stderr
        table = res.stdout
        assert re.search(rf"{canary}\s.*attempted\s.*FAILED", table), table
        # the role gave up when systemd had restarted TorchServe three times, not after its
        # whole wait (torchserve_wait_timeout), and said why
        log = "".join(p.read_text(errors="replace")  # a rollout's: site-prod-batch1.log
                      for p in (lab.parent / "lab" / ".stacklock" / "runs").rglob("site*.log"))
        assert "torchserve.service keeps failing" in log
        for i in (2,):
            assert re.search(rf"{node_of('prod', i)}\s.*untouched", table), table
            # the other node still runs A and answers like it
            assert toolkit_on(node_of("prod", i)) == "1.17.8-1"
            assert answers(node_of("prod", i)) == [3.0, 5.0]
    finally:
        subprocess.run(["docker", "exec", canary, "bash", "-ec",
                        "systemctl stop sl-port-squatter || true"], check=True,
                       capture_output=True)
    started = time.monotonic()
    res = sl(lab, "rollback", "prod", timeout=1800)
    print(f"rollback: {time.monotonic() - started:.0f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert f"environments.prod.stack -> {REV_A}" in res.stderr
    for i in (2,):  # already at A: not configured, not restarted
        assert re.search(rf"{node_of('prod', i)}\s.*already at the revision", res.stdout)
    assert toolkit_on(canary) == "1.17.8-1" and answers(canary) == [3.0, 5.0]
    assert sl(lab, "verify", "prod").returncode == 0


def test_tampered_ledger_is_detected_and_trusted_by_nothing(
    lab: Path, provisioned: dict[str, Any]
) -> None:
    ledger = lab.parent / "lab" / ".stacklock" / "ledger.jsonl"
    res = sl(lab, "ledger", "verify")
    assert res.returncode == 0 and "chain intact" in res.stdout, res.stdout + res.stderr
    original = ledger.read_text()
    lines = original.splitlines(keepends=True)
    # rewrite history: the halted prod rollout never happened, staging "verified" A again
    victim = next(i for i, line in enumerate(lines) if '"kind":"evidence"' in line
                  and '"environment":"staging"' in line)
    lines[victim] = lines[victim].replace('"environment":"staging"', '"environment":"prod"')
    ledger.write_text("".join(lines))
    try:
        res = sl(lab, "ledger", "verify")
        assert res.returncode == 1 and "TAMPERED" in res.stdout, res.stdout + res.stderr
        res = sl(lab, "promote", "prod")
        assert res.returncode == 1 and "tampered" in res.stderr, res.stderr[-3000:]
    finally:
        ledger.write_text(original)
    assert sl(lab, "ledger", "verify").returncode == 0


# --------------------------------------------------------------------------- lost nodes (last)


def test_stopped_node_is_unreachable_exit_3(lab: Path, provisioned: dict[str, Any]) -> None:
    subprocess.run(["docker", "stop", "-t", "2", container("staging")], check=True,
                   capture_output=True)
    code, report = verify_json(lab)
    assert code == 3
    assert [n["node"] for n in report["unreachable"]] == [container("staging")]
    assert not any(c["node"] == container("staging") and c["status"] == "match"
                   for c in report["checks"])


def test_removed_node_plans_a_replacement(lab: Path, provisioned: dict[str, Any]) -> None:
    subprocess.run(["docker", "rm", "-f", container("staging")], check=True,
                   capture_output=True)
    res = sl(lab, "audit", "staging", "--format", "json", timeout=600)
    assert res.returncode == 3, res.stderr[-3000:]  # the node cannot be queried: 3 wins
    env = json.loads(res.stdout)["environments"][0]
    infra = [f for f in env["findings"] if f["kind"] == "infrastructure"]
    assert infra, env
    assert any(container("staging") in f["subject"] + f["detail"] + str(f["actual"])
               for f in infra), infra
    res = sl(lab, "plan", "staging", timeout=600)
    assert res.returncode == 1 and "replace" in res.stderr and container("staging") in res.stderr
