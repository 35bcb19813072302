"""A fake NVML module built from any ``Topology``, at the level of the ``pynvml`` calls.

``plugin.nvml.discover`` and ``plugin.health`` run unchanged against it, so tests and
laptops exercise the real discovery and health code. It mirrors ``pynvml``'s names,
constant values and error class shape (``NVMLError(value)`` with ``.value``).

* GPU *i* gets the UUID ``GPU-00000000-0000-0000-0000-0000000000NN`` (NN = *i*, two
  decimal digits) so logs say which GPU is which, and bus id ``00000000:(0x10+i):00.0``
  unless the topology names one.
* NVSwitch machines (more than two GPUs, every pair the same ``NV<n>``) are modelled as
  NVML shows them: each GPU has *n* links whose remote end is a switch, spread over up to
  six switches; no GPU-to-GPU link exists. Other NVLink pairs are direct links.
* Faults (an XID event, a GPU that is lost, ``nvmlInit`` failing) are injected by the
  tests' subclass, ``tests.plugin.fakes.FaultyNvml``; this module keeps only the state
  they set (``_failed``, ``_init_error``, the event sets).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from topology.handoff import gpu_ids
from topology.links import LinkKind
from topology.model import Topology

__all__ = ["FakeNvml"]

_MIB: Final = 1024 * 1024
_MAX_SWITCHES: Final = 6
# Link class -> NVML_TOPOLOGY_* level.
_LEVELS: Final = {
    LinkKind.PIX: 10,
    LinkKind.PXB: 20,
    LinkKind.PHB: 30,
    LinkKind.NODE: 40,
    LinkKind.SYS: 50,
}
_ERROR_TEXT: Final = {
    1: "Uninitialized",
    2: "Invalid Argument",
    3: "Not Supported",
    9: "Driver Not Loaded",
    10: "Timeout",
    12: "NVML Shared Library Not Found",
    15: "GPU is lost",
    999: "Unknown Error",
}


class NVMLError(Exception):
    """Same shape as ``pynvml.NVMLError``: the NVML return code in ``.value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _ERROR_TEXT.get(self.value, f"NVML error {self.value}")


@dataclass(frozen=True, slots=True)
class _Handle:
    index: int


@dataclass(frozen=True, slots=True)
class _PciInfo:
    busId: bytes
    busIdLegacy: bytes


@dataclass(frozen=True, slots=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass(slots=True)
class _EventData:
    device: _Handle
    eventType: int
    eventData: int
    gpuInstanceId: int = 0xFFFFFFFF
    computeInstanceId: int = 0xFFFFFFFF


@dataclass(slots=True)
class _EventSet:
    registered: set[int] = field(default_factory=set)
    pending: deque[_EventData] = field(default_factory=deque)
    freed: bool = False


class FakeNvml:
    """An object that quacks like the ``pynvml`` module for one ``Topology``."""

    # Constants with pynvml's values (tests/plugin checks them against pynvml).
    NVML_SUCCESS = 0
    NVML_ERROR_UNINITIALIZED = 1
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_FEATURE_DISABLED = 0
    NVML_FEATURE_ENABLED = 1
    NVML_NVLINK_DEVICE_TYPE_GPU = 0
    NVML_NVLINK_DEVICE_TYPE_IBMNPU = 1
    NVML_NVLINK_DEVICE_TYPE_SWITCH = 2
    NVML_NVLINK_DEVICE_TYPE_UNKNOWN = 255
    NVML_TOPOLOGY_INTERNAL = 0
    NVML_TOPOLOGY_SINGLE = 10
    NVML_TOPOLOGY_MULTIPLE = 20
    NVML_TOPOLOGY_HOSTBRIDGE = 30
    NVML_TOPOLOGY_NODE = 40
    NVML_TOPOLOGY_SYSTEM = 50
    NVML_AFFINITY_SCOPE_NODE = 0
    NVML_AFFINITY_SCOPE_SOCKET = 1
    nvmlEventTypeXidCriticalError = 8
    NVMLError = NVMLError

    def __init__(self, topology: Topology, *, driver_version: str = "555.42.06-fake") -> None:
        self.topology = topology
        self.driver_version = driver_version
        n = topology.size
        self.uuids = gpu_ids(topology)
        self.bus_ids = tuple(
            g.pci_bus_id or f"00000000:{0x10 + g.index:02X}:00.0" for g in topology.gpus
        )
        # Per GPU, the remote bus id and device type of each NVLink, in link order.
        self._links: list[list[tuple[str, int]]] = [[] for _ in range(n)]
        cells = {topology.links[i][j] for i in range(n) for j in range(n) if i != j}
        only = next(iter(cells)) if len(cells) == 1 else None
        if n > 2 and only is not None and only.is_nvlink:
            switches = min(_MAX_SWITCHES, only.nvlinks)
            for i in range(n):
                self._links[i] = [
                    (f"00000001:{k % switches:02X}:00.0", self.NVML_NVLINK_DEVICE_TYPE_SWITCH)
                    for k in range(only.nvlinks)
                ]
        else:
            for i in range(n):
                for j in range(n):
                    link = topology.links[i][j]
                    if link is not None and link.is_nvlink:
                        self._links[i] += [
                            (self.bus_ids[j], self.NVML_NVLINK_DEVICE_TYPE_GPU)
                        ] * link.nvlinks
        self.NVML_NVLINK_MAX_LINKS = max(36, *(len(ls) for ls in self._links))
        self._lock = threading.Condition()
        self._initialised = 0
        self._init_error: int | None = None
        self._failed: dict[int, int] = {}
        self._event_sets: list[_EventSet] = []

    # --- helpers ------------------------------------------------------------------------

    def _post_xid(self, index: int, xid: int) -> None:
        """What the driver does on an XID: an event for GPU ``index`` in every event set."""
        with self._lock:
            for es in self._event_sets:
                if index in es.registered and not es.freed:
                    es.pending.append(_EventData(
                        device=_Handle(index),
                        eventType=self.nvmlEventTypeXidCriticalError,
                        eventData=xid,
                    ))
            self._lock.notify_all()

    def _check(self, handle: Any) -> int:
        if not self._initialised:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)
        if not isinstance(handle, _Handle) or not 0 <= handle.index < self.topology.size:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        code = self._failed.get(handle.index)
        if code is not None:
            raise NVMLError(code)
        return handle.index

    def _gpu(self, handle: Any) -> Any:
        return self.topology.gpus[self._check(handle)]

    # --- library ------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self._init_error is not None:
            raise NVMLError(self._init_error)
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        if not self._initialised:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        if not self._initialised:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)
        return self.topology.size

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        handle = _Handle(index)
        self._check(handle)
        return handle

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> _Handle:
        text = uuid.decode() if isinstance(uuid, bytes) else uuid
        if text not in self.uuids:
            raise NVMLError(6)  # NVML_ERROR_NOT_FOUND
        return self.nvmlDeviceGetHandleByIndex(self.uuids.index(text))

    # --- device properties --------------------------------------------------------------

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self.uuids[self._check(handle)]

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._check(handle)

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return self._check(handle)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        model = self._gpu(handle).model
        if model is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return str(model)

    def nvmlDeviceGetPciInfo(self, handle: Any) -> _PciInfo:
        bus = self.bus_ids[self._check(handle)]
        return _PciInfo(busId=bus.encode(), busIdLegacy=bus[4:].encode())

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> _Memory:
        mib = self._gpu(handle).memory_mib
        if mib is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return _Memory(total=mib * _MIB, free=mib * _MIB, used=0)

    def nvmlDeviceGetCpuAffinity(self, handle: Any, cpu_set_size: int) -> list[int]:
        text = self._gpu(handle).cpu_affinity
        if not text:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        words = [0] * cpu_set_size
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            for cpu in range(int(lo), int(hi or lo) + 1):
                if cpu < 64 * cpu_set_size:
                    words[cpu // 64] |= 1 << (cpu % 64)
        return words

    def nvmlDeviceGetMemoryAffinity(
        self, handle: Any, node_set_size: int, scope: int
    ) -> list[int]:
        node = self._gpu(handle).numa_node
        if node is None or node >= 64 * node_set_size:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        words = [0] * node_set_size
        words[node // 64] |= 1 << (node % 64)
        return words

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        # Only coherent (Grace) GPUs are NUMA nodes themselves; these are not.
        self._check(handle)
        raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetTopologyCommonAncestor(self, a: Any, b: Any) -> int:
        i, j = self._check(a), self._check(b)
        if i == j:
            return self.NVML_TOPOLOGY_INTERNAL
        link = self.topology.link(i, j)
        if not link.is_nvlink:
            return _LEVELS[link.kind]
        # The PCIe path under an NVLink pair is not in the topology: same NUMA node => NODE.
        ni, nj = self.topology.gpus[i].numa_node, self.topology.gpus[j].numa_node
        return self.NVML_TOPOLOGY_NODE if ni is not None and ni == nj else self.NVML_TOPOLOGY_SYSTEM

    # --- NVLink -------------------------------------------------------------------------

    def _nvlink(self, handle: Any, link: int) -> tuple[str, int]:
        links = self._links[self._check(handle)]
        if not 0 <= link < self.NVML_NVLINK_MAX_LINKS:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        if link >= len(links):
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return links[link]

    def nvmlDeviceGetNvLinkState(self, handle: Any, link: int) -> int:
        self._nvlink(handle, link)
        return self.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkVersion(self, handle: Any, link: int) -> int:
        self._nvlink(handle, link)
        return 4

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: Any, link: int) -> _PciInfo:
        bus, _ = self._nvlink(handle, link)
        return _PciInfo(busId=bus.encode(), busIdLegacy=bus[4:].encode())

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: Any, link: int) -> int:
        return self._nvlink(handle, link)[1]

    # --- events -------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> _EventSet:
        if not self._initialised:
            raise NVMLError(self.NVML_ERROR_UNINITIALIZED)
        es = _EventSet()
        with self._lock:
            self._event_sets.append(es)
        return es

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        self._check(handle)
        return self.nvmlEventTypeXidCriticalError

    def nvmlDeviceRegisterEvents(
        self, handle: Any, event_types: int, event_set: _EventSet
    ) -> None:
        index = self._check(handle)
        with self._lock:
            event_set.registered.add(index)

    def nvmlEventSetWait_v2(self, event_set: _EventSet, timeout_ms: int) -> _EventData:
        with self._lock:
            if event_set.freed:
                raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
            self._lock.wait_for(lambda: bool(event_set.pending), timeout=timeout_ms / 1000)
            if not event_set.pending:
                raise NVMLError(self.NVML_ERROR_TIMEOUT)
            return event_set.pending.popleft()

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> _EventData:
        return self.nvmlEventSetWait_v2(event_set, timeout_ms)

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:
        with self._lock:
            event_set.freed = True
            if event_set in self._event_sets:
                self._event_sets.remove(event_set)
            self._lock.notify_all()
