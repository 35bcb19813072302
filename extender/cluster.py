"""The cluster behind the extender, as a typed Protocol, and the pure pod → holding rule.

Two sources implement :class:`Cluster`: ``extender.kube.KubeCluster`` (the Kubernetes
API) and ``extender.memory.MemoryCluster`` (a cluster file, the simulator, unit tests).
Both feed the same :class:`~extender.state.ClusterState` through :func:`holding_from_pod`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from extender.request import pod_ref
from extender.state import ClusterState, Holding
from topology.handoff import HandoffError, decode_gpu_sets
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION, TERMINAL_PHASES

__all__ = ["Cluster", "ClusterError", "holding_from_pod"]

log = logging.getLogger(__name__)



class ClusterError(Exception):
    """A write to the cluster failed; ``conflict`` when someone else changed the pod."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


class Cluster(Protocol):
    """Where the state comes from and where bind writes to."""

    #: "kubernetes", "file" or "memory" (shown on /healthz and the page).
    mode: str
    state: ClusterState

    def readiness(self) -> tuple[bool, str]:
        """``(ready, why not)``: synced, and the leader when there is an election."""
        ...

    def is_leader(self) -> bool: ...

    async def start(self) -> None:
        """Load everything and start following changes; returns once started."""
        ...

    async def stop(self) -> None: ...

    def note_pod(self, pod: Mapping[str, Any]) -> None:
        """A pod seen in filter (the file source binds pods it only knows from there)."""
        ...

    async def get_pod(self, namespace: str, name: str, uid: str) -> Mapping[str, Any] | None:
        """The current Pod object, or None when it does not exist (any more)."""
        ...

    async def assign(self, namespace: str, name: str, uid: str, value: str) -> None:
        """Write ``gputopo.io/assigned-gpus`` on the pod. Raises :class:`ClusterError`."""
        ...

    async def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        """Create the pod's Binding to ``node``. Raises :class:`ClusterError`."""
        ...


def holding_from_pod(pod: Mapping[str, Any], *, source_bind: bool = False) -> Holding | None:
    """What a Pod object says it holds: None unless bound, not terminal, and annotated.

    The allocated set (written by the device plugin from the kubelet's record) wins over
    the assigned one (the extender's choice at bind). A pod being deleted still holds its
    GPUs until it is gone or terminal.

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
    ref = pod_ref(pod)
    for key, source in ((ALLOCATED_GPUS_ANNOTATION, "allocated"),
                        (ASSIGNED_GPUS_ANNOTATION, "assigned")):
        value = annotations.get(key)
        if not isinstance(value, str):
            continue
        try:
            sets = decode_gpu_sets(key, value)
        except HandoffError as e:
            log.warning("unreadable annotation pod=%s node=%s error=%r", ref, node, str(e))
            continue
        return Holding(
            pod=ref, node=node, sets=tuple(sorted(sets.items())),
            source="bind" if source_bind else source,
        )
    return None
