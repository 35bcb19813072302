"""The plugin's narrow view of the cluster, and an in-memory implementation of it.

``NodeCluster`` is all the device plugin asks of the API server: watch the pods bound to
its node, patch a pod's annotations, read the Node's uid and labels, label the Node, and
create or update the node's ``GPUTopology`` object. ``plugin.kube.KubeCluster`` implements
it with the ``kubernetes`` client; ``InMemoryCluster`` here serves the tests (the same
contract suite runs against both).

Every method blocks (the ``kubernetes`` client is synchronous); callers run them on
background threads, never on the kubelet's gRPC call path.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_KIND, GPUTOPOLOGY_VERSION

__all__ = [
    "ClusterError",
    "InMemoryCluster",
    "NodeCluster",
    "PodEvent",
    "PodInfo",
    "PodKey",
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


class InMemoryCluster:
    """A ``NodeCluster`` held in memory: pods, nodes and GPUTopology objects.

    Writes go through the same watch channel a real API server would use, so a pod
    patched here comes back as a MODIFIED event.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pods: dict[PodKey, PodInfo] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        self._topologies: dict[str, dict[str, Any]] = {}
        self._watchers: list[tuple[str, queue.Queue[PodEvent]]] = []
        self._uids = itertools.count(1)
        self.patches: list[tuple[PodKey, dict[str, str | None]]] = []

    # --- test set-up ---------------------------------------------------------------------

    def add_node(self, name: str, *, uid: str | None = None) -> str:
        with self._lock:
            node_uid = uid or f"node-uid-{next(self._uids)}"
            self._nodes[name] = {"uid": node_uid, "labels": {}}
            return node_uid

    def put_pod(self, pod: PodInfo) -> PodInfo:
        """Create or replace a pod (as the API server would after a write)."""
        with self._lock:
            existed = pod.key in self._pods
            if not pod.uid:
                pod = replace(pod, uid=f"pod-uid-{next(self._uids)}")
            self._pods[pod.key] = pod
            self._emit(PodEvent("MODIFIED" if existed else "ADDED", pod))
            return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            pod = self._pods.pop((namespace, name), None)
            if pod is not None:
                self._emit(PodEvent("DELETED", pod))

    def _emit(self, event: PodEvent) -> None:
        assert event.pod is not None
        for node, q in self._watchers:
            if event.pod.node_name == node:
                q.put(event)

    # --- NodeCluster ---------------------------------------------------------------------

    def watch_pods(self, node_name: str, stop: threading.Event) -> Iterator[PodEvent]:
        q: queue.Queue[PodEvent] = queue.Queue()
        with self._lock:
            listing = [p for p in self._pods.values() if p.node_name == node_name]
            self._watchers.append((node_name, q))
        try:
            yield PodEvent("RELIST")
            for pod in listing:
                yield PodEvent("ADDED", pod)
            yield PodEvent("SYNCED")
            while not stop.is_set():
                try:
                    yield q.get(timeout=0.05)
                except queue.Empty:
                    continue
        finally:
            with self._lock:
                self._watchers.remove((node_name, q))

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get((namespace, name))

    def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise ClusterError(f"pod {namespace}/{name} not found", not_found=True)
            merged = dict(pod.annotations)
            for k, v in annotations.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
            pod = replace(pod, annotations=merged)
            self._pods[pod.key] = pod
            self.patches.append((pod.key, dict(annotations)))
            self._emit(PodEvent("MODIFIED", pod))

    def node_uid(self, node_name: str) -> str:
        with self._lock:
            node = self._nodes.get(node_name)
            if node is None:
                raise ClusterError(f"node {node_name} not found", not_found=True)
            return str(node["uid"])

    def node_labels(self, node_name: str) -> dict[str, str]:
        with self._lock:
            node = self._nodes.get(node_name)
            if node is None:
                raise ClusterError(f"node {node_name} not found", not_found=True)
            return dict(node["labels"])

    def label_node(self, node_name: str, labels: Mapping[str, str]) -> None:
        with self._lock:
            node = self._nodes.get(node_name)
            if node is None:
                raise ClusterError(f"node {node_name} not found", not_found=True)
            node["labels"].update(labels)

    def apply_gputopology(
        self, obj: Mapping[str, Any]
    ) -> Literal["created", "updated", "unchanged"]:
        if obj.get("apiVersion") != f"{GPUTOPOLOGY_GROUP}/{GPUTOPOLOGY_VERSION}" or \
                obj.get("kind") != GPUTOPOLOGY_KIND:
            raise ClusterError(
                f"not a GPUTopology object: {obj.get('apiVersion')}/{obj.get('kind')}")
        name = obj["metadata"]["name"]
        with self._lock:
            current = self._topologies.get(name)
            if current is None:
                self._topologies[name] = copy.deepcopy(dict(obj))
                return "created"
            if not gputopology_differs(current, obj):
                return "unchanged"
            self._topologies[name] = copy.deepcopy(dict(obj))
            return "updated"

    def get_gputopology(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            obj = self._topologies.get(name)
            return copy.deepcopy(obj) if obj is not None else None


_: NodeCluster = InMemoryCluster()
