"""Pods as the extender sees them: decoded once into a small value, and the holding rule.

Two ways in, one rule for what a pod holds:

* :func:`decode_pod` reads a Pod object that came *in a request* (filter, prioritize,
  preempt; bind in API mode reads it from the API server). It decides once what a valid
  pod is, by Kubernetes' own rules (name a DNS-1123 subdomain, namespace a DNS-1123
  label, a UID where the verb needs one, containers and annotations as
  :meth:`GpuRequest.from_pod` checks them), refuses the rest with a
  :class:`RequestError` naming the field path, and returns a frozen :class:`Pod`: the
  raw object is not kept anywhere.
* :func:`holding_from_pod` reads a Pod object the cluster *reports* (a watch event, a
  list): it never refuses, since a pod that exists holds what its annotations say.

Both agree on what a pod holds: nothing unless bound, not terminal and annotated; the
allocated set (the device plugin's record of what the kubelet did) wins over the
assigned one (this extender's choice at bind). :func:`apply_pod` applies one observed
pod to the state, for the API-backed source and the in-memory one alike.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from extender.request import GpuRequest, PodRef, RequestError
from extender.state import ClusterState, GpuSets, Holding
from extender.validation import dns_label_problem, dns_subdomain_problem, show, uid_problem
from topology.handoff import HandoffError, decode_gpu_sets
from topology.names import (
    ALLOCATED_GPUS_ANNOTATION,
    ASSIGNED_GPUS_ANNOTATION,
    DEFAULT_RESOURCE_NAME,
    TERMINAL_PHASES,
)

__all__ = ["Pod", "RecentPods", "apply_pod", "decode_pod", "holding_from_pod"]

log = logging.getLogger(__name__)

#: The annotations that record a pod's GPUs, the stronger first, with their source name.
_RECORDS = ((ALLOCATED_GPUS_ANNOTATION, "allocated"), (ASSIGNED_GPUS_ANNOTATION, "assigned"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    """A Pod object reduced to what the extender needs."""

    ref: PodRef
    request: GpuRequest
    #: ``spec.nodeName`` ("" when not bound).
    node: str = ""
    #: In a terminal phase (Succeeded, Failed): holds nothing.
    terminal: bool = False
    #: The GPU sets its annotations record, and which annotation ("allocated", "assigned").
    recorded: GpuSets | None = None
    recorded_source: str = ""

    def holding(self, *, source: str | None = None) -> Holding | None:
        """What the pod holds: None unless bound, not terminal, and recorded."""
        if not self.node or self.terminal or self.recorded is None:
            return None
        return Holding(pod=self.ref, node=self.node, sets=self.recorded,
                       source=source or self.recorded_source)


def decode_pod(
    raw: Mapping[str, Any], resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,),
    *, need_uid: bool = True,
) -> Pod:
    """The :class:`Pod` of a Pod object in a request, or :class:`RequestError` saying why not.

    >>> pod = decode_pod({"metadata": {"namespace": "ml", "name": "a", "uid": "u1"},
    ...     "spec": {"containers": [{"name": "main",
    ...                              "resources": {"limits": {"nvidia.com/gpu": "2"}}}]}})
    >>> str(pod.ref), pod.request.total, pod.node
    ('ml/a', 2, '')
    >>> decode_pod({"metadata": {"namespace": "ml", "name": "A_b", "uid": "u1"}})
    Traceback (most recent call last):
    ...
    extender.request.RequestError: Pod.metadata.name: 'A_b' is not a DNS-1123 subdomain (...
    """
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        raise RequestError("Pod.metadata: expected an object with namespace, name and uid")
    namespace = _text(meta, "namespace", dns_label_problem)
    name = _text(meta, "name", dns_subdomain_problem)
    uid = _text(meta, "uid", uid_problem, required=need_uid)
    spec = raw.get("spec")
    node = ""
    if isinstance(spec, Mapping):
        value = spec.get("nodeName")
        if value is not None:
            if not isinstance(value, str) or (value and dns_subdomain_problem(value)):
                raise RequestError(f"Pod.spec.nodeName: {show(value)} is not a node name")
            node = value
    status = raw.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    request = GpuRequest.from_pod(raw, resource_names)  # checks spec and annotations
    annotations = meta.get("annotations") or {}
    ref = PodRef(namespace=namespace, name=name, uid=uid)
    recorded, source = _recorded(annotations, ref, node)
    return Pod(ref=ref, request=request, node=node, terminal=phase in TERMINAL_PHASES,
               recorded=recorded, recorded_source=source)


def _cost(pod: Pod) -> int:
    """About what a remembered pod costs in memory (bytes)."""
    return 600 + sum(200 + len(c.name) for c in pod.request.containers)


class RecentPods:
    """Pods seen in filter and prioritize, decoded, by UID: the most recent first to stay.

    kube-scheduler sends the same pod to filter, then prioritize, then names it by UID
    in bind: the pod is decoded and checked once (its ``resourceVersion`` says whether
    the copy in a request is the one already decoded), and bind finds its GPU request
    here without asking the API server. Bounded by count and by bytes.
    """

    #: Pods kept at most, and the bytes they may take.
    MAX_PODS: Final = 10_000
    MAX_BYTES: Final = 32 * 1024 * 1024

    def __init__(self, *, max_pods: int = MAX_PODS, max_bytes: int = MAX_BYTES) -> None:
        self._pods: OrderedDict[str, tuple[str, Pod]] = OrderedDict()
        self._bytes = 0
        self.max_pods = max_pods
        self.max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._pods)

    def get(self, uid: str, resource_version: str | None = None) -> Pod | None:
        """The pod of ``uid``; with ``resource_version``, only if it is that version."""
        hit = self._pods.get(uid)
        if hit is None or (resource_version is not None and hit[0] != resource_version):
            return None
        return hit[1]

    def put(self, pod: Pod, resource_version: str) -> None:
        uid = pod.ref.uid
        if not uid:
            return
        old = self._pods.pop(uid, None)
        if old is not None:
            self._bytes -= _cost(old[1])
        self._pods[uid] = (resource_version, pod)
        self._bytes += _cost(pod)
        while len(self._pods) > self.max_pods or self._bytes > self.max_bytes:
            _, (_, dropped) = self._pods.popitem(last=False)
            self._bytes -= _cost(dropped)

    def forget(self, uid: str) -> None:
        old = self._pods.pop(uid, None)
        if old is not None:
            self._bytes -= _cost(old[1])


def holding_from_pod(pod: Mapping[str, Any], *, source_bind: bool = False) -> Holding | None:
    """What a Pod object reported by the cluster holds (never refuses; see the module doc).

    A pod being deleted still holds its GPUs until it is gone or terminal.

    >>> pod = {"metadata": {"namespace": "ml", "name": "a", "uid": "u1", "annotations": {
    ...     "gputopo.io/assigned-gpus": '{"main":["GPU-1","GPU-2"]}'}},
    ...     "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    >>> h = holding_from_pod(pod)
    >>> h.node, sorted(h.ids), h.source
    ('n1', ['GPU-1', 'GPU-2'], 'assigned')
    """
    spec = pod.get("spec")
    status = pod.get("status")
    meta = pod.get("metadata")
    if not isinstance(spec, Mapping) or not isinstance(meta, Mapping):
        return None
    node = spec.get("nodeName")
    if not isinstance(node, str) or not node:
        return None
    if isinstance(status, Mapping) and status.get("phase") in TERMINAL_PHASES:
        return None
    annotations = meta.get("annotations")
    if not isinstance(annotations, Mapping):
        return None
    ref = PodRef(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                 uid=str(meta.get("uid") or ""))
    sets, source = _recorded(annotations, ref, node)
    if sets is None:
        return None
    return Holding(pod=ref, node=node, sets=sets, source="bind" if source_bind else source)


def apply_pod(state: ClusterState, pod: Mapping[str, Any], *, deleted: bool = False) -> None:
    """Apply one observed Pod object (a watch event, a write) to ``state``.

    Only deletion and a terminal phase release GPUs. An event without an annotation
    changes nothing: a bound pod never becomes unbound, and an event older than this
    process's own bind (watches lag) must not undo it.
    """
    meta = pod.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    if not isinstance(uid, str) or not uid:
        return
    status = pod.get("status")
    if deleted or (isinstance(status, Mapping) and status.get("phase") in TERMINAL_PHASES):
        state.release(uid)
        return
    holding = holding_from_pod(pod)
    if holding is not None:
        state.hold(holding)


def _recorded(
    annotations: Mapping[str, Any], ref: PodRef, node: str
) -> tuple[GpuSets | None, str]:
    for key, source in _RECORDS:
        value = annotations.get(key)
        if not isinstance(value, str):
            continue
        try:
            sets = decode_gpu_sets(key, value)
        except HandoffError as e:
            log.warning("unreadable annotation pod=%s node=%s error=%r", ref, node, str(e)[:200])
            continue
        return tuple(sorted(sets.items())), source
    return None, ""


def _text(
    meta: Mapping[str, Any], key: str, problem_of: Callable[[str], str | None], *,
    required: bool = True,
) -> str:
    value = meta.get(key)
    if value is None or value == "":
        if required:
            raise RequestError(f"Pod.metadata.{key}: required")
        return ""
    if not isinstance(value, str):
        raise RequestError(f"Pod.metadata.{key}: expected a string, got {show(value)}")
    problem = problem_of(value)
    if problem is not None:
        raise RequestError(f"Pod.metadata.{key}: {problem}")
    return value
