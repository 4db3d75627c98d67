"""The serving endpoint's files as verify expects them (stacklock.flows.integrity): the site and
the key service's units rendered on the controller byte for byte as Ansible writes them, the
secrets compared by presence only and never read, and what the site lets through."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.adapters import ansible_template, mirror
from stacklock.core.lock import package_data
from stacklock.flows import integrity

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
ROLES = ROOT / "ansible" / "roles"
LAB = ROOT / "examples/lab/inventories/dev/group_vars/dev/stacklock.yml"
SITE = "/etc/nginx/conf.d/stacklock-endpoint.conf"
UNITS = [f"/etc/systemd/system/stacklock-endpoint-key.{k}" for k in ("service", "path", "timer")]

ENDPOINT = {
    "serving_endpoint_enabled": True,
    "serving_endpoint_port": 8443,
    "serving_endpoint_health_check_path": "/ping",
    "serving_endpoint_packages": [{"name": "nginx", "version": "1.22.1-9+deb12u12"},
                                  {"name": "nginx-common", "version": "1.22.1-9+deb12u12"}],
    "serving_endpoint_upstream": "http://127.0.0.1:8080",
    "serving_endpoint_max_body_size": 6553500,
    "serving_endpoint_tls_source": "lab_ca",
    "serving_endpoint_tokens_source": "lab",
    "serving_endpoint_lab_dir": "/srv/lab/.stacklock/endpoint",
}


def plain_hv() -> dict[str, Any]:
    """The lab's group_vars without its endpoint (examples/lab.yaml has one everywhere)."""
    data: dict[str, Any] = yaml.safe_load(LAB.read_text("utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("serving_endpoint_")}


def hv(**extra: Any) -> dict[str, Any]:
    return {**plain_hv(), **ENDPOINT, **extra}


#: the /metrics route for a scraper's token (endpoint.metrics)
METRICS = {"serving_endpoint_metrics_enabled": True,
           "serving_endpoint_metrics_upstream": "http://127.0.0.1:8082",
           "serving_endpoint_metrics_tokens_source": "lab"}


def hashes(host: dict[str, Any]) -> dict[str, str | None]:
    return {f.path: f.sha256 for f in integrity.role_files(host).get("serving_endpoint", [])}


def site(host: dict[str, Any]) -> str:
    source = integrity.role_file_sources(host)[SITE]
    return ansible_template.render(source.role, source.template,
                                   source.variables(integrity.host_vars(host)),
                                   dest=SITE).decode()


def test_no_endpoint_no_endpoint_files() -> None:
    plain = plain_hv()
    assert "serving_endpoint" not in integrity.role_files(plain)
    assert not [d for d, _ in integrity.managed_dirs(plain) if "nginx" in d]


def test_what_verify_expects_of_an_endpoint_node() -> None:
    found = hashes(hv())
    for path in (SITE, "/usr/local/sbin/stacklock-endpoint-key", *UNITS):
        assert found[path], path
    # secrets: presence, owner and mode only (and the lab CA's certificate is per node)
    for path in ("/etc/stacklock-endpoint/tls/key.pem", "/etc/stacklock-endpoint/clients.map",
                 "/etc/stacklock-endpoint/tls/cert.pem"):
        assert found[path] is None, path
    files = {f.path: f for f in integrity.role_files(hv())["serving_endpoint"]}
    assert files["/etc/stacklock-endpoint/tls/key.pem"].mode == "0600"
    assert files["/etc/stacklock-endpoint/clients.map"].mode == "0600"
    dirs = dict(integrity.managed_dirs(hv()))
    assert dirs["/etc/nginx/conf.d"] is False and dirs["/etc/stacklock-endpoint"] is True
    assert "/etc/nginx/sites-enabled" in dirs
    # the nginx pins get their own preferences and blacklist (stacklock_packages)
    apt = {f.path for f in integrity.role_files(hv())["stacklock_packages"]}
    assert "/etc/apt/preferences.d/stacklock-serving_endpoint.pref" in apt


def test_a_changed_site_setting_changes_the_site_hash_only() -> None:
    base, moved = hashes(hv()), hashes(hv(serving_endpoint_port=9443))
    assert base[SITE] != moved[SITE]
    assert {p for p in base if base[p] != moved[p]} == {SITE}


def test_a_certificate_file_is_hashed_from_the_controllers_copy(tmp_path: Path) -> None:
    cert = tmp_path / "node.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n")
    found = hashes(hv(serving_endpoint_tls_source="files",
                      serving_endpoint_tls_cert_src=str(cert),
                      serving_endpoint_tls_key_src=str(tmp_path / "node.key")))
    assert found["/etc/stacklock-endpoint/tls/cert.pem"] == hashlib.sha256(
        cert.read_bytes()).hexdigest()


def test_endpoint_secrets_are_neither_read_nor_kept() -> None:
    secret = {"cert": "C", "key": "s3cret-key"}
    with_secret = hv(stacklock_endpoint_prod_tls=secret,
                     stacklock_endpoint_prod_tokens=["t" * 40])
    assert not any(k.startswith("stacklock_endpoint_") for k in integrity.host_vars(with_secret))
    assert hashes(with_secret) == hashes(hv())


def _blocks(text: str) -> dict[str, str]:
    """location -> its body."""
    return {m.group(1).strip(): m.group(2) for m in
            re.finditer(r"location ([^{]+)\{(.*?)\n    \}\n", text, re.S)}


def test_the_site_serves_the_inference_api_only() -> None:
    text = site(hv())
    assert "listen 8443 ssl;" in text
    # TorchServe on loopback, its inference API only: management and metrics never proxied,
    # each model at the version the lock names (TorchServe's access log and metrics name it)
    assert set(re.findall(r"proxy_pass (\S+);", text)) == {
        "http://127.0.0.1:8080/ping", "http://127.0.0.1:8080/predictions/tiny-linear/1.0"}
    assert "8081" not in text and "8082" not in text
    blocks = _blocks(text)
    assert list(blocks) == ["= /ping", "= /predictions/tiny-linear",
                            "= /predictions/tiny-linear/1.0", "/predictions/", "/"]
    for where in ("= /predictions/tiny-linear", "= /predictions/tiny-linear/1.0",
                  "/predictions/"):
        assert "if ($stacklock_endpoint_client != 1)" in blocks[where], where
        assert "return 401;" in blocks[where], where
    # another model or version: refused after the token check, never passed on
    assert blocks["/predictions/"].rstrip().endswith("return 404;")
    assert text.rstrip().endswith("location / {\n        return 404;\n    }\n}")
    # the client's token never goes upstream: TorchServe gets its own key, or none
    assert text.count("proxy_set_header Authorization $stacklock_upstream_auth;") == 3
    assert 'set $stacklock_upstream_auth "";' in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "scraper" not in text and "/metrics" not in text


def test_the_model_versions_come_from_the_lock() -> None:
    models = [{"name": "b-model", "version": "2.1"}, {"name": "a-model", "version": "7"}]
    blocks = _blocks(site(hv(torchserve_models=models)))
    assert [k for k in blocks if k.startswith("= /predictions/")] == [
        "= /predictions/a-model", "= /predictions/a-model/7",
        "= /predictions/b-model", "= /predictions/b-model/2.1"]
    assert "proxy_pass http://127.0.0.1:8080/predictions/b-model/2.1;" in blocks[
        "= /predictions/b-model"]


def test_metrics_on_the_endpoint_for_a_scrape_token_only() -> None:
    text = site(hv(**METRICS))
    blocks = _blocks(text)
    assert "= /metrics" in blocks
    metrics = blocks["= /metrics"]
    assert "if ($stacklock_endpoint_scraper != 1)" in metrics and "return 401;" in metrics
    assert "proxy_pass http://127.0.0.1:8082/metrics;" in metrics
    # nothing goes upstream as a credential: neither the scraper's token nor TorchServe's key
    assert 'proxy_set_header Authorization "";' in metrics
    assert "include /etc/stacklock-endpoint/scrapers.map;" in text
    files = {f.path: f for f in integrity.role_files(hv(**METRICS))["serving_endpoint"]}
    assert files["/etc/stacklock-endpoint/scrapers.map"].mode == "0600"
    assert files["/etc/stacklock-endpoint/scrapers.map"].sha256 is None  # a secret
    assert "/etc/stacklock-endpoint/scrapers.map" not in {
        f.path for f in integrity.role_files(hv())["serving_endpoint"]}


def test_the_mirror_carries_the_pinned_nginx() -> None:
    pins = {f"{p['name']}={p['version']}" for p in package_data()["endpoint"]["debian12"]}
    assert pins <= set(mirror.APT_PACKAGES)


@pytest.mark.slow
def test_the_endpoint_files_are_what_ansible_writes(tmp_path: Path) -> None:
    """Each rendered file of the role through a real `ansible.builtin.template` run, with the
    variables layered as a play does (defaults, group_vars, vars)."""
    host = hv()
    group_vars = tmp_path / "group_vars.yml"
    group_vars.write_text(yaml.safe_dump(host))
    layers = [p for r in integrity.ROLES if (p := ROLES / r / "defaults" / "main.yml").is_file()]
    layers.append(group_vars)
    layers += [p for r in integrity.ROLES if (p := ROLES / r / "vars" / "main.yml").is_file()]
    facts = tmp_path / "node.json"
    facts.write_text(json.dumps({"ansible_facts": {}}))
    layers.append(facts)
    found = hashes(host)
    sources = integrity.role_file_sources(host)
    for i, path in enumerate([SITE, *UNITS]):
        out = tmp_path / f"out{i}"
        src = ROLES / "serving_endpoint" / "templates" / sources[path].template
        cmd = [str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-m",
               "ansible.builtin.template", "-a", f"src={src} dest={out}"]
        for layer in layers:
            cmd += ["-e", f"@{layer}"]
        env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"),
               "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote"),
               "ANSIBLE_LOCALHOST_WARNING": "false"}
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert found[path] == hashlib.sha256(out.read_bytes()).hexdigest(), path


# --------------------------------------------------------------------------- the controller's side


def _credentials(tmp_path: Path, **args: str) -> subprocess.CompletedProcess[str]:
    """The role's action plugin, run as Ansible runs it (ad hoc, on localhost)."""
    cmd = [str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-m",
           "stacklock_endpoint_credentials", "-a", json.dumps(args)]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_ACTION_PLUGINS": str(ROOT / "ansible" / "action_plugins"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"), "ANSIBLE_LOCALHOST_WARNING": "false"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_the_controllers_secrets_are_checked_and_never_shown(tmp_path: Path) -> None:
    key, cert, tokens = tmp_path / "node.key", tmp_path / "node.pem", tmp_path / "tokens"
    key.write_text("-----BEGIN PRIVATE KEY-----\nKEYSECRET\n-----END PRIVATE KEY-----\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\nC\n-----END CERTIFICATE-----\n")
    token = "b" * 64
    tokens.write_text(token + "\n")
    tokens.chmod(0o600)
    key.chmod(0o644)
    files = {"tls_source": "files", "cert_src": str(cert), "key_src": str(key),
             "tokens_source": "file", "tokens_src": str(tokens)}
    res = _credentials(tmp_path, **files)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and f"chmod 600 {key}" in out and "KEYSECRET" not in out
    key.chmod(0o600)
    res = _credentials(tmp_path, **files)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert token not in out and "KEYSECRET" not in out and "hidden" in out
    tokens.write_text("not-a-token\n")
    res = _credentials(tmp_path, **files)
    assert res.returncode != 0 and "line 1" in res.stdout + res.stderr
    # the lab: its CA issues the node's certificate; the token is made on first use
    lab = tmp_path / "lab"
    res = _credentials(tmp_path, tls_source="lab_ca", tokens_source="lab", lab_dir=str(lab),
                       environment="dev", node="demo-dev-1", address="10.213.1.2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert (lab / "dev" / "demo-dev-1.pem").is_file() and (lab / "dev" / "tokens").is_file()
    (lab_token,) = (lab / "dev" / "tokens").read_text().split()
    assert lab_token not in res.stdout + res.stderr


# --------------------------------------------------------------------------- Debian's own nginx


def _nginx_root(tmp_path: Path) -> Path:
    """Debian's nginx at the pinned version, unpacked from the lab mirror's .debs (skip when
    the mirror does not hold them: `python -m stacklock.adapters.mirror build`)."""
    import shutil

    pins = package_data()["endpoint"]["debian12"]
    debs = []
    for pin in pins:
        found = sorted((mirror.mirror_dir() / "apt").glob(
            f"{pin['name']}_{pin['version'].replace(':', '%3a')}_*.deb"))
        if not found:
            pytest.skip(f"the lab mirror has no {pin['name']} {pin['version']}")
        debs.append(found[0])
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not here")
    root = tmp_path / "root"
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_site_runs_on_debians_nginx(tmp_path: Path) -> None:
    """The role's site in the pinned nginx, its paths moved under tmp_path: `nginx -t` accepts
    it; it lets a prediction through only with a client token, presenting TorchServe's key
    (never the client's token) upstream, at the locked model version whether the client names
    it or not (another version or model: 404); /metrics answers a scraper's token only (not a
    client's), with no credential upstream."""
    import http.server
    import ssl
    import threading
    import time
    import urllib.error
    import urllib.request

    from stacklock.adapters import tls

    root = _nginx_root(tmp_path)
    port, upstream_port, metrics_port = _free_port(), _free_port(), _free_port()
    issued = tls.node_certificate(tmp_path / "lab", "dev", "node-1", ["127.0.0.1"])
    token = tls.read_tokens(tls.ensure_token(tmp_path / "lab", "dev"))[0]
    scrape = tls.read_tokens(tls.ensure_scrape_token(tmp_path / "lab"))[0]
    assert scrape != token
    text = site(hv(serving_endpoint_port=port,
                   serving_endpoint_upstream=f"http://127.0.0.1:{upstream_port}",
                   **{**METRICS, "serving_endpoint_metrics_upstream":
                      f"http://127.0.0.1:{metrics_port}"}))
    for old, new in (("/etc/stacklock-endpoint/tls/cert.pem", str(issued.cert)),
                     ("/etc/stacklock-endpoint/tls/key.pem", str(issued.key)),
                     ("/etc/stacklock-endpoint/clients.map", str(tmp_path / "clients.map")),
                     ("/etc/stacklock-endpoint/scrapers.map", str(tmp_path / "scrapers.map")),
                     ("/run/stacklock-endpoint", str(tmp_path / "run")),
                     ("/var/log/nginx", str(tmp_path))):
        text = text.replace(old, new)
    (tmp_path / "site.conf").write_text(text)
    for name, tokens in (("clients.map", [token]), ("scrapers.map", [scrape])):
        (tmp_path / name).write_bytes(ansible_template.render(
            "serving_endpoint", "clients.map.j2", {"_serving_endpoint_tokens": tokens},
            dest=f"/etc/stacklock-endpoint/{name}"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "upstream.conf").write_text(
        'set $stacklock_upstream_auth "Bearer ts-inference-key";\n')
    temp = tmp_path / "temp"
    temp.mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events { worker_connections 64; }\nhttp {\n"
        + "".join(f"  {k}_temp_path {temp}/{k};\n"
                  for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        + f"  access_log {tmp_path}/access.log;\n  include {tmp_path}/site.conf;\n}}\n")
    nginx = [str(root / "usr/sbin/nginx"), "-c", str(tmp_path / "nginx.conf"), "-p",
             str(tmp_path)]
    checked = subprocess.run([*nginx, "-t"], capture_output=True, text=True, check=False,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr

    seen: list[tuple[str, str, str | None]] = []

    class TorchServe(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bytes) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self._answer(b"[3, 5, 7]")

        def do_GET(self) -> None:
            self._answer(b'ts_inference_requests_total{model_name="tiny-linear",'
                         b'model_version="1.0",hostname="n"} 1.0\n')

        def log_message(self, *args: Any) -> None:
            pass

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", p), TorchServe)
               for p in (upstream_port, metrics_port)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = subprocess.Popen(nginx, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ctx = ssl.create_default_context(cafile=str(issued.ca))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                             urllib.request.HTTPSHandler(context=ctx))

        def call(path: str, auth: str | None, body: bytes | None = b"{}") -> int:
            headers = {"Authorization": auth} if auth else {}
            req = urllib.request.Request(f"https://127.0.0.1:{port}{path}", data=body,
                                         headers=headers)
            try:
                with opener.open(req, timeout=10) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        for _ in range(50):
            if (tmp_path / "nginx.pid").exists():
                break
            time.sleep(0.1)
        time.sleep(0.2)
        client, scraper = "Bearer " + token, "Bearer " + scrape
        model = "/predictions/tiny-linear"
        for path in (model, f"{model}/1.0", f"{model}/2.0", "/predictions/other"):
            assert call(path, None) == 401 and call(path, "Bearer " + "0" * 64) == 401, path
            assert call(path, scraper) == 401, path  # a scrape token is not a client's
        assert call(model, client) == 200 and call(f"{model}/1.0", client) == 200
        assert call(f"{model}/2.0", client) == 404 and call("/predictions/other", client) == 404
        # both reached TorchServe as the locked version, with its key, never the client's
        assert seen == [("POST", f"{model}/1.0", "Bearer ts-inference-key")] * 2
        seen.clear()
        assert call("/metrics", None, None) == 401 and call("/metrics", client, None) == 401
        assert call("/metrics", scraper, None) == 200
        assert seen == [("GET", "/metrics", None)]
        log = (tmp_path / "access.log").read_text()
        assert token not in log and scrape not in log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.slow
def test_the_verify_plays_reference_task_sees_the_endpoint(tmp_path: Path) -> None:
    """The verify play's `stacklock_files_reference` (what the controller expects of the
    files) is given the role's variables: the endpoint's files are expected, its apt pins'
    files are owned, and no endpoint secret reaches it. (It once passed only a fixed list of
    prefixes: the lab reported the endpoint's apt preferences as unowned files.)"""
    host = hv(stacklock_endpoint_prod_tokens=["c" * 64])
    group_vars = tmp_path / "group_vars.yml"
    group_vars.write_text(yaml.safe_dump(host))
    cmd = [str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-m",
           "stacklock_files_reference", "-e", f"@{group_vars}",
           "-e", f"inventory_dir={LAB.parents[2]}"]
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"), "ANSIBLE_LOCALHOST_WARNING": "false",
           # no mirror here: the .debs and wheels are `not checked`, the role files are
           "STACKLOCK_MIRROR_DIR": str(tmp_path / "mirror"),
           "STACKLOCK_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # ad hoc output: `localhost | SUCCESS => {...}`
    result = json.loads(done.stdout[done.stdout.index("{"):])
    option = result["ansible_facts"]["stacklock_files"]
    trees = {t["tree"] for t in option if "tree" in t}
    dirs = {t["dir"] for t in option if "dir" in t}
    assert {"role:serving_endpoint", "deb:nginx", "deb:nginx-common"} <= trees
    assert "/etc/nginx/conf.d" in dirs
    cache = "".join(p.read_text(errors="replace") for p in (tmp_path / "cache").rglob("*")
                    if p.is_file())
    assert "c" * 64 not in done.stdout + cache
