"""GPU health from NVML: XID events, failing handles, and the way back to Healthy.

``HealthMonitor.run`` is a loop on its own thread that feeds ``HealthEvent``s into a
queue until its stop Event is set; the plugin drains the queue into the resource
manager, whose change wakes every ListAndWatch stream.

* An XID critical-error event marks its GPU unhealthy, unless the XID is in the ignored
  set (by default 13, 31, 43, 45, 68, 109: errors of the application, not the GPU).
  An event NVML cannot attribute to a GPU marks every GPU unhealthy.
* Every ``recheck_interval`` each GPU is probed (handle by UUID, then a read). A failing
  probe marks it unhealthy ("GPU is lost"); a passing one heals a GPU that was only
  unhealthy because its probe failed.
* A GPU marked unhealthy by an XID turns Healthy again once ``xid_recovery`` seconds have
  passed without another critical XID on it and its probe passes (0 disables this: the
  GPU stays unhealthy until the plugin restarts, e.g. after the GPU is reset).
  Upstream k8s-device-plugin has no way back at all; a transient XID there takes a GPU
  out of service until someone restarts the DaemonSet pod.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from plugin.log import fields
from plugin.metrics import PluginMetrics
from plugin.nvml import error_code

__all__ = ["DEFAULT_IGNORED_XIDS", "HealthEvent", "HealthMonitor", "parse_xids"]

log = logging.getLogger(__name__)

#: XIDs that report an application fault (illegal address, MMU fault from the app,
#: reset channel, preemptive cleanup, video decode error, ...), not a broken GPU.
DEFAULT_IGNORED_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})


def parse_xids(text: str) -> frozenset[int]:
    """``"13,31, 43"`` -> {13, 31, 43}; ``""`` or ``"none"`` -> no XID ignored.

    >>> sorted(parse_xids("13, 31"))
    [13, 31]
    """
    value = text.strip()
    if value.lower() in ("", "none"):
        return frozenset()
    try:
        return frozenset(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"XID list {text!r}: expected comma-separated integers") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthEvent:
    uuid: str
    healthy: bool
    reason: str


@dataclass(slots=True)
class _State:
    healthy: bool = True
    reason: str = ""
    xid_at: float | None = None  # when the last critical XID arrived
    lost: bool = False  # unhealthy because the probe failed


class HealthMonitor:
    """Watches ``uuids`` through ``nvml`` and reports every change on ``out``."""

    def __init__(
        self,
        nvml: Any,
        uuids: Iterable[str],
        out: queue.Queue[HealthEvent],
        *,
        ignored_xids: frozenset[int] = DEFAULT_IGNORED_XIDS,
        wait_ms: int = 1000,
        recheck_interval: float = 10.0,
        xid_recovery: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.nvml = nvml
        self.uuids = tuple(uuids)
        self.out = out
        self.ignored_xids = ignored_xids
        self.wait_ms = wait_ms
        self.recheck_interval = recheck_interval
        self.xid_recovery = xid_recovery
        self.clock = clock
        self.metrics = metrics
        self.state = {u: _State() for u in self.uuids}
        self._registered: set[str] = set()

    # --- state changes ----------------------------------------------------------------

    def _set(self, uuid: str, healthy: bool, reason: str) -> None:
        st = self.state[uuid]
        if st.healthy == healthy and st.reason == reason:
            return
        st.healthy, st.reason = healthy, reason
        level = logging.INFO if healthy else logging.WARNING
        log.log(level, "gpu health changed", extra=fields(
            gpu=uuid, health="Healthy" if healthy else "Unhealthy", reason=reason))
        self.out.put(HealthEvent(uuid=uuid, healthy=healthy, reason=reason))

    def on_xid(self, uuid: str | None, xid: int) -> None:
        ignored = xid in self.ignored_xids
        if self.metrics is not None:
            self.metrics.xid_events.labels(str(xid), str(ignored).lower()).inc()
        if ignored:
            log.info("application XID ignored", extra=fields(gpu=uuid or "unknown", xid=xid))
            return
        targets = [uuid] if uuid in self.state else list(self.uuids)
        now = self.clock()
        for u in targets:
            self.state[u].xid_at = now
            self._set(u, False, f"XID {xid}" + ("" if uuid in self.state else " (GPU unknown)"))

    def probe(self) -> None:
        """Probe every GPU; heal what passes and is due, mark what fails."""
        now = self.clock()
        for uuid in self.uuids:
            st = self.state[uuid]
            try:
                handle = self.nvml.nvmlDeviceGetHandleByUUID(uuid)
                self.nvml.nvmlDeviceGetUUID(handle)
            except self.nvml.NVMLError as e:
                st.lost = True
                self._set(uuid, False, f"NVML: {e}")
                continue
            if uuid not in self._registered and self._event_set is not None:
                self._register(uuid, handle)
            st.lost = False
            if st.xid_at is not None:
                if self.xid_recovery <= 0 or now - st.xid_at < self.xid_recovery:
                    continue
                st.xid_at = None
                self._set(uuid, True, "")
                log.info("gpu recovered", extra=fields(
                    gpu=uuid, quiet_s=self.xid_recovery, reason="no critical XID since"))
            elif not st.healthy:
                self._set(uuid, True, "")

    # --- NVML event loop --------------------------------------------------------------

    def _register(self, uuid: str, handle: Any) -> None:
        try:
            self.nvml.nvmlDeviceRegisterEvents(
                handle, self.nvml.nvmlEventTypeXidCriticalError, self._event_set)
            self._registered.add(uuid)
        except self.nvml.NVMLError as e:
            # Some GPUs (and vGPUs) do not deliver XID events; the probe still runs.
            log.warning("gpu XID events unavailable", extra=fields(gpu=uuid, error=str(e)))
            self._registered.add(uuid)

    def _event_uuid(self, data: Any) -> str | None:
        try:
            raw = self.nvml.nvmlDeviceGetUUID(data.device)
        except self.nvml.NVMLError:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: wait for XID events (``wait_ms`` at a time) and probe."""
        try:
            self._event_set = self.nvml.nvmlEventSetCreate()
        except self.nvml.NVMLError as e:
            log.warning("NVML event set unavailable: probing only", extra=fields(error=str(e)))
            self._event_set = None
        timeout_code = getattr(self.nvml, "NVML_ERROR_TIMEOUT", 10)
        next_probe = self.clock()
        try:
            while not stop.is_set():
                if self.clock() >= next_probe:
                    self.probe()
                    next_probe = self.clock() + self.recheck_interval
                if self._event_set is None:
                    stop.wait(min(self.recheck_interval, self.wait_ms / 1000))
                    continue
                try:
                    data = self.nvml.nvmlEventSetWait_v2(self._event_set, self.wait_ms)
                except self.nvml.NVMLError as e:
                    if error_code(self.nvml, e) != timeout_code:
                        log.warning("NVML event wait failed", extra=fields(error=str(e)))
                        stop.wait(self.wait_ms / 1000)
                    continue
                if int(data.eventType) != int(self.nvml.nvmlEventTypeXidCriticalError):
                    continue
                self.on_xid(self._event_uuid(data), int(data.eventData))
        finally:
            if self._event_set is not None:
                with contextlib.suppress(self.nvml.NVMLError):
                    self.nvml.nvmlEventSetFree(self._event_set)

    _event_set: Any = None
