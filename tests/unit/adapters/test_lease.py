"""Shared services (adapters/lease.py): started once for runs, stopped by the last lease
holder, never under a run that still holds a lease; one started by hand is left running."""

from __future__ import annotations

from pathlib import Path

from stacklock.adapters import lease


def test_the_last_lease_holder_stops_a_service_started_for_runs(tmp_path: Path) -> None:
    running: list[str] = []

    def start() -> tuple[str, bool]:
        if running:
            return "svc", False
        running.append("svc")
        return "svc", True

    def stop(handle: str) -> bool:
        running.remove(handle)
        return True

    first = lease.acquire(tmp_path, "svc", start)
    second = lease.acquire(tmp_path, "svc", start)
    assert running == ["svc"] and lease.leased(tmp_path, "svc")
    assert lease.release(first, stop) is False  # the second run still uses it
    assert running == ["svc"]
    assert lease.release(second, stop) is True
    assert running == [] and not lease.leased(tmp_path, "svc")


def test_a_service_started_by_hand_is_left_running(tmp_path: Path) -> None:
    stopped: list[str] = []
    held = lease.acquire(tmp_path, "svc", lambda: ("svc", False))
    assert lease.release(held, lambda h: stopped.append(h) is None) is False
    assert stopped == []


def test_a_stop_while_leased_is_left_to_the_last_holder(tmp_path: Path) -> None:
    stopped: list[str] = []
    held = lease.acquire(tmp_path, "svc", lambda: ("svc", False))
    assert lease.stop_unless_leased(tmp_path, "svc", lambda: stopped.append("now") is None) is False
    assert stopped == []  # a run holds a lease: not stopped under it
    assert lease.release(held, lambda h: stopped.append(h) is None) is True
    assert stopped == ["svc"]  # marked as started for runs: the last holder stopped it
    assert lease.stop_unless_leased(tmp_path, "svc", lambda: stopped.append("now") is None)
    assert stopped == ["svc", "now"]
