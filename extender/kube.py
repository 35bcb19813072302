"""The Kubernetes API as the cluster: watch GPUTopology objects and pods, write binds.

Everything is rebuilt from the API server: on start (a restart or a fail-over) each
kind is listed in full, then watched from the list's resourceVersion. A watch that
expires (HTTP 410 Gone, or an ERROR event with code 410) or fails is followed by a fresh
list, which replaces what the state holds for that kind. The GPUs a pod holds are on the
pod: the allocated annotation (the plugin's record of what the kubelet did) if present,
else the assigned one (this extender's choice at bind).

The API client (``extender.kubeapi``) is synchronous: each kind is followed in a daemon
thread that hands every change to the event loop (``call_soon_threadsafe``), so
``ClusterState`` is only ever touched on the loop. Writes run in worker threads
(``asyncio.to_thread``). Observed pods go through the same rule as the in-memory
source's (``extender.pods.apply_pod``); this module does not know that source.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from extender.cluster import Cluster, ClusterError
from extender.kubeapi import ApiError, KubeApi, WatchExpired
from extender.leader import LeaseElector
from extender.pods import Pod, apply_pod, decode_pod, holding_from_pod
from extender.request import PodRef
from extender.state import ClusterState, Holding
from topology.handoff import HandoffError, topology_from_gputopology
from topology.model import Topology
from topology.names import (
    ASSIGNED_GPUS_ANNOTATION,
    DEFAULT_RESOURCE_NAME,
    GPUTOPOLOGY_GROUP,
    GPUTOPOLOGY_PLURAL,
    GPUTOPOLOGY_VERSION,
    TERMINAL_PHASES,
)

__all__ = ["GPUTOPOLOGY_PATH", "POD_FIELD_SELECTOR", "KubeCluster"]

log = logging.getLogger(__name__)

GPUTOPOLOGY_PATH: Final = f"/apis/{GPUTOPOLOGY_GROUP}/{GPUTOPOLOGY_VERSION}/{GPUTOPOLOGY_PLURAL}"
PODS_PATH: Final = "/api/v1/pods"
#: Only pods that can hold GPUs: bound and not terminal. A pod leaving this set (it
#: finished) arrives as a DELETED event, which releases its GPUs.
POD_FIELD_SELECTOR: Final = ",".join(
    ["spec.nodeName!=", *(f"status.phase!={p}" for p in sorted(TERMINAL_PHASES))])
_LIST_PAGE: Final = 500
_WATCH_TIMEOUT_S: Final = 300
_BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class KubeCluster:
    """:class:`~extender.cluster.Cluster` on the Kubernetes API."""

    mode = "kubernetes"

    def __init__(
        self, api: KubeApi, *, state: ClusterState | None = None,
        elector: LeaseElector | None = None, watch_timeout_s: int = _WATCH_TIMEOUT_S,
        backoff_s: tuple[float, ...] = _BACKOFF_S,
        resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,),
    ) -> None:
        self.api = api
        self.resource_names = tuple(resource_names)
        self.state = state if state is not None else ClusterState()
        self.elector = elector
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listed: set[str] = set()
        self._elector_task: asyncio.Task[None] | None = None
        #: How many full lists each kind has had (tests of resync).
        self.lists: dict[str, int] = {"gputopologies": 0, "pods": 0}
        #: Lists and watch events applied to the state so far (see wait_applied).
        self.applied = 0
        self._waiters: list[asyncio.Future[None]] = []

    # -- Cluster ------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self.state.synced:
            missing = sorted({"gputopologies", "pods"} - self._listed)
            return False, f"waiting for the first list of {', '.join(missing)}"
        if self.elector is not None and not self.elector.is_leader():
            return False, f"standby: {self.elector.describe()}"
        return True, ""

    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        for kind, follow in (("gputopologies", self._follow_topologies),
                             ("pods", self._follow_pods)):
            t = threading.Thread(target=follow, name=f"watch-{kind}", daemon=True)
            t.start()
            self._threads.append(t)
        if self.elector is not None:
            self._elector_task = asyncio.create_task(self.elector.run())

    async def stop(self) -> None:
        self._stop.set()
        self.api.abort_watches()
        if self.elector is not None and self._elector_task is not None:
            self.elector.stop()
            await self._elector_task
            self._elector_task = None
        for t in self._threads:
            await asyncio.to_thread(t.join, 1.0)
        self._threads.clear()

    def note_pod(self, pod: Pod) -> None:
        """Pods are read from the API at bind; nothing to keep."""

    async def get_pod(self, ref: PodRef) -> Pod | None:
        """The pod as the API server has it now, decoded (:class:`RequestError` if it is
        not a valid pod, :class:`ClusterError` if it cannot be read)."""
        try:
            raw = await asyncio.to_thread(
                self.api.request, "GET", f"/api/v1/namespaces/{ref.namespace}/pods/{ref.name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise ClusterError(str(e)) from None
        except Exception as e:
            raise ClusterError(f"API server unreachable: {e}") from None
        if not isinstance(raw, Mapping):
            raise ClusterError(f"reading pod {ref}: the API server answered no object")
        return decode_pod(raw, self.resource_names)

    async def bind(self, ref: PodRef, node: str, assigned: str | None) -> None:
        """Write the assigned annotation (when the pod has GPUs), then the Binding."""
        ns, name, uid = ref.namespace, ref.name, ref.uid
        if assigned is not None:
            # metadata.uid in the patch is a precondition: a recreated pod is refused.
            patch = {"metadata": {"uid": uid, "annotations": {ASSIGNED_GPUS_ANNOTATION: assigned}}}
            await self._write("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", patch,
                              "application/merge-patch+json")
        binding = {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        try:
            await self._write("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding",
                              binding, "application/json")
        except ClusterError as e:
            if not e.conflict:
                raise
            pod = await self.get_pod(ref)
            if pod is None or pod.node != node:
                raise
            log.info("binding existed pod=%s node=%s", ref, node)

    async def _write(self, method: str, path: str, body: Any, content_type: str) -> None:
        try:
            await asyncio.to_thread(self.api.request, method, path, body=body,
                                    content_type=content_type)
        except ApiError as e:
            raise ClusterError(str(e), conflict=e.status in (409, 422)) from None
        except Exception as e:
            raise ClusterError(f"API server unreachable: {e}") from None

    # -- following the API (threads) ----------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._apply, fn, *args)

    def _apply(self, fn: Callable[..., None], *args: Any) -> None:
        fn(*args)
        self.applied += 1
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def wait_applied(self, after: int) -> None:
        """Return once more than ``after`` lists and watch events have been applied
        (read ``applied`` before looking at the state, then wait with it)."""
        while self.applied <= after:
            w = asyncio.get_running_loop().create_future()
            self._waiters.append(w)
            await w

    def _list(self, path: str, query: Mapping[str, str]) -> tuple[list[dict[str, Any]], str]:
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            q = {**query, "limit": str(_LIST_PAGE)}
            if cont:
                q["continue"] = cont
            page = self.api.request("GET", path, query=q)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def _follow(
        self, kind: str, path: str, query: Mapping[str, str],
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                items, rv = self._list(path, query)
                self.lists[kind] += 1
                self._post(on_list, items)
                failures = 0
                while not self._stop.is_set():
                    q = {**query, "resourceVersion": rv, "allowWatchBookmarks": "true",
                         "timeoutSeconds": str(self.watch_timeout_s)}
                    for event in self.api.watch(path, query=q):
                        obj = event.get("object") or {}
                        rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                        if event.get("type") != "BOOKMARK":
                            self._post(on_event, str(event.get("type")), obj)
                        if self._stop.is_set():
                            return
            except WatchExpired as e:
                log.info("watch expired kind=%s error=%r; listing again", kind, str(e))
            except Exception as e:
                delay = self.backoff_s[min(failures, len(self.backoff_s) - 1)]
                failures += 1
                log.warning("watch failed kind=%s error=%r retry_in_s=%g", kind, str(e), delay)
                self._stop.wait(delay)

    def _follow_topologies(self) -> None:
        self._follow("gputopologies", GPUTOPOLOGY_PATH, {},
                     self._on_topology_list, self._on_topology_event)

    def _follow_pods(self) -> None:
        self._follow("pods", PODS_PATH, {"fieldSelector": POD_FIELD_SELECTOR},
                     self._on_pod_list, self._on_pod_event)

    # -- on the loop --------------------------------------------------------------------
    def _mark_listed(self, kind: str) -> None:
        self._listed.add(kind)
        if not self.state.synced and self._listed >= {"gputopologies", "pods"}:
            self.state.synced = True
            log.info("cluster synced nodes=%d pods=%d", len(self.state.nodes),
                     len(self.state.holdings))

    def _on_topology_list(self, items: list[dict[str, Any]]) -> None:
        topologies: dict[str, Topology] = {}
        for obj in items:
            parsed = _topology(obj)
            if parsed is not None:
                topologies[parsed[0]] = parsed[1]
        self.state.replace_topologies(topologies)
        self._mark_listed("gputopologies")

    def _on_topology_event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            name = (obj.get("spec") or {}).get("nodeName") or (obj.get("metadata") or {}).get(
                "name")
            if isinstance(name, str):
                self.state.remove_node(name)
            return
        parsed = _topology(obj)
        if parsed is not None:
            self.state.set_topology(*parsed)

    def _on_pod_list(self, items: list[dict[str, Any]]) -> None:
        holdings: list[Holding] = []
        for pod in items:
            h = holding_from_pod(pod)
            if h is not None:
                holdings.append(h)
        self.state.replace_holdings(holdings)
        self._mark_listed("pods")

    def _on_pod_event(self, kind: str, obj: dict[str, Any]) -> None:
        apply_pod(self.state, obj, deleted=kind == "DELETED")


def _topology(obj: Mapping[str, Any]) -> tuple[str, Topology] | None:
    try:
        return topology_from_gputopology(obj)
    except HandoffError as e:
        log.warning("unreadable GPUTopology error=%r", str(e))
        return None


_: type[Cluster] = KubeCluster
