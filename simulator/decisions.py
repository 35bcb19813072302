"""The one place the simulator calls the extender's and the device plugin's code.

Everything here is the running services' own decision code, called in process:

* ``extender.state.ClusterState`` holds the nodes, the GPUs bound pods hold and the
  reservations of binds in flight, as in the extender process;
* ``extender.request.GpuRequest.from_pod`` reads each simulated pod's request from a Pod
  object, as the verbs do;
* ``extender.filter.judge_pod`` (``decide`` with delay scheduling, at the simulated
  time) and ``extender.prioritize.scores`` are what ``/filter`` and ``/prioritize``
  answer; ``extender.bind.choose`` is what ``/bind`` decides under its per-node lock
  (then it reserves, writes, and commits), on the request as
  ``extender.patience.Patience`` judges it then;
* ``extender.config.DEFAULT_BEST_SET_PATIENCE_S`` is the patience of the extender's
  ``--best-set-patience`` when the run names none;
* ``extender.plan.place`` answers "could an empty node of this type ever take it";
* ``extender.filesource.load_cluster_file`` reads the extender's cluster file;
* ``plugin.resources.TopologyResourceManager.preferred`` is GetPreferredAllocation,
  honouring the set the extender assigned (read through ``plugin.pods.entry_for`` from
  the annotation the bind writes).

Another module of the simulator never imports ``extender`` or ``plugin``: when their
entry points move, this module is the only one to change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import extender.config
from extender.bind import BindRefused, choose
from extender.decisions import Decisions
from extender.filesource import ClusterFileError, load_cluster_file
from extender.filter import judge_pod
from extender.patience import Patience
from extender.plan import Plan, place
from extender.prioritize import scores
from extender.request import GpuRequest, PodRef, RequestError
from extender.state import FILE_SOURCE, ClusterState, Holding
from extender.validation import parse_duration
from plugin.cluster import PodInfo, PodKey
from plugin.pods import PodEntry, entry_for
from plugin.resources import Refused, TopologyResourceManager
from topology.allocate import allocator_for
from topology.gpuids import GpuIds, indices_of, stable_gpu_uuid
from topology.handoff import encode_gpu_sets
from topology.model import Topology
from topology.names import (
    ASSIGNED_GPUS_ANNOTATION,
    DEFAULT_RESOURCE_NAME,
    LINK_POLICY_ANNOTATION,
    MAX_EXTENDER_PRIORITY,
    MIN_LINK_ANNOTATION,
)

__all__ = [
    "CONTAINER",
    "EXTENDER_SCORE_SCALE",
    "EXTENDER_WEIGHT",
    "ClusterFileError",
    "ExtenderModel",
    "FileNode",
    "Filtered",
    "NodePlugin",
    "RequestError",
    "gpu_request",
    "parse_duration",
    "read_cluster_file",
]

#: ``extenders[0].weight`` in manifests/scheduler-config.yaml (a test checks they agree).
EXTENDER_WEIGHT: Final = 5
#: kube-scheduler multiplies an extender's 0..10 by MaxNodeScore / MaxExtenderPriority.
EXTENDER_SCORE_SCALE: Final = 100 // MAX_EXTENDER_PRIORITY
#: The one container of every simulated pod.
CONTAINER: Final = "main"
_NAMESPACE: Final = "sim"


def gpu_request(size: int, min_link: str | None = None, link_policy: str | None = None
                ) -> GpuRequest:
    """The extender's reading of a one-container pod asking for ``size`` GPUs.

    Built from a Pod object through ``GpuRequest.from_pod``, exactly as ``/filter``
    reads a pod; a bad annotation raises :class:`RequestError`.
    """
    annotations: dict[str, str] = {}
    if min_link is not None:
        annotations[MIN_LINK_ANNOTATION] = min_link
    if link_policy is not None:
        annotations[LINK_POLICY_ANNOTATION] = link_policy
    pod = {
        "metadata": {"annotations": annotations},
        "spec": {"containers": [{
            "name": CONTAINER,
            "resources": {"limits": {DEFAULT_RESOURCE_NAME: str(size)}},
        }]},
    }
    return GpuRequest.from_pod(pod)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FileNode:
    """A node of an extender cluster file: GPUs in ``used`` are held outside the run."""

    name: str
    topology: Topology
    used: tuple[int, ...]


def read_cluster_file(path: str | Path) -> tuple[FileNode, ...]:
    """The extender's cluster file, read by the extender's own loader.

    The file's ``used`` GPUs and its ``pods`` both become GPUs held for the whole run.
    Raises :class:`ClusterFileError` listing every problem with its path.
    """
    f = load_cluster_file(path)
    used: dict[str, int] = {name: 0 for name in f.topologies}
    for h in f.holdings:
        ids = GpuIds.of(f.topologies[h.node])
        used[h.node] |= ids.mask_of_ids(h.ids)
    return tuple(
        FileNode(name=name, topology=t, used=indices_of(used[name]))
        for name, t in f.topologies.items()
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Filtered:
    """``/filter``'s answer: the candidates that pass, and whether the pod was passed
    over for its best set (none passed; some could have taken it with a worse set)."""

    passed: list[str]
    passed_over: bool


class ExtenderModel:
    """The extender's state and verbs for one simulated cluster (one run of a policy).

    ``patience_s``: the extender's ``--best-set-patience`` (None: its default;
    ``math.inf``: pods wait for their best set without limit).
    """

    def __init__(self, nodes: Sequence[tuple[str, Topology, Sequence[int]]], *,
                 patience_s: float | None = None) -> None:
        self.state = ClusterState()
        # The verdict caches the app keeps beside its state (extender.app does the same).
        self.decisions = Decisions(self.state)
        # Read when the run starts, so that the extender's default is what runs.
        self.patience = Patience(extender.config.DEFAULT_BEST_SET_PATIENCE_S
                                 if patience_s is None else patience_s)
        self._ids: dict[str, GpuIds] = {}
        for name, topology, used in nodes:
            self.state.set_topology(name, topology)
            ids = GpuIds.of(topology)
            self._ids[name] = ids
            if used:
                self.state.hold(Holding(
                    pod=PodRef(namespace="", name=FILE_SOURCE, uid=f"{FILE_SOURCE}:{name}"),
                    node=name, sets=(("used", ids.ids_of(used)),), source=FILE_SOURCE,
                ))
        self.state.synced = True

    @property
    def patience_bounded(self) -> bool:
        """Whether a waiting pod's patience ends (else time alone changes nothing)."""
        return not math.isinf(self.patience.default_s)

    def filter(self, request: GpuRequest, names: list[str], *, pod: str, now: float
               ) -> Filtered:
        """``/filter`` for the pod ``pod`` (its UID) at ``now``: who passes
        (``NodeNames`` of the answer), and whether the pod was passed over."""
        out = judge_pod(self.state, request, names, uid=pod, now=now,
                        patience=self.patience, decisions=self.decisions)
        return Filtered(passed=out.passed, passed_over=not out.passed and bool(out.waiting))

    def prioritize(self, request: GpuRequest, names: list[str]) -> list[int]:
        """``/prioritize``: the 0..10 score of every candidate, in order."""
        return scores(self.state, request, names, decisions=self.decisions)

    def bind(self, uid: str, node: str, request: GpuRequest, *, pod: str, now: float
             ) -> tuple[int, ...] | str:
        """``/bind``: choose the set on the state as it is now (for the pod ``pod`` as
        delay scheduling judges it at ``now``), reserve it, then (the writes having
        succeeded) commit it under ``uid``. The GPU indices, or why the bind failed."""
        ref = PodRef(namespace=_NAMESPACE, name=uid, uid=uid)
        judged = self.patience.request_at(pod, request, now)
        chosen = choose(self.state, node, judged, ref)
        if isinstance(chosen, BindRefused):
            return chosen.reason
        self.state.reserve(chosen)
        self.state.commit(uid, "bind")
        return indices_of(self._ids[node].mask_of_ids(chosen.ids))

    def record_allocated(self, uid: str, node: str, devices: Sequence[int]) -> None:
        """The plugin's reconciler wrote ``allocated-gpus``: the pod holds these GPUs."""
        self.state.hold(Holding(
            pod=PodRef(namespace=_NAMESPACE, name=uid, uid=uid), node=node,
            sets=((CONTAINER, self._ids[node].ids_of(devices)),), source="allocated",
        ))

    def release(self, uid: str) -> None:
        """The pod finished (the watch delivers its terminal phase)."""
        self.state.release(uid)

    @staticmethod
    def can_ever_place(topology: Topology, request: GpuRequest) -> bool:
        """Whether an empty node of this topology could take the pod at all."""
        alloc = allocator_for(topology)
        return isinstance(place(alloc, alloc.full_mask, request), Plan)


def _with_ids(topology: Topology) -> Topology:
    """The topology with the stable GPU ids the extender writes (presets carry none)."""
    if all(g.uuid for g in topology.gpus):
        return topology
    return topology.with_gpus(
        dataclasses.replace(g, uuid=g.uuid or stable_gpu_uuid(g.index)) for g in topology.gpus
    )


class NodePlugin:
    """The device plugin of one node and the kubelet's record of what it allocated."""

    def __init__(self, node: str, topology: Topology) -> None:
        self.node = node
        self.ids = GpuIds.of(topology)
        self._pods: dict[PodKey, PodEntry] = {}
        self._kubelet: dict[PodKey, Mapping[str, tuple[str, ...]]] = {}
        self._serial = 0
        self.rm = TopologyResourceManager(
            _with_ids(topology), pods=lambda: self._pods, kubelet=lambda: self._kubelet,
        )

    def bound(self, uid: str, assigned: Sequence[int]) -> None:
        """The pod is bound here with the extender's ``assigned-gpus`` annotation."""
        self._serial += 1
        info = PodInfo(
            namespace=_NAMESPACE, name=uid, uid=uid, node_name=self.node, phase="Pending",
            annotations={ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets(
                {CONTAINER: list(self.ids.ids_of(assigned))})},
            created=f"{self._serial:012d}",
        )
        # The plugin's sources replace their snapshots whole on every change (the resource
        # manager caches by snapshot identity), so do we.
        self._pods = {**self._pods, info.key: entry_for(info)}

    def admit(self, uid: str, size: int, free_mask: int) -> tuple[int, ...]:
        """The kubelet admits the pod: GetPreferredAllocation over the devices it has
        not allocated (``free_mask``), then Allocate; returns the GPU indices."""
        preferred = self.rm.preferred(self.ids.ids_of_mask(free_mask), (), size)
        if isinstance(preferred, Refused):
            # The kubelet only asks for a size it has: a refusal is a simulator bug.
            raise RuntimeError(f"plugin refused {uid}: {preferred.field}: {preferred.reason}")
        allocation = self.rm.allocate(preferred.devices)
        devices = tuple(d.uuid for d in allocation.devices)
        self._kubelet = {**self._kubelet, (_NAMESPACE, uid): {CONTAINER: devices}}
        return indices_of(self.ids.mask_of_ids(devices))

    def release(self, uid: str) -> None:
        key = (_NAMESPACE, uid)
        self._pods = {k: v for k, v in self._pods.items() if k != key}
        self._kubelet = {k: v for k, v in self._kubelet.items() if k != key}
