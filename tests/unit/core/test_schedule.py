"""`stacklock schedule` files (stacklock.schedule): systemd, cron, GitHub Actions."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from stacklock.core.schedule import (
    CRON_FILE,
    HEADER,
    INSTALL_FILE,
    SERVICE_FILE,
    TIMER_FILE,
    WORKFLOW_FILE,
    audit_argv,
    parse_interval,
    render_schedules,
    systemd_escape,
    write_schedules,
)
from stacklock.errors import InvalidInput

pytestmark = pytest.mark.unit

ENVS = ["dev", "staging", "prod"]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (apt-get install systemd); the unit files are "
           "still checked key by key by the other tests",
)

INTERVALS = [
    # spec, OnCalendar, cron
    ("hourly", "hourly", "0 * * * *"),
    ("daily", "daily", "0 0 * * *"),
    ("weekly", "weekly", "0 0 * * 1"),
    ("30min", "*-*-* *:00/30:00", "*/30 * * * *"),
    ("5m", "*-*-* *:00/5:00", "*/5 * * * *"),
    ("15 minutes", "*-*-* *:00/15:00", "*/15 * * * *"),
    ("60min", "hourly", "0 * * * *"),
    ("6h", "*-*-* 00/6:00:00", "0 */6 * * *"),
    ("1h", "hourly", "0 * * * *"),
    ("24h", "daily", "0 0 * * *"),
    ("02:30", "*-*-* 02:30:00", "30 2 * * *"),
    ("*-*-* 02:00:00", "*-*-* 02:00:00", "0 2 * * *"),
    ("*-*-* 23:05", "*-*-* 23:05:00", "5 23 * * *"),
]

BAD_INTERVALS = ["", "sometimes", "7min", "1min", "45min", "5h", "25:00", "12:60",
                 "*-*-* 02:00:30", "Mon *-*-* 02:00:00", "0 2 * * *", "-5min"]


@pytest.mark.parametrize(("spec", "on_calendar", "cron"), INTERVALS)
def test_interval_mapping(spec: str, on_calendar: str, cron: str) -> None:
    parsed = parse_interval(spec)
    assert (parsed.on_calendar, parsed.cron) == (on_calendar, cron)


@pytest.mark.parametrize("spec", BAD_INTERVALS)
def test_bad_interval_is_invalid_input_naming_the_option(spec: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_interval(spec)
    assert info.value.exit_code == 2
    assert "--interval" in info.value.message
    assert info.value.problems[0].path == "--interval"
    assert "hourly" in info.value.problems[0].hint  # the fix lists the accepted forms


def render(**kw: Any) -> dict[str, str]:
    args: dict[str, Any] = {"envs": ENVS, "interval": "*-*-* 02:00:00",
                            "repo_dir": "/srv/stacklock", "manifest": "stacklock.yaml",
                            "user": "stacklock"}
    args.update(kw)
    return render_schedules(**args)


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def test_every_file_is_rendered_with_the_header() -> None:
    files = render()
    assert sorted(files) == sorted([SERVICE_FILE, TIMER_FILE, CRON_FILE, WORKFLOW_FILE,
                                    INSTALL_FILE])
    for name, text in files.items():
        assert HEADER in text.splitlines()[0], name
        assert text.endswith("\n")
    assert render() == files  # deterministic


def test_service_unit_keys() -> None:
    service = unit(render()[SERVICE_FILE])
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["User"] == "stacklock"
    assert service["Service"]["WorkingDirectory"] == "/srv/stacklock"
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[:4] == ["/srv/stacklock/.venv/bin/stacklock", "--manifest", "stacklock.yaml",
                        "audit"]
    assert argv[4:7] == ENVS
    opts = dict(zip(argv[7::2], argv[8::2], strict=False))
    assert opts["--json"] == "/srv/stacklock/.stacklock/audit/audit.json"
    assert opts["--markdown"] == "/srv/stacklock/.stacklock/audit/audit.md"
    assert opts["--prometheus"] == "/srv/stacklock/.stacklock/audit/stacklock.prom"
    assert opts["--history"] == "/srv/stacklock/.stacklock/audit/history.jsonl"
    assert "--deep" not in argv
    assert "--deep" in render(deep=True)[SERVICE_FILE]


def test_timer_unit_keys() -> None:
    timer = unit(render(interval="30min")[TIMER_FILE])
    assert timer["Timer"]["OnCalendar"] == "*-*-* *:00/30:00"
    assert timer["Timer"]["Unit"] == "stacklock-audit.service"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_odd_paths_are_escaped_for_systemd() -> None:
    assert systemd_escape("/a b/c") == '"/a b/c"'
    assert systemd_escape("50%") == "50%%"
    assert systemd_escape("$HOME") == "$$HOME"
    service = unit(render(repo_dir="/srv/my repo%1")[SERVICE_FILE])
    assert service["Service"]["WorkingDirectory"] == "/srv/my repo%%1"
    assert shlex.split(service["Service"]["ExecStart"])[0] == "/srv/my repo%%1/.venv/bin/stacklock"


def _fake_checkout(tmp_path: Path) -> Path:
    repo = tmp_path / "checkout dir"
    binary = repo / ".venv" / "bin" / "stacklock"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    return repo


@needs_systemd
@pytest.mark.parametrize("interval", ["hourly", "30min", "6h", "*-*-* 02:00:00", "weekly"])
def test_systemd_analyze_verify(tmp_path: Path, interval: str) -> None:
    repo = _fake_checkout(tmp_path)
    files = render(interval=interval, repo_dir=str(repo), user="root")
    written = write_schedules(tmp_path / "out", files)
    units = [str(p) for p in written if p.suffix in (".service", ".timer")]
    assert len(units) == 2
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *units], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    # warnings (unknown keys, unparsable values) are printed but do not fail verify
    mine = [line for line in result.stderr.splitlines() if "stacklock-audit" in line]
    assert mine == []


@needs_systemd
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a unit whose ExecStart does not exist is refused."""
    files = render(repo_dir=str(tmp_path / "nowhere"), user="root")
    written = write_schedules(tmp_path / "out", files)
    units = [str(p) for p in written if p.suffix == ".service"]
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *units], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "not executable" in result.stderr


def _cron_matches(fields: list[str], moment: datetime) -> bool:
    values = [moment.minute, moment.hour, moment.day, moment.month, moment.isoweekday() % 7]
    for field, value in zip(fields, values, strict=True):
        if field == "*":
            continue
        step = re.fullmatch(r"\*/(\d+)", field)
        if step:
            if value % int(step.group(1)):
                return False
        elif int(field) != value:
            return False
    return True


@needs_systemd
@pytest.mark.parametrize(("spec", "on_calendar", "cron"), INTERVALS)
def test_systemd_and_cron_fire_at_the_same_minutes(spec: str, on_calendar: str,
                                                   cron: str) -> None:
    """The next elapses systemd computes are exactly the minutes the cron line matches."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "calendar", "--iterations=6", on_calendar],
        capture_output=True, text=True, timeout=60, check=True,
        env={"TZ": "UTC", "PATH": "/usr/bin:/bin"},
    )
    stamps = re.findall(r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2}):00", result.stdout)
    elapses = [datetime.strptime(s, "%Y-%m-%d %H:%M") for s in stamps]
    assert len(elapses) == 6
    fields = cron.split()
    # every systemd elapse matches cron, and cron matches nothing in between
    moment = elapses[0]
    matched = []
    while moment <= elapses[-1]:
        if _cron_matches(fields, moment):
            matched.append(moment)
        moment += timedelta(minutes=1)
    assert matched == elapses


def test_cron_entry_has_five_time_fields_user_and_command() -> None:
    text = render(interval="6h")[CRON_FILE]
    assert "." not in Path(CRON_FILE).name  # cron ignores /etc/cron.d files with dots
    entries = [line for line in text.splitlines()
               if line and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(entries) == 1
    parts = entries[0].split(None, 6)
    assert parts[:5] == ["0", "*/6", "*", "*", "*"]
    assert parts[5] == "stacklock"
    command = parts[6]
    words = shlex.split(command)
    assert "flock" in words and words[words.index("flock") + 1] == "-n"
    i = words.index("/srv/stacklock/.venv/bin/stacklock")
    assert words[i:i + len(ENVS) + 4] == ["/srv/stacklock/.venv/bin/stacklock", "--manifest",
                                         "stacklock.yaml", "audit", *ENVS]
    assert words[words.index(">>") + 1] == "/srv/stacklock/.stacklock/audit/audit.log"


def test_cron_escapes_percent() -> None:
    text = render(repo_dir="/srv/a%b")[CRON_FILE]
    entry = text.splitlines()[-1]
    assert "%" not in entry.replace("\\%", "")


def workflow(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(render(**kw)[WORKFLOW_FILE])
    return data


def test_github_workflow_is_valid_yaml_with_the_expected_keys() -> None:
    data = workflow(interval="30min", manifest="/srv/stacklock/examples/lab.yaml")
    assert data["on"]["schedule"][0]["cron"] == "*/30 * * * *"
    assert "workflow_dispatch" in data["on"]
    job = data["jobs"]["audit"]
    steps = job["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    assert any(u.startswith("actions/setup-python@") for u in uses)
    assert any(s.get("run") == "python -m pip install ." for s in steps)
    audit = next(s for s in steps if "audit" in str(s.get("run", "")).split())
    words = shlex.split(audit["run"])
    # the manifest is made relative to the checkout; no host paths leak into CI
    assert words[:4] == ["stacklock", "--manifest", "examples/lab.yaml", "audit"]
    assert words[4:7] == ENVS
    assert "--json" in words and "--markdown" in words
    assert "if" not in audit and "continue-on-error" not in audit  # drift fails the job
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    assert upload["with"]["path"].split("\n") == ["reports/audit.json", "reports/audit.md"]
    assert steps.index(upload) > steps.index(audit)
    summary = next(s for s in steps if "GITHUB_STEP_SUMMARY" in str(s.get("run", "")))
    assert summary["if"] == "always()"


def test_bad_options_are_invalid_input_naming_each(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        render(envs=["Dev", "dev", "dev"], repo_dir="relative/path", user="Bad User",
               interval="7min", textfile="/tmp/x.txt", manifest="../elsewhere.yaml")
    paths = {p.path for p in info.value.problems}
    assert {"ENV", "--repo-dir", "--user", "--interval", "--textfile", "--manifest"} <= paths
    assert info.value.exit_code == 2
    with pytest.raises(InvalidInput, match="ENV"):
        render(envs=[])


def test_write_schedules(tmp_path: Path) -> None:
    files = render()
    written = write_schedules(tmp_path, files)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == sorted(files)
    for rel, text in files.items():
        assert (tmp_path / rel).read_text(encoding="utf-8") == text
    install = (tmp_path / INSTALL_FILE).read_text(encoding="utf-8")
    assert "systemctl enable --now stacklock-audit.timer" in install


def test_audit_argv_without_optional_outputs() -> None:
    argv = audit_argv("stacklock", "m.yaml", ["dev"], report_dir="out/", textfile=None,
                      history=False, junit=False)
    assert argv == ["stacklock", "--manifest", "m.yaml", "audit", "dev", "--format", "table",
                    "--json", "out/audit.json", "--markdown", "out/audit.md"]


def test_scheduled_audits_write_the_history_audit_history_reads(tmp_path: Path) -> None:
    """One path for both (issue #21): the schedules append to
    <output_dir>/.stacklock/audit/history.jsonl, which `stacklock audit history` reads by
    default, also when the manifest's output dir is not the checkout (examples/lab.yaml)."""
    import os
    import sys

    from stacklock.core.audit_report import HISTORY_FILE
    from stacklock.core.manifest import load_manifest

    root = Path(__file__).resolve().parents[3]
    manifest = root / "examples" / "lab.yaml"
    env = {k: v for k, v in os.environ.items() if k != "STACKLOCK_MANIFEST"}
    r = subprocess.run([sys.executable, "-m", "stacklock.cli", "-m", str(manifest), "schedule",
                        "--out", str(tmp_path / "s"), "--repo-dir", str(root)],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    service = unit((tmp_path / "s" / SERVICE_FILE).read_text())
    argv = shlex.split(service["Service"]["ExecStart"])
    history = argv[argv.index("--history") + 1]
    reads = load_manifest(manifest).output_root.resolve() / HISTORY_FILE  # cli/audit.py's
    assert history == str(reads) == str(root / "examples" / "lab" / HISTORY_FILE)
    assert f"--history {reads}" in (tmp_path / "s" / CRON_FILE).read_text()
    # and render_schedules alone: the output dir's history, not the report folder's
    argv = shlex.split(unit(render(output_dir="/srv/out", report_dir="/var/lib/audit")
                            [SERVICE_FILE])["Service"]["ExecStart"])
    assert argv[argv.index("--history") + 1] == "/srv/out/.stacklock/audit/history.jsonl"
