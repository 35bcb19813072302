"""What the operator tools say, as values, computed with the extender's own code. Pure.

* :func:`node_summaries`: per GPU node, free/total and the best free set per size (the
  allocator's own best set, as the extender places a pod of that size with no
  constraint).
* :func:`node_detail`: one node's GPUs, which are used and by which pod.
* :func:`explain`: why a pod got its node and GPUs, or why no node fits: the extender's
  filter (``extender.filter.decide``: the same reasons kube-scheduler shows on the pod),
  its scores (``extender.prioritize.scores``) and plans (``extender.plan.place``), on the
  cluster as it is now. Whether a fitting node gives the best set its node type offers
  is said too: the extender's delay scheduling (``extender.patience``) keeps a pod
  waiting for that set for a while, and its clock lives in the extender's memory, so
  the tool says what the pod waits for, not since when (kube-scheduler's
  FailedScheduling events do).

Rendering to text is in :mod:`console.render`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from extender.filter import decide
from extender.patience import waits_for_best
from extender.plan import Plan, place
from extender.prioritize import scores
from extender.request import ContainerRequest, GpuRequest, RequestError
from extender.state import ClusterState, Holding, NodeState
from topology.allocate import Allocation, indices_of
from topology.handoff import HandoffError, decode_gpu_sets
from topology.links import Link
from topology.names import (
    ALLOCATED_GPUS_ANNOTATION,
    ASSIGNED_GPUS_ANNOTATION,
    DEFAULT_RESOURCE_NAME,
)

__all__ = [
    "BestFree",
    "Explanation",
    "GpuUse",
    "NodeDetail",
    "NodeSummary",
    "NodeVerdict",
    "explain",
    "node_detail",
    "node_summaries",
    "sizes_for",
]

#: Events kube-scheduler writes on a pod it could not place.
FAILED_SCHEDULING: Final = "FailedScheduling"

Sets = tuple[tuple[str, tuple[int, ...]], ...]


# -- nodes --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class BestFree:
    """The best set of ``size`` free GPUs: its ring's weakest link, or none fits."""

    size: int
    fits: bool
    ring_link: Link | None = None

    def __str__(self) -> str:
        if not self.fits:
            return f"{self.size}: none"
        if self.ring_link is None:
            return f"{self.size}: any"
        return f"{self.size}: {self.ring_link}" + (" ring" if self.size > 2 else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSummary:
    name: str
    model: str
    gpus: int
    free: tuple[int, ...]
    best: tuple[BestFree, ...]


def sizes_for(gpus: int) -> tuple[int, ...]:
    """Set sizes worth showing for a node: 2, 4, 8, ... up to its size (and its size).

    >>> sizes_for(8), sizes_for(6), sizes_for(1)
    ((2, 4, 8), (2, 4, 6), (1,))
    """
    if gpus < 2:
        return (gpus,)
    out = []
    k = 2
    while k < gpus:
        out.append(k)
        k *= 2
    out.append(gpus)
    return tuple(out)


def _model(node: NodeState) -> str:
    t = node.topology
    if t.model is not None:
        return t.model
    return "mixed" if len({g.model for g in t.gpus}) > 1 else "unknown"


def best_free(node: NodeState, size: int) -> BestFree:
    r = node.allocator.best(size, node.free_mask)
    if isinstance(r, Allocation):
        return BestFree(size=size, fits=True, ring_link=r.ring_link)
    return BestFree(size=size, fits=False)


def node_summaries(
    state: ClusterState, sizes: Sequence[int] | None = None
) -> list[NodeSummary]:
    """One summary per GPU node, by name."""
    out = []
    for name in sorted(state.nodes):
        node = state.nodes[name]
        wanted = sizes or sizes_for(node.topology.size)
        out.append(NodeSummary(
            name=name, model=_model(node), gpus=node.topology.size,
            free=tuple(indices_of(node.free_mask)),
            best=tuple(best_free(node, k) for k in wanted if 0 < k <= node.topology.size),
        ))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuUse:
    """Who holds a GPU: the pod, its container, and which record says so."""

    index: int
    id: str
    pod: str | None = None
    container: str | None = None
    #: "allocated" (the kubelet's record, written by the plugin), "assigned" (the
    #: extender's choice at bind), "cluster-file", or "binding" (a bind in flight).
    source: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDetail:
    summary: NodeSummary
    node: NodeState
    gpus: tuple[GpuUse, ...]

    @property
    def used(self) -> dict[int, str]:
        return {g.index: g.pod for g in self.gpus if g.pod is not None}


def node_detail(state: ClusterState, name: str) -> NodeDetail | None:
    node = state.nodes.get(name)
    if node is None:
        return None
    (summary,) = [s for s in node_summaries(state) if s.name == name]
    holders: dict[int, GpuUse] = {}
    for source, holdings in (("binding", state.reservations), (None, state.holdings)):
        for h in holdings.values():
            if h.node != name:
                continue
            for container, ids in h.sets:
                for gid in ids:
                    i = node.gpus.index_of.get(gid)
                    if i is not None:
                        holders[i] = GpuUse(index=i, id=gid, pod=_who(h), container=container,
                                            source=source or h.source)
    gpus = tuple(holders.get(i, GpuUse(index=i, id=node.gpus.ids[i]))
                 for i in range(node.topology.size))
    return NodeDetail(summary=summary, node=node, gpus=gpus)


def _who(h: Holding) -> str:
    return str(h.pod) if h.pod.namespace else h.pod.name


# -- explain ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeVerdict:
    """The extender's answer for one GPU node: fits (with its plan and score) or not."""

    node: str
    fits: bool
    #: The filter's reason when it does not fit (what kube-scheduler shows on the pod).
    reason: str = ""
    #: Not even with every GPU of the node free (FailedAndUnresolvableNodes).
    unresolvable: bool = False
    score: int | None = None
    sets: Sets = ()
    ring_link: Link | None = None
    meets_min_link: bool = True
    #: Whether the sets are the best this node type offers the pod (None: it does not
    #: wait for that: 1-GPU containers only, or a required link).
    best_set: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SetRecord:
    """A GPU record on the pod (assigned or allocated), by container, as indices."""

    key: str
    sets: Sets = ()
    error: str = ""
    unknown_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SetQuality:
    container: str
    devices: tuple[int, ...]
    ring_link: Link | None
    gbps: float
    numa_nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    pod: str
    phase: str
    #: The request as the extender reads it (``GpuRequest.describe``), or its error.
    request: str
    error: str = ""
    no_gpus: bool = False
    node: str | None = None
    node_known: bool = True
    #: Where the pod's holding comes from (what the extender counts as its GPUs).
    holding_source: str | None = None
    records: tuple[SetRecord, ...] = ()
    quality: tuple[SetQuality, ...] = ()
    verdicts: tuple[NodeVerdict, ...] = ()
    #: The extender's plan on its own node now equals the set the pod holds.
    same_set_now: bool | None = None
    events: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    #: The pod's own ``gputopo.io/best-set-patience`` in seconds (None: the extender's).
    patience_s: float | None = None

    @property
    def fitting(self) -> tuple[NodeVerdict, ...]:
        return tuple(v for v in self.verdicts if v.fits)

    @property
    def waits_for_best_set(self) -> bool:
        """No fitting node gives the best set, and the pod waits for one (a while)."""
        fitting = self.fitting
        return (bool(fitting) and all(v.best_set is False for v in fitting)
                and self.patience_s != 0)


def _verdicts(state: ClusterState, request: GpuRequest) -> tuple[NodeVerdict, ...]:
    names = sorted(state.nodes)
    out = decide(state, request, names)
    ranked = dict(zip(out.passed, scores(state, request, out.passed), strict=True))
    patient = dataclasses.replace(request, patient=True) if waits_for_best(request) else None
    verdicts = []
    for name in names:
        if name in ranked:
            node = state.nodes[name]
            plan = place(node.allocator, node.free_mask, request)
            assert isinstance(plan, Plan)
            best = None if patient is None else isinstance(
                place(node.allocator, node.free_mask, patient), Plan)
            verdicts.append(NodeVerdict(
                node=name, fits=True, score=ranked[name],
                sets=_named_sets(plan, request), ring_link=plan.ring_link,
                meets_min_link=plan.meets_min_link, best_set=best))
        elif name in out.unresolvable:
            verdicts.append(NodeVerdict(node=name, fits=False, reason=out.unresolvable[name],
                                        unresolvable=True))
        else:
            verdicts.append(NodeVerdict(node=name, fits=False, reason=out.failed[name]))
    return tuple(verdicts)


def _named_sets(plan: Plan, request: GpuRequest) -> Sets:
    """A cached plan carries the container names of the first pod of its shape; the
    sets follow the request's containers in order, so take this pod's names."""
    return tuple((c.name, devices) for c, (_, devices)
                 in zip(request.containers, plan.sets, strict=True))


def _records(pod: Mapping[str, Any], node: NodeState | None) -> tuple[SetRecord, ...]:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    out = []
    for key in (ASSIGNED_GPUS_ANNOTATION, ALLOCATED_GPUS_ANNOTATION):
        value = annotations.get(key)
        if not isinstance(value, str):
            continue
        try:
            decoded = decode_gpu_sets(key, value)
        except HandoffError as e:
            out.append(SetRecord(key=key, error=str(e)))
            continue
        sets, unknown = _indices(decoded.items(), node)
        out.append(SetRecord(key=key, sets=sets, unknown_ids=unknown))
    return tuple(out)


def _indices(
    sets: Iterable[tuple[str, Sequence[str]]], node: NodeState | None
) -> tuple[Sets, tuple[str, ...]]:
    out = []
    unknown: list[str] = []
    for container, ids in sorted(sets):
        found = []
        for gid in ids:
            i = None if node is None else node.gpus.index_of.get(gid)
            if i is None:
                unknown.append(gid)
            else:
                found.append(i)
        out.append((container, tuple(sorted(found))))
    return tuple(out), tuple(unknown)


def _quality(node: NodeState, sets: Sets) -> tuple[SetQuality, ...]:
    out = []
    for container, devices in sets:
        if not devices:
            continue
        mask = sum(1 << i for i in devices)
        r = node.allocator.best(len(devices), mask)
        if isinstance(r, Allocation):
            out.append(SetQuality(container=container, devices=r.devices,
                                  ring_link=r.ring_link, gbps=r.total_bandwidth_gbps,
                                  numa_nodes=r.numa_nodes))
    return tuple(out)


def _failed_scheduling(events: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """kube-scheduler's FailedScheduling messages, newest last, each once."""
    out: list[str] = []
    for e in events:
        if e.get("reason") != FAILED_SCHEDULING:
            continue
        msg = str(e.get("message") or e.get("note") or "").strip()
        count = int(e.get("count") or (e.get("series") or {}).get("count") or 1)
        text = f"{msg} (x{count})" if count > 1 else msg
        if msg and text not in out:
            out.append(text)
    return tuple(out[-3:])


def _request_of_holding(h: Holding) -> GpuRequest:
    return GpuRequest(containers=tuple(
        ContainerRequest(name=c, count=len(ids)) for c, ids in h.sets))


def explain(
    state: ClusterState, *, pod: Mapping[str, Any] | None, ref: str,
    events: Sequence[Mapping[str, Any]] = (),
    resource_names: Sequence[str] = (DEFAULT_RESOURCE_NAME,),
) -> Explanation | None:
    """Why the pod (``namespace/name`` in ``ref``) got its node and GPUs, or why no node
    fits, in the extender's words. ``pod`` None: only the holding known to ``state``
    (a cluster file's pod). None when neither exists.

    ``state`` is changed: a bound pod's own GPUs are given back before judging, so the
    verdicts say where the extender would place it now.
    """
    namespace, _, name = ref.partition("/")
    holding = _holding(state, pod, namespace, name)
    notes: list[str] = []
    if pod is None:
        if holding is None:
            return None
        request = _request_of_holding(holding)
        notes.append("no Pod object (cluster file): judged by its GPU counts alone, "
                     "without a link constraint")
        phase = "Running"
        node_name: str | None = holding.node
        records: tuple[SetRecord, ...] = ()
    else:
        phase = str((pod.get("status") or {}).get("phase") or "Pending")
        bound = (pod.get("spec") or {}).get("nodeName")
        node_name = bound if isinstance(bound, str) and bound else None
        try:
            request = GpuRequest.from_pod(pod, tuple(resource_names))
        except RequestError as e:
            return Explanation(pod=ref, phase=phase, request="", error=str(e), node=node_name,
                               events=_failed_scheduling(events))
        records = _records(pod, state.nodes.get(node_name) if node_name else None)
    if request.empty:
        return Explanation(pod=ref, phase=phase, request=request.describe(), no_gpus=True,
                           node=node_name, events=_failed_scheduling(events))
    node = state.nodes.get(node_name) if node_name else None
    held: Sets = ()
    quality: tuple[SetQuality, ...] = ()
    if holding is not None and node is not None:
        held, _ = _indices(holding.sets, node)
        quality = _quality(node, held)
        state.release(holding.pod.uid)
    elif node_name and node is not None:
        notes.append("the pod holds no GPUs the extender can see (no assigned-gpus or "
                     "allocated-gpus annotation yet)")
    verdicts = _verdicts(state, request)
    same: bool | None = None
    if node_name and held:
        mine = next((v for v in verdicts if v.node == node_name), None)
        same = mine is not None and mine.fits and dict(mine.sets) == dict(held)
    return Explanation(
        pod=ref, phase=phase, request=request.describe(), node=node_name,
        node_known=node_name is None or node is not None,
        holding_source=None if holding is None else holding.source,
        records=records, quality=quality, verdicts=verdicts, same_set_now=same,
        events=_failed_scheduling(events), notes=tuple(notes), patience_s=request.patience_s,
    )


def _holding(
    state: ClusterState, pod: Mapping[str, Any] | None, namespace: str, name: str
) -> Holding | None:
    if pod is not None:
        uid = (pod.get("metadata") or {}).get("uid")
        return state.holdings.get(uid) if isinstance(uid, str) else None
    for h in state.holdings.values():
        if h.pod.namespace == namespace and h.pod.name == name:
            return h
    return None
