"""The decisions behind the device plugin's RPCs, over ``topology/`` (no gRPC here).

``ResourceManager`` is what ``plugin.server`` calls; ``TopologyResourceManager``
implements it for one node's discovered ``Topology``:

* ``devices()``: every GPU (ID = UUID) with its NUMA node and health.
* ``preferred()``: an assigned set (written by the extender on a pod bound to this node)
  when one fits the request, otherwise the allocator's best set among the available GPUs.
  Everything it reads is in memory: the pod cache snapshot and the kubelet's last
  PodResources record, both refreshed on background threads.
* ``allocate()``: refuses an unknown or unhealthy ID, naming it; otherwise the container's
  environment and device nodes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, Protocol

from plugin.cluster import PodKey
from plugin.pods import PodEntry
from topology.allocate import Allocation, allocator_for
from topology.model import Topology
from topology.names import TERMINAL_PHASES

__all__ = [
    "CONTROL_DEVICES",
    "HEALTHY",
    "UNHEALTHY",
    "AllocateOptions",
    "AllocationError",
    "Candidate",
    "ContainerAllocation",
    "DeviceSpec",
    "DeviceState",
    "KubeletRecord",
    "Preferred",
    "ResourceManager",
    "TopologyResourceManager",
    "assigned_candidates",
]

log = logging.getLogger(__name__)

HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"

#: Device nodes every CUDA container needs besides its /dev/nvidiaN (those that exist).
CONTROL_DEVICES: Final = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")

KubeletRecord = Mapping[PodKey, Mapping[str, tuple[str, ...]]]
"""The kubelet's PodResources record for this resource: pod -> container -> device IDs."""

_EMPTY_RECORD: Final[KubeletRecord] = MappingProxyType({})


class AllocationError(ValueError):
    """A request the plugin refuses; the message names the device."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceState:
    uuid: str
    index: int
    numa_node: int | None
    minor: int
    healthy: bool = True
    reason: str = ""

    @property
    def health(self) -> str:
        return HEALTHY if self.healthy else UNHEALTHY


@dataclass(frozen=True, slots=True, kw_only=True)
class Preferred:
    """A preferred set and where it came from (for logs and metrics)."""

    devices: tuple[str, ...]
    source: Literal["assigned", "allocator", "fallback"]
    pod: str | None = None
    container: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSpec:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerAllocation:
    devices: tuple[DeviceState, ...]
    envs: Mapping[str, str]
    device_specs: tuple[DeviceSpec, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocateOptions:
    #: Hand the container its /dev nodes (for runtimes without the NVIDIA hook/CDI).
    pass_device_specs: bool = False
    #: Where the plugin sees the host's /dev (a hostPath mount in a DaemonSet, a temp
    #: dir in tests); only used to check which device nodes exist.
    dev_root: Path = Path("/dev")


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """An assigned set not yet allocated: pod, container and GPU UUIDs."""

    pod: str
    container: str
    uuids: frozenset[str]
    created: str
    #: The pod was allocated another set: this one is free in the scheduler's plan.
    orphan: bool = False


class ResourceManager(Protocol):
    def devices(self) -> tuple[DeviceState, ...]: ...

    def wait_for_change(self, version: int, timeout: float) -> int:
        """Block until the device list differs from ``version`` (or ``timeout``)."""
        ...

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Preferred: ...

    def index_of(self, uuid: str) -> int | None:
        """The GPU's index on this node (for logs), ``None`` for an unknown ID."""
        ...

    def allocate(self, device_ids: Sequence[str]) -> ContainerAllocation: ...


def assigned_candidates(
    pods: Mapping[PodKey, PodEntry], kubelet: KubeletRecord, known: Iterable[str]
) -> list[Candidate]:
    """Assigned sets on this node that no container holds yet, best bet first.

    First the sets of containers the kubelet has not allocated yet, oldest pod first
    (kube-scheduler binds in queue order and the kubelet admits in roughly that order).
    Then *orphaned* sets: containers that were allocated something else (two pods of one
    size admitted in the opposite order swap sets; the second takes the first's set).
    Skipped: pods finished or being deleted, and sets naming a GPU this node lacks.
    """
    known_set = frozenset(known)
    pending: list[Candidate] = []
    orphans: list[Candidate] = []
    for key, entry in pods.items():
        pod = entry.pod
        if entry.assigned is None or pod.deleting or pod.phase in TERMINAL_PHASES:
            continue
        held = kubelet.get(key, {})
        allocated = entry.allocated or {}
        for container, uuids in entry.assigned.items():
            ids = frozenset(uuids)
            if not ids or not ids <= known_set:
                continue
            holds = held.get(container) or allocated.get(container)
            if holds and frozenset(holds) == ids:
                continue
            (orphans if holds else pending).append(Candidate(
                pod=pod.ref, container=container, uuids=ids, created=pod.created,
                orphan=bool(holds)))
    order = lambda c: (c.created, c.pod, c.container)  # noqa: E731
    return sorted(pending, key=order) + sorted(orphans, key=order)


class TopologyResourceManager:
    """``ResourceManager`` for one node: its topology, health, pods and kubelet record."""

    def __init__(
        self,
        topology: Topology,
        *,
        minors: Mapping[str, int] | None = None,
        pods: Callable[[], Mapping[PodKey, PodEntry]] = lambda: MappingProxyType({}),
        kubelet: Callable[[], KubeletRecord] = lambda: _EMPTY_RECORD,
        options: AllocateOptions = AllocateOptions(),
    ) -> None:
        missing = [g.name for g in topology.gpus if not g.uuid]
        if missing:
            raise ValueError(f"GPUs without a UUID cannot be advertised: {', '.join(missing)}")
        self.topology = topology
        self.options = options
        self._pods = pods
        self._kubelet = kubelet
        self._index = {g.uuid: g.index for g in topology.gpus if g.uuid}
        minors = minors or {}
        self._devices: tuple[DeviceState, ...] = tuple(
            DeviceState(uuid=uuid, index=i, numa_node=topology.gpus[i].numa_node,
                        minor=minors.get(uuid, i))
            for uuid, i in self._index.items()
        )
        self._version = 0
        self._changed = threading.Condition()
        self._allocator = allocator_for(topology)

    def warm_up(self) -> None:
        """Build the allocator's tables now, so the first kubelet call is fast."""
        try:
            self._allocator.best(1)
        except Exception:
            log.exception("allocator warm-up failed; preferred sets fall back to index order")

    # --- devices and health ------------------------------------------------------------

    def devices(self) -> tuple[DeviceState, ...]:
        return self._devices

    @property
    def version(self) -> int:
        return self._version

    def set_health(self, uuid: str, healthy: bool, reason: str = "") -> bool:
        """Record a health change; True when it changed anything (streams are woken)."""
        with self._changed:
            i = self._index.get(uuid)
            if i is None:
                return False
            current = self._devices[i]
            if current.healthy == healthy and current.reason == reason:
                return False
            devices = list(self._devices)
            devices[i] = replace(current, healthy=healthy, reason=reason)
            self._devices = tuple(devices)
            self._version += 1
            self._changed.notify_all()
            return True

    def wake(self) -> None:
        """Wake every waiting stream (on shutdown)."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def wait_for_change(self, version: int, timeout: float) -> int:
        with self._changed:
            self._changed.wait_for(lambda: self._version != version, timeout=timeout)
            return self._version

    # --- GetPreferredAllocation --------------------------------------------------------

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Preferred:
        avail = [d for d in dict.fromkeys(available) if d in self._index]
        avail_set = frozenset(avail)
        must = [d for d in dict.fromkeys(must_include) if d in avail_set]
        must_set = frozenset(must)
        if size <= 0:
            return Preferred(devices=(), source="fallback", detail="size 0")
        candidates = assigned_candidates(self._pods(), self._kubelet(), self._index)
        for c in candidates:
            if len(c.uuids) == size and c.uuids <= avail_set and must_set <= c.uuids:
                return Preferred(
                    devices=self._ordered(c.uuids), source="assigned",
                    pod=c.pod, container=c.container,
                    detail="its pod holds other GPUs (admitted out of order)" if c.orphan else "",
                )
        # Keep GPUs promised to other pods out of the choice when the rest suffices.
        promised = (c.uuids for c in candidates if not c.orphan)
        reserved = frozenset().union(*promised) & (avail_set - must_set)
        detail = ""
        for free in (avail_set - reserved, avail_set) if reserved else (avail_set,):
            try:
                result = self._allocator.best(size, self._mask(free), self._mask(must_set))
            except Exception as e:  # never fail the kubelet's call: it would block admission
                log.exception("allocator failed; answering by index")
                detail = f"allocator error: {e}"
                break
            if isinstance(result, Allocation):
                devices = tuple(self.topology.gpus[i].uuid or "" for i in result.devices)
                return Preferred(devices=devices, source="allocator", detail=result.explain())
            detail = result.reason
        # Bad input (the kubelet only asks when a choice exists) or a node beyond the
        # allocator's 16 GPUs: stay inside `available`, keep `must_include`, fill by index.
        rest = sorted(avail_set - must_set, key=self._index.__getitem__)
        picked = (must + rest)[: max(size, len(must))]
        return Preferred(devices=tuple(picked), source="fallback", detail=detail)

    def index_of(self, uuid: str) -> int | None:
        return self._index.get(uuid)

    def _mask(self, uuids: Iterable[str]) -> int:
        mask = 0
        for u in uuids:
            mask |= 1 << self._index[u]
        return mask

    def _ordered(self, uuids: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted(uuids, key=self._index.__getitem__))

    # --- Allocate ----------------------------------------------------------------------

    def check(self, device_ids: Sequence[str]) -> tuple[DeviceState, ...]:
        """The devices named, or ``AllocationError`` naming the first bad one."""
        devices = self._devices
        out: list[DeviceState] = []
        for d in device_ids:
            i = self._index.get(d)
            if i is None:
                raise AllocationError(f"unknown device {d!r}: not a GPU of this node")
            state = devices[i]
            if not state.healthy:
                raise AllocationError(
                    f"device {d} (GPU{i}) is unhealthy: {state.reason or 'unhealthy'}"
                )
            out.append(state)
        if not out:
            raise AllocationError("no devices in the request")
        return tuple(out)

    def allocate(self, device_ids: Sequence[str]) -> ContainerAllocation:
        devices = self.check(device_ids)
        specs: list[DeviceSpec] = []
        if self.options.pass_device_specs:
            root = self.options.dev_root
            names = [f"nvidia{d.minor}" for d in devices] + list(CONTROL_DEVICES)
            # Existence is checked where the plugin sees the host's /dev (``dev_root``);
            # the spec names the path on the host, where the runtime creates the node.
            specs = [
                DeviceSpec(container_path=f"/dev/{n}", host_path=f"/dev/{n}")
                for n in names
                if (root / n).exists()
            ]
        return ContainerAllocation(
            devices=devices,
            envs={"NVIDIA_VISIBLE_DEVICES": ",".join(d.uuid for d in devices)},
            device_specs=tuple(specs),
        )


def _conforms(rm: TopologyResourceManager) -> ResourceManager:
    return rm  # mypy checks that TopologyResourceManager satisfies the Protocol
