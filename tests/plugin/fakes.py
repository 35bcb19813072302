"""Test doubles of the plugin's outside world that the shipped packages do not need.

* ``InMemoryCluster``: a ``NodeCluster`` held in memory (the contract suite runs it and
  the API-backed one against the same tests);
* ``FaultyNvml``: the shipped fake NVML (``plugin.fakenvml``, which ``--fake-topology``
  uses) plus the faults tests inject: XID events, lost GPUs, ``nvmlInit`` failing;
* ``FakePodResources``: the kubelet's PodResources service on a real unix socket (also
  served by ``benchmarks/bench_plugin.py``, as the kubelet would).

All announce what happened on a ``Changes``, so tests wait for a condition instead of
polling with a sleep.
"""

from __future__ import annotations

import copy
import itertools
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import grpc

from plugin.api import podresources_pb2 as pr
from plugin.api import podresources_pb2_grpc as pr_grpc
from plugin.cluster import ClusterError, NodeCluster, PodEvent, PodInfo, PodKey, gputopology_differs
from plugin.fakenvml import FakeNvml
from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_KIND, GPUTOPOLOGY_VERSION

__all__ = ["Changes", "FakePodResources", "FaultyNvml", "InMemoryCluster"]

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
        #: Notified after every write, every failed node lookup and every watch refused.
        self.changes = Changes()
        self._down = False
        #: Watches refused or broken because the API server was down.
        self.watches_refused = 0

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

    def go_down(self) -> None:
        """The API server goes away: open watches break, new ones are refused."""
        with self._lock:
            self._down = True
        self.changes.notify()

    def _refuse_watch(self) -> ClusterError:
        with self._lock:
            self.watches_refused += 1
        self.changes.notify()
        return ClusterError("watch pods: connection refused (API server down)")

    def _emit(self, event: PodEvent) -> None:
        assert event.pod is not None
        for node, q in self._watchers:
            if event.pod.node_name == node:
                q.put(event)

    # --- NodeCluster ---------------------------------------------------------------------

    def watch_pods(self, node_name: str, stop: threading.Event) -> Iterator[PodEvent]:
        q: queue.Queue[PodEvent] = queue.Queue()
        with self._lock:
            down = self._down
            if not down:
                listing = [p for p in self._pods.values() if p.node_name == node_name]
                self._watchers.append((node_name, q))
        if down:
            raise self._refuse_watch()
        try:
            yield PodEvent("RELIST")
            for pod in listing:
                yield PodEvent("ADDED", pod)
            yield PodEvent("SYNCED")
            while not stop.is_set():
                if self._down:
                    raise self._refuse_watch()
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


class _Lister(pr_grpc.PodResourcesListerServicer):
    def __init__(self, owner: FakePodResources) -> None:
        self.owner = owner

    def List(self, request: Any, context: Any) -> pr.ListPodResourcesResponse:
        with self.owner.lock:
            self.owner.lists += 1
            on_list, self.owner.on_list = self.owner.on_list, None
            holdings = {k: dict(v) for k, v in self.owner.holdings.items()}
            admitted = [k for k in self.owner.admitted if k not in holdings]
        if on_list is not None:
            on_list()
        self.owner.changes.notify()
        return pr.ListPodResourcesResponse(pod_resources=[
            *(pr.PodResources(namespace=ns, name=name, containers=[
                pr.ContainerResources(name=c, devices=[
                    pr.ContainerDevices(resource_name=self.owner.resource_name, device_ids=ids),
                    pr.ContainerDevices(resource_name="example.com/other", device_ids=["x"]),
                ])
                for c, ids in containers.items()
            ])
              for (ns, name), containers in holdings.items()),
            *(pr.PodResources(namespace=ns, name=name, containers=[
                pr.ContainerResources(name="main")])
              for ns, name in admitted),
        ])


@dataclass
class FakePodResources:
    """The kubelet's PodResources service: what it says each container holds."""

    socket: Path
    resource_name: str = "nvidia.com/gpu"
    holdings: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    #: Pods the kubelet has that hold no device yet (one it is admitting, say).
    admitted: list[tuple[str, str]] = field(default_factory=list)
    #: Called once, inside the next List, before it answers (a test's trigger).
    on_list: Callable[[], None] | None = None
    #: Lists answered; ``changes`` is notified after each.
    lists: int = 0
    changes: Changes = field(default_factory=Changes)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pr_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def hold(self, namespace: str, pod: str, container: str, ids: list[str]) -> None:
        with self.lock:
            self.holdings.setdefault((namespace, pod), {})[container] = list(ids)

    def admit(self, namespace: str, pod: str) -> None:
        """The kubelet has the pod (in its pod manager), no device allocated yet."""
        with self.lock:
            self.admitted.append((namespace, pod))

    def next_list(self, then: Callable[[], None]) -> None:
        """Run ``then`` inside the next List, before it answers."""
        with self.lock:
            self.on_list = then

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
