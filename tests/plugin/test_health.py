"""The health loop's decisions, driven step by step with a fake NVML and a fake clock."""

from __future__ import annotations

import queue
import threading

import pytest

from plugin.health import DEFAULT_IGNORED_XIDS, HealthEvent, HealthMonitor, parse_xids
from plugin.nvml import start_nvml
from topology.handoff import stable_gpu_uuid
from topology.presets import preset

from .conftest import HANG_GUARD_S
from .fakes import FaultyNvml

U = [stable_gpu_uuid(i) for i in range(8)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _monitor(**kw: object) -> tuple[HealthMonitor, FaultyNvml, queue.Queue[HealthEvent], Clock]:
    nvml = FaultyNvml(preset("dgx1-v100"))
    start_nvml(nvml)
    out: queue.Queue[HealthEvent] = queue.Queue()
    clock = Clock()
    mon = HealthMonitor(nvml, U, out, clock=clock, **kw)  # type: ignore[arg-type]
    return mon, nvml, out, clock


def _drain(q: queue.Queue[HealthEvent]) -> list[tuple[str, bool, str]]:
    out = []
    while not q.empty():
        e = q.get_nowait()
        out.append((e.uuid, e.healthy, e.reason))
    return out


def test_default_ignored_xids_are_the_application_errors() -> None:
    assert {13, 31, 43, 45, 68, 109} == DEFAULT_IGNORED_XIDS


@pytest.mark.parametrize(("text", "want"), [
    ("13,31", {13, 31}), (" 48 , 79 ", {48, 79}), ("none", set()), ("", set()),
])
def test_parse_xids(text: str, want: set[int]) -> None:
    assert parse_xids(text) == want


def test_parse_xids_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="13,x"):
        parse_xids("13,x")


def test_critical_xid_marks_only_its_gpu() -> None:
    mon, _, out, _ = _monitor()
    mon.on_xid(U[4], 79)
    assert _drain(out) == [(U[4], False, "XID 79")]


@pytest.mark.parametrize("xid", sorted(DEFAULT_IGNORED_XIDS))
def test_application_xids_are_ignored(xid: int) -> None:
    mon, _, out, _ = _monitor()
    mon.on_xid(U[1], xid)
    assert _drain(out) == []


def test_ignored_xids_are_configurable() -> None:
    mon, _, out, _ = _monitor(ignored_xids=frozenset({79}))
    mon.on_xid(U[1], 79)
    mon.on_xid(U[1], 13)
    assert _drain(out) == [(U[1], False, "XID 13")]


def test_xid_of_an_unknown_gpu_marks_every_gpu() -> None:
    mon, _, out, _ = _monitor()
    mon.on_xid(None, 48)
    assert sorted(u for u, healthy, _ in _drain(out) if not healthy) == U


def test_recovery_after_a_quiet_period_when_nvml_answers() -> None:
    mon, _, out, clock = _monitor(xid_recovery=60.0)
    mon.on_xid(U[2], 48)
    _drain(out)
    clock.now += 59
    mon.probe()
    assert _drain(out) == []  # not yet
    mon.on_xid(U[2], 48)  # a second XID restarts the quiet period
    clock.now += 59
    mon.probe()
    assert _drain(out) == []
    clock.now += 1
    mon.probe()
    assert _drain(out) == [(U[2], True, "")]


def test_recovery_zero_keeps_the_gpu_unhealthy() -> None:
    mon, _, out, clock = _monitor(xid_recovery=0.0)
    mon.on_xid(U[2], 48)
    clock.now += 10**6
    mon.probe()
    assert _drain(out) == [(U[2], False, "XID 48")]


def test_a_lost_gpu_is_unhealthy_and_heals_when_it_answers() -> None:
    mon, nvml, out, _ = _monitor()
    nvml.fail_device(5)
    mon.probe()
    assert _drain(out) == [(U[5], False, "NVML: GPU is lost")]
    mon.probe()
    assert _drain(out) == []  # no repeat while nothing changes
    nvml.restore_device(5)
    mon.probe()
    assert _drain(out) == [(U[5], True, "")]


def test_the_loop_turns_nvml_events_into_health_events() -> None:
    mon, nvml, out, _ = _monitor(wait_ms=10, recheck_interval=3600.0)
    stop = threading.Event()
    thread = threading.Thread(target=mon.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # Events are only delivered once the loop has registered for them.
        assert nvml.changes.wait_for(lambda: len(nvml.registered_for_events) == len(U))
        nvml.inject_xid(0, 31)  # ignored
        nvml.inject_xid(7, 94)
        event = out.get(timeout=HANG_GUARD_S)
        assert (event.uuid, event.healthy, event.reason) == (U[7], False, "XID 94")
    finally:
        stop.set()
        thread.join(timeout=HANG_GUARD_S)
    assert not thread.is_alive()
    assert out.empty()
