"""The cluster behind the extender, as a typed Protocol.

Two sources implement :class:`Cluster`: ``extender.kube.KubeCluster`` (the Kubernetes
API) and ``extender.memory.MemoryCluster`` (a cluster file, the simulator, unit tests);
neither knows the other. Both feed a :class:`~extender.state.ClusterState` through the
pod rules of ``extender.pods``.

The write side is one call, :meth:`Cluster.bind`: the chosen GPU sets (the encoded
``gputopo.io/assigned-gpus`` value) and the node go together, so a source that can write
both at once (the Binding subresource merges annotations) needs no change of protocol.
"""

from __future__ import annotations

from typing import Protocol

from extender.pods import Pod
from extender.request import PodRef
from extender.state import ClusterState

__all__ = ["Cluster", "ClusterError"]


class ClusterError(Exception):
    """A read or write of the cluster failed; ``conflict`` when someone else changed the pod."""

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

    def note_pod(self, pod: Pod) -> None:
        """A pod seen in filter (the file source binds pods it only knows from there)."""
        ...

    async def get_pod(self, ref: PodRef) -> Pod | None:
        """The pod as it is now, or None when it does not exist (any more).

        Raises :class:`ClusterError` when it cannot be read, and
        ``extender.request.RequestError`` when what is read is not a valid pod.
        """
        ...

    async def bind(self, ref: PodRef, node: str, assigned: str | None) -> None:
        """Bind the pod to ``node``, recording ``assigned`` (the encoded
        ``gputopo.io/assigned-gpus`` value; None for a pod without GPUs) on it first.
        Raises :class:`ClusterError`; the pod's UID is a precondition of every write."""
        ...
