"""Test doubles of the plugin's outside world that the shipped packages do not need.

* ``InMemoryCluster``: a ``NodeCluster`` held in memory (the contract suite runs it and
  the API-backed one against the same tests);
* ``FaultyNvml``: the shipped fake NVML (``plugin.fakenvml``, which ``--fake-topology``
  uses) plus the faults tests inject: XID events, lost GPUs, ``nvmlInit`` failing.

Both announce what happened on a ``Changes``, so tests wait for a condition instead of
polling with a sleep.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Literal

from plugin.cluster import ClusterError, NodeCluster, PodEvent, PodInfo, PodKey, gputopology_differs
from plugin.fakenvml import FakeNvml
from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_KIND, GPUTOPOLOGY_VERSION

__all__ = ["Changes", "FaultyNvml", "InMemoryCluster"]

#: Guard against a hung test only; no test asserts how long anything takes.
HANG_GUARD_S = 60.0


class Changes:
    """Something tests wait on: ``notify()`` after every change, ``wait_for(predicate)``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()

    def notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = HANG_GUARD_S) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)


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
        #: Lookups of a node that does not exist (a publisher retrying).
        self.missing_node_lookups = 0
        #: Notified after every write and every failed node lookup.
        self.changes = Changes()

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
        self.changes.notify()
        return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            pod = self._pods.pop((namespace, name), None)
            if pod is not None:
                self._emit(PodEvent("DELETED", pod))
        self.changes.notify()

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
        self.changes.notify()

    def node_uid(self, node_name: str) -> str:
        with self._lock:
            node = self._nodes.get(node_name)
            if node is not None:
                return str(node["uid"])
            self.missing_node_lookups += 1
        self.changes.notify()
        raise ClusterError(f"node {node_name} not found", not_found=True)

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


class FaultyNvml(FakeNvml):
    """``FakeNvml`` with the faults a test can inject, and a ``Changes`` notified when a
    GPU is registered for XID events (only then does an injected XID reach a loop)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.changes = Changes()
        self.registered_for_events: set[int] = set()

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        super().nvmlDeviceRegisterEvents(handle, event_types, event_set)
        with self._lock:
            self.registered_for_events.add(handle.index)
        self.changes.notify()

    def inject_xid(self, index: int, xid: int) -> None:
        """Deliver an XID critical-error event for GPU ``index`` to every event set."""
        self._post_xid(index, xid)

    def fail_device(self, index: int, code: int = FakeNvml.NVML_ERROR_GPU_IS_LOST) -> None:
        with self._lock:
            self._failed[index] = code

    def restore_device(self, index: int) -> None:
        with self._lock:
            self._failed.pop(index, None)

    def fail_init(self, code: int | None = FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED) -> None:
        self._init_error = code
