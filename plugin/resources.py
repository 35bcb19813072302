"""The decisions behind the device plugin's RPCs, over ``topology/`` (no gRPC here).

``ResourceManager`` is what ``plugin.server`` calls; ``TopologyResourceManager``
implements it for one node's discovered ``Topology``:

* ``devices()``: every GPU (ID = UUID) with its NUMA node and health.
* ``preferred()``: exactly ``size`` GPUs, or ``Refused`` naming the request field at fault
  (a size below 1 or beyond what is available, a must-include ID that is not available,
  an ID listed twice). The set is an assigned one (written by the extender on a pod bound
  to this node) when one fits the request, otherwise the allocator's best set among the
  available GPUs. Everything it reads is in memory: the pod cache snapshot and the
  kubelet's last PodResources record, both refreshed on background threads.
* ``known_waiting()``: how many containers the pod cache knows that wait for ``size``
  devices and may be the one the kubelet is admitting (when none, the pod cache may lack
  that pod: ``plugin.catchup`` asks the kubelet).
* ``allocate()``: refuses an unknown or unhealthy ID, or one listed twice, naming it;
  otherwise the container's environment and device nodes.

IDs quoted back in a message are cut (``plugin.log.clip``): the message travels in a
gRPC trailer, and a 1 MiB ID echoed whole would overflow gRPC's metadata limit.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, Protocol

from plugin.cluster import PodKey
from plugin.log import clip
from plugin.pods import PodEntry
from topology.allocate import Allocation, allocator_for
from topology.gpuids import GpuIds
from topology.model import Topology
from topology.names import DEFAULT_RESOURCE_NAME, TERMINAL_PHASES

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
    "PreferredField",
    "Refused",
    "ResourceManager",
    "TopologyResourceManager",
    "assigned_candidates",
    "waiting_containers",
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


PreferredField = Literal["allocation_size", "must_include_deviceIDs", "available_deviceIDs"]
"""A field of ``ContainerPreferredAllocationRequest``, as the kubelet's API names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    """A GetPreferredAllocation request that cannot be answered as asked, and why."""

    field: PreferredField
    reason: str


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

    def subscribe(self, changed: Callable[[], None]) -> Callable[[], None]:
        """Call ``changed`` (on the changing thread) after every change of ``devices()``;
        returns what unsubscribes it."""
        ...

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Preferred | Refused:
        """Exactly ``size`` of ``available`` (with every ``must_include``), or why not."""
        ...

    def index_of(self, uuid: str) -> int | None:
        """The GPU's index on this node (for logs), ``None`` for an unknown ID."""
        ...

    def known_waiting(self, size: int) -> int:
        """Containers of known pods that wait for ``size`` devices, less the allocations
        not yet in the kubelet's record (0: the kubelet may be admitting an unknown pod)."""
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


def waiting_containers(
    pods: Mapping[PodKey, PodEntry], kubelet: KubeletRecord, resource_name: str
) -> Counter[int]:
    """How many containers of live pods ask for each number of ``resource_name`` devices
    and hold none yet (by the kubelet's record and the pods' allocated records)."""
    out: Counter[int] = Counter()
    for key, entry in pods.items():
        pod = entry.pod
        if pod.deleting or pod.phase in TERMINAL_PHASES:
            continue
        held = kubelet.get(key, {})
        allocated = entry.allocated or {}
        for container, asks in pod.device_requests.items():
            n = asks.get(resource_name, 0)
            if n > 0 and not held.get(container) and not allocated.get(container):
                out[n] += 1
    return out


#: Allocations remembered until the kubelet's record shows them (or two records later).
_UNRECORDED_MAX: Final = 64


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
        resource_name: str = DEFAULT_RESOURCE_NAME,
    ) -> None:
        missing = [g.name for g in topology.gpus if not g.uuid]
        if missing:
            raise ValueError(f"GPUs without a UUID cannot be advertised: {', '.join(missing)}")
        self.topology = topology
        self.options = options
        self._pods = pods
        self._kubelet = kubelet
        self._ids = GpuIds.of(topology)
        self._index = self._ids.index_of
        minors = minors or {}
        self._devices: tuple[DeviceState, ...] = tuple(
            DeviceState(uuid=uuid, index=i, numa_node=topology.gpus[i].numa_node,
                        minor=minors.get(uuid, i))
            for i, uuid in enumerate(self._ids.ids)
        )
        self._version = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._allocator = allocator_for(topology)
        # Candidates of the last (pods, kubelet) snapshots: both are replaced whole on
        # change, so the same objects mean the same candidates.
        self._candidates: tuple[object, object, list[Candidate]] | None = None
        self.resource_name = resource_name
        # Waiting containers by size, and the device sets the record holds, likewise.
        self._waiting: tuple[object, object, Counter[int], frozenset[frozenset[str]]] | None = None
        # Device sets of the allocations this plugin answered that the last kubelet record
        # read may not show yet, each with the record generation it was answered in.
        self._alloc_lock = threading.Lock()
        self._unrecorded: deque[tuple[frozenset[str], int]] = deque(maxlen=_UNRECORDED_MAX)
        self._record_seen: object = None
        self._record_gen = 0

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
        """Record a health change; True when it changed anything (listeners are told)."""
        with self._lock:
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
            listeners = tuple(self._listeners)
        for changed in listeners:
            changed()
        return True

    def subscribe(self, changed: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(changed)

        def unsubscribe() -> None:
            with self._lock:
                if changed in self._listeners:
                    self._listeners.remove(changed)

        return unsubscribe

    # --- GetPreferredAllocation --------------------------------------------------------

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Preferred | Refused:
        refused = self._refusal(available, must_include, size)
        if refused is not None:
            return refused
        # IDs in `available` that are not GPUs of this node are passed over.
        avail_mask = self._ids.mask_of_ids(available)
        avail_set = frozenset(self._ids.ids_of_mask(avail_mask))
        must_set = frozenset(must_include)
        candidates = self._assigned()
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
        must_mask = self._ids.mask_of_ids(must_set)
        detail = ""
        for free in (avail_set - reserved, avail_set) if reserved else (avail_set,):
            try:
                result = self._allocator.best(size, self._ids.mask_of_ids(free), must_mask)
            except Exception as e:  # never fail the kubelet's call: it would block admission
                log.exception("allocator failed; answering by index")
                detail = f"allocator error: {e}"
                break
            if isinstance(result, Allocation) and len(result.devices) == size:
                return Preferred(devices=self._ids.ids_of(result.devices), source="allocator",
                                 detail=result.explain())
            if not isinstance(result, Allocation):
                detail = result.reason
        # A node beyond the allocator's 16 GPUs: stay inside `available`, keep
        # `must_include`, fill by index. The checks above make this exactly `size`.
        rest = [u for u in self._ids.ids_of_mask(avail_mask) if u not in must_set]
        picked = [*must_include, *rest][:size]
        return Preferred(devices=tuple(picked), source="fallback", detail=detail)

    def _assigned(self) -> list[Candidate]:
        pods, kubelet = self._pods(), self._kubelet()
        cached = self._candidates
        if cached is not None and cached[0] is pods and cached[1] is kubelet:
            return cached[2]
        candidates = assigned_candidates(pods, kubelet, self._index)
        self._candidates = (pods, kubelet, candidates)
        return candidates

    def known_waiting(self, size: int) -> int:
        """Containers the pod cache knows that wait for ``size`` devices and may be the one
        the kubelet is admitting: not holding any yet, less one for each allocation of
        ``size`` devices not yet in the kubelet's record (its pod may be among them)."""
        pods, kubelet = self._pods(), self._kubelet()
        cached = self._waiting
        if cached is not None and cached[0] is pods and cached[1] is kubelet:
            counts, held = cached[2], cached[3]
        else:
            counts = waiting_containers(pods, kubelet, self.resource_name)
            held = frozenset(frozenset(ids) for containers in kubelet.values()
                             for ids in containers.values())
            self._waiting = (pods, kubelet, counts, held)
        with self._alloc_lock:
            generation = self._observe_record(kubelet)
            # Shown by the record now, or not shown two records later (the kubelet
            # dropped it): no longer counted.
            self._unrecorded = deque(
                ((ids, gen) for ids, gen in self._unrecorded
                 if ids not in held and generation - gen < 2), maxlen=_UNRECORDED_MAX)
            recent = sum(len(ids) == size for ids, _ in self._unrecorded)
        return max(0, counts[size] - recent)

    def _observe_record(self, record: KubeletRecord) -> int:
        """The generation of ``record``: one more each time a new record is seen."""
        if record is not self._record_seen:
            self._record_seen = record
            self._record_gen += 1
        return self._record_gen

    def _refusal(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> Refused | None:
        """Why ``size`` IDs of ``available`` with every ``must_include`` cannot be given."""
        if size < 1:
            return Refused(field="allocation_size", reason=f"must be at least 1, got {size}")
        lists: tuple[tuple[PreferredField, Sequence[str]], ...] = (
            ("available_deviceIDs", available), ("must_include_deviceIDs", must_include))
        for field, ids in lists:
            twice = _first_repeat(ids)
            if twice is not None:
                return Refused(field=field, reason=f"{clip(twice)!r} is listed twice")
        offered = frozenset(available)
        for d in must_include:
            if d not in offered:
                return Refused(field="must_include_deviceIDs",
                               reason=f"{clip(d)!r} is not in available_deviceIDs")
            if d not in self._index:
                return Refused(field="must_include_deviceIDs",
                               reason=f"{clip(d)!r} is not a GPU of this node")
        if len(must_include) > size:
            return Refused(field="allocation_size", reason=(
                f"{size} is fewer than the {len(must_include)} must_include_deviceIDs"))
        known = sum(d in self._index for d in offered)
        if size > known:
            unknown = len(offered) - known
            return Refused(field="allocation_size", reason=(
                f"{size} devices asked, but available_deviceIDs holds {known} GPUs of this "
                f"node" + (f" (and {unknown} IDs it does not have)" if unknown else "")))
        return None

    def index_of(self, uuid: str) -> int | None:
        return self._index.get(uuid)

    def _ordered(self, uuids: Iterable[str]) -> tuple[str, ...]:
        return self._ids.ids_of_mask(self._ids.mask_of_ids(uuids))

    # --- Allocate ----------------------------------------------------------------------

    def check(self, device_ids: Sequence[str]) -> tuple[DeviceState, ...]:
        """The devices named, or ``AllocationError`` naming the first bad one."""
        devices = self._devices
        out: list[DeviceState] = []
        seen: set[int] = set()
        for d in device_ids:
            i = self._index.get(d)
            if i is None:
                raise AllocationError(f"unknown device {clip(d)!r}: not a GPU of this node")
            if i in seen:  # NVIDIA_VISIBLE_DEVICES would list it twice
                raise AllocationError(f"device {d} (GPU{i}) is listed twice")
            seen.add(i)
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
        with self._alloc_lock:  # some waiting container holds these now
            self._unrecorded.append((frozenset(device_ids),
                                     self._observe_record(self._kubelet())))
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


def _first_repeat(ids: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for d in ids:
        if d in seen:
            return d
        seen.add(d)
    return None


def _conforms(rm: TopologyResourceManager) -> ResourceManager:
    return rm  # mypy checks that TopologyResourceManager satisfies the Protocol
