"""The plugin's narrow view of the cluster.

``NodeCluster`` is all the device plugin asks of the API server: watch the pods bound to
its node, patch a pod's annotations, read the Node's uid and labels, label the Node, and
create or update the node's ``GPUTopology`` object. ``plugin.kube.KubeCluster`` implements
it with the ``kubernetes`` client; the tests' in-memory one is
``tests.plugin.fakes.InMemoryCluster`` (the same contract suite runs against both).

Every method blocks (the ``kubernetes`` client is synchronous); callers run them on
background threads, never on the kubelet's gRPC call path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "ClusterError",
    "NodeCluster",
    "PodEvent",
    "PodInfo",
    "PodKey",
    "gputopology_differs",
]

PodKey = tuple[str, str]
"""(namespace, name)"""

EventType = Literal["ADDED", "MODIFIED", "DELETED", "RELIST", "SYNCED"]


class ClusterError(RuntimeError):
    """An API call failed; ``not_found`` when the object does not exist."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


@dataclass(frozen=True, slots=True, kw_only=True)
class PodInfo:
    """What the plugin needs of a pod."""

    namespace: str
    name: str
    uid: str = ""
    node_name: str | None = None
    phase: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    #: RFC 3339 creation time; orders candidate pods oldest first.
    created: str = ""
    deleting: bool = False
    #: container (init containers too) -> extended resource -> devices it asks for
    #: (its limit, else its request); only whole counts of names with a ``/``.
    device_requests: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def key(self) -> PodKey:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PodEvent:
    """A watch event. ``RELIST``: a full listing follows (ADDED events) up to ``SYNCED``;
    whatever the cache held and the listing does not name is gone."""

    type: EventType
    pod: PodInfo | None = None


class NodeCluster(Protocol):
    """What the device plugin reads from and writes to the API server."""

    def watch_pods(self, node_name: str, stop: threading.Event) -> Iterator[PodEvent]:
        """RELIST, ADDED per pod bound to the node, SYNCED, then changes until ``stop``."""
        ...

    def get_pod(self, namespace: str, name: str) -> PodInfo | None: ...

    def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge ``annotations`` into the pod's (``None`` removes a key)."""
        ...

    def node_uid(self, node_name: str) -> str: ...

    def node_labels(self, node_name: str) -> dict[str, str]: ...

    def label_node(self, node_name: str, labels: Mapping[str, str]) -> None: ...

    def apply_gputopology(
        self, obj: Mapping[str, Any]
    ) -> Literal["created", "updated", "unchanged"]:
        """Create the GPUTopology object or bring its spec and owners up to date."""
        ...

    def get_gputopology(self, name: str) -> dict[str, Any] | None: ...


def gputopology_differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether ``current`` needs an update to match ``wanted`` (spec, owners, labels)."""
    meta, want_meta = current.get("metadata") or {}, wanted.get("metadata") or {}
    return (
        current.get("spec") != wanted.get("spec")
        or (meta.get("ownerReferences") or []) != (want_meta.get("ownerReferences") or [])
        or any((meta.get("labels") or {}).get(k) != v
               for k, v in (want_meta.get("labels") or {}).items())
    )
