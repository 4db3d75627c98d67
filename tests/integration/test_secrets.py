"""Secrets have a home (issue 13, item 4), with the real CLI, real Terraform and a real
ansible-playbook: a planted mirror and index credential (from the environment, and from a
secrets file) never reaches a file stacklock writes, a log, a report or the lock; everything
under `.stacklock/` is 0600 in 0700 folders, local Terraform state 0600; the extra-vars file
that carried the credential to the play is gone after it; a group-readable secrets file is
refused with exit 2 naming it and `chmod 600`. The hosts are unreachable on purpose
(127.0.0.1:9): configure and verify run their plays and exit 3."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
APT_SECRET = "aptS3cret-planted-7f3a9c"
PIP_SECRET = "pipS3cret-planted-1b8e2d"
FILE_SECRET = "fileS3cret-planted-c0ffee"
SECRETS = (APT_SECRET, PIP_SECRET, FILE_SECRET)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """examples/static.yaml with an internal apt mirror (needs a login) and hosts that refuse
    connections, its lock and model, in a folder of its own."""
    data = yaml.safe_load((ROOT / "examples" / "static.yaml").read_text("utf-8"))
    data["package_sources"]["apt"] = [{
        "name": "internal-debian", "uri": "https://mirror.internal.example/ubuntu/",
        "suite": "jammy", "components": ["main"], "trusted": True}]
    data["environments"] = {"dev": {
        "provider": "static", "stack": data["environments"]["dev"]["stack"],
        "allow_loopback": True,  # this machine's closed port 9, on purpose
        "hosts": [{"name": "gpu-dev-01", "address": "127.0.0.1", "port": 9, "user": "ubuntu"}]}}
    (tmp_path / "stacklock.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(ROOT / "examples" / "static.lock", tmp_path / "stacklock.lock")
    shutil.copytree(ROOT / "examples" / "models", tmp_path / "models")
    return tmp_path / "stacklock.yaml"


def sl(manifest: Path, *args: str, env: dict[str, str],
       timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "stacklock"), "-m", str(manifest), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def _private_tmp_leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("stacklock-secrets-*")}


def test_a_planted_secret_reaches_no_file_and_state_is_private(site: Path,
                                                               tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.yml"
    secrets_file.write_text(yaml.safe_dump({"stacklock_pip_auth": {
        "pypi.org": {"login": "filelogin", "password": FILE_SECRET}}}))
    secrets_file.chmod(0o600)
    env = {**os.environ,
           "STACKLOCK_APT_AUTH_INTERNAL_DEBIAN": f"aptlogin:{APT_SECRET}",
           "STACKLOCK_PIP_AUTH": f"piplogin:{PIP_SECRET}",
           "STACKLOCK_SECRETS_FILE": str(secrets_file),
           "STACKLOCK_LOCK_TIMEOUT": "60"}
    before = _private_tmp_leftovers()
    outputs = []
    for args, codes in ((("lock", "--offline"), {0}), (("render",), {0}),
                        (("apply", "dev"), {0}), (("plan", "dev"), {0}),
                        (("configure", "dev"), {3}), (("verify", "dev"), {3}),
                        (("destroy", "dev"), {0})):
        res = sl(site, *args, env=env)
        outputs.append(res.stdout + res.stderr)
        assert res.returncode in codes, f"{args}: {res.returncode}\n{res.stdout}{res.stderr}"
    # the play really ran with the credentials (the extra-vars file), and it is gone
    site_logs = list((site.parent / "static" / ".stacklock" / "runs").glob("*/site.log"))
    assert site_logs, "configure ran no site.yml"
    assert "-e @" in site_logs[0].read_text("utf-8")
    assert _private_tmp_leftovers() == before

    # nothing stacklock printed or wrote holds a planted secret
    for text in outputs:
        for secret in SECRETS:
            assert secret not in text
    written = [p for p in site.parent.rglob("*") if p.is_file() and p != secrets_file]
    assert len(written) > 10
    for path in written:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{path} holds a planted secret"

    # .stacklock: files 0600, folders 0700 (itself included)
    private = site.parent / "static" / ".stacklock"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    entries = list(private.rglob("*"))
    assert any(p.name == "verify.log" for p in entries)
    for path in entries:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o700, f"{path}: {mode:04o}"
        else:
            assert mode == 0o600, f"{path}: {mode:04o}"
    # local Terraform state: owner only
    states = list((site.parent / "static" / "terraform").rglob("*.tfstate*"))
    assert states
    for path in states:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_readable_secrets_file_is_refused(site: Path, tmp_path: Path) -> None:
    secrets_file = tmp_path / "secrets.yml"
    secrets_file.write_text(yaml.safe_dump({"stacklock_apt_auth": {
        "internal-debian": {"login": "a", "password": FILE_SECRET}}}))
    secrets_file.chmod(0o644)
    env = {**os.environ, "STACKLOCK_SECRETS_FILE": str(secrets_file)}
    for args in (("lock", "--offline"), ("render",), ("apply", "dev")):
        assert sl(site, *args, env=env).returncode == 0
    res = sl(site, "configure", "dev", env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert str(secrets_file) in res.stderr and f"chmod 600 {secrets_file}" in res.stderr
    assert FILE_SECRET not in res.stdout + res.stderr
    assert not list((site.parent / "static" / ".stacklock" / "runs").glob("*/site.log"))
