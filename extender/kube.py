"""The Kubernetes API as the cluster: watch GPUTopology objects and pods, write binds.

Everything is rebuilt from the API server: on start (a restart or a fail-over) each
kind is listed in full, then watched from the list's resourceVersion. A watch that
expires (HTTP 410 Gone, or an ERROR event with code 410) or fails is followed by a fresh
list, which replaces what the state holds for that kind. The GPUs a pod holds are on the
pod: the allocated annotation (the plugin's record of what the kubelet did) if present,
else the assigned one (this extender's choice at bind).

Everything runs on the event loop (``extender.kubeapi`` is asynchronous): each kind is
followed by a task, and every event is applied to ``ClusterState`` where it arrives; no
thread sits between the API server and the state. Observed pods go through the same
rule as the in-memory source's (``extender.pods.apply_pod``); this module does not know
that source.

A bind is one API call: a Binding that carries ``gputopo.io/assigned-gpus`` in its
``metadata.annotations`` (kube-apiserver merges them into the pod as it sets
``spec.nodeName``, in one write) and the pod's UID as a precondition (a pod deleted and
recreated under the same name is refused). Only when the API server answers Conflict is
the pod read, to tell a bind that had already happened from a real conflict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from extender.cluster import Cluster, ClusterError
from extender.kubeapi import ApiError, ApiUnreachable, KubeApi, WatchExpired
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

__all__ = ["GPUTOPOLOGY_PATH", "POD_FIELD_SELECTOR", "KubeCluster", "binding_body"]

log = logging.getLogger(__name__)

GPUTOPOLOGY_PATH: Final = f"/apis/{GPUTOPOLOGY_GROUP}/{GPUTOPOLOGY_VERSION}/{GPUTOPOLOGY_PLURAL}"
PODS_PATH: Final = "/api/v1/pods"
#: Only pods that can hold GPUs: bound and not terminal. A pod leaving this set (it
#: finished) arrives as a DELETED event, which releases its GPUs.
POD_FIELD_SELECTOR: Final = ",".join(
    ["spec.nodeName!=", *(f"status.phase!={p}" for p in sorted(TERMINAL_PHASES))])
_WATCH_TIMEOUT_S: Final = 300
_BACKOFF_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_KINDS: Final = ("gputopologies", "pods")


def binding_body(ref: PodRef, node: str, assigned: str | None) -> dict[str, Any]:
    """The Binding of ``ref`` to ``node``: the UID as a precondition and, when the pod has
    GPUs, the assigned set as an annotation the API server merges into the pod.

    >>> b = binding_body(PodRef(namespace="ml", name="a", uid="u1"), "n1", '{"main":[]}')
    >>> b["metadata"]["uid"], b["metadata"]["annotations"], b["target"]["name"]
    ('u1', {'gputopo.io/assigned-gpus': '{"main":[]}'}, 'n1')
    """
    meta: dict[str, Any] = {"name": ref.name, "namespace": ref.namespace, "uid": ref.uid}
    if assigned is not None:
        meta["annotations"] = {ASSIGNED_GPUS_ANNOTATION: assigned}
    return {"apiVersion": "v1", "kind": "Binding", "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}}


class KubeCluster:
    """:class:`~extender.cluster.Cluster` on the Kubernetes API."""

    mode = "kubernetes"

    def __init__(
        self, api: KubeApi, *, state: ClusterState | None = None,
        elector: LeaseElector | None = None, watch_timeout_s: int = _WATCH_TIMEOUT_S,
        backoff_s: tuple[float, ...] = _BACKOFF_S,
        resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,), close_api: bool = False,
    ) -> None:
        self.api = api
        #: Close the API client on stop (when this cluster is its only user).
        self.close_api = close_api
        self.resource_names = tuple(resource_names)
        self.state = state if state is not None else ClusterState()
        self.elector = elector
        self.watch_timeout_s = watch_timeout_s
        self.backoff_s = backoff_s
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listed: set[str] = set()
        self._elector_task: asyncio.Task[None] | None = None
        #: How many full lists each kind has had (tests of resync).
        self.lists: dict[str, int] = dict.fromkeys(_KINDS, 0)
        #: Lists and watch events applied to the state so far (see wait_applied).
        self.applied = 0
        self._waiters: list[asyncio.Future[None]] = []

    # -- Cluster ------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self.state.synced:
            missing = sorted(set(_KINDS) - self._listed)
            return False, f"waiting for the first list of {', '.join(missing)}"
        if self.elector is not None and not self.elector.is_leader():
            return False, f"standby: {self.elector.describe()}"
        return True, ""

    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    async def start(self) -> None:
        self._stopping.clear()
        self._tasks = [
            asyncio.create_task(self._follow(
                "gputopologies", GPUTOPOLOGY_PATH, {},
                self._on_topology_list, self._on_topology_event), name="watch-gputopologies"),
            asyncio.create_task(self._follow(
                "pods", PODS_PATH, {"fieldSelector": POD_FIELD_SELECTOR},
                self._on_pod_list, self._on_pod_event), name="watch-pods"),
        ]
        if self.elector is not None:
            self._elector_task = asyncio.create_task(self.elector.run(), name="lease")

    async def stop(self) -> None:
        self._stopping.set()
        if self.elector is not None and self._elector_task is not None:
            self.elector.stop()
            await self._elector_task  # releases the lease while the client is open
            self._elector_task = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.close_api:
            await self.api.close()

    def note_pod(self, pod: Pod) -> None:
        """Pods in requests are remembered by the app (``extender.pods.RecentPods``)."""

    async def get_pod(self, ref: PodRef) -> Pod | None:
        """The pod as the API server has it now, decoded (:class:`RequestError` if it is
        not a valid pod, :class:`ClusterError` if it cannot be read)."""
        raw = await self._read_pod(ref)
        return None if raw is None else decode_pod(raw, self.resource_names)

    async def _read_pod(self, ref: PodRef) -> Mapping[str, Any] | None:
        try:
            raw = await self.api.request(
                "GET", f"/api/v1/namespaces/{ref.namespace}/pods/{ref.name}")
        except ApiUnreachable as e:
            raise ClusterError(f"API server unreachable: {e.message}") from None
        except ApiError as e:
            if e.status == 404:
                return None
            raise ClusterError(str(e)) from None
        if not isinstance(raw, Mapping):
            raise ClusterError(f"reading pod {ref}: the API server answered no object")
        return raw

    async def bind(self, ref: PodRef, node: str, assigned: str | None) -> None:
        """One Binding: node, assigned set and UID precondition in a single write."""
        path = f"/api/v1/namespaces/{ref.namespace}/pods/{ref.name}/binding"
        try:
            await self.api.request("POST", path, body=binding_body(ref, node, assigned))
            return
        except ApiUnreachable as e:
            raise ClusterError(f"API server unreachable: {e.message}") from None
        except ApiError as e:
            if e.status == 404:
                raise ClusterError(f"pod {ref} not found (deleted)") from None
            if e.status != 409:
                raise ClusterError(str(e)) from None
            conflict = e
        # Conflict: the pod is bound already (this very bind, retried after a lost
        # answer?), or it is another pod now (deleted and recreated under the name).
        raw = await self._read_pod(ref)
        meta = raw.get("metadata") if raw is not None else None
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        if raw is None or uid != ref.uid:
            raise ClusterError(
                f"pod {ref} was deleted" + (f" and recreated (uid {uid})" if uid else "")
                + f" since it was scheduled (uid {ref.uid}): {conflict.message}",
                conflict=True)
        spec = raw.get("spec")
        bound = spec.get("nodeName") if isinstance(spec, Mapping) else None
        if bound != node:
            raise ClusterError(f"pod {ref} is already bound to {bound or 'no node'}: "
                               f"{conflict.message}", conflict=True)
        log.info("binding existed pod=%s node=%s", ref, node)
        held = holding_from_pod(raw)
        if held is not None:
            self.state.hold(held)

    # -- following the API ----------------------------------------------------------------
    def _applied(self) -> None:
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

    async def _follow(
        self, kind: str, path: str, query: Mapping[str, str],
        on_list: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                items, rv = await self.api.list(path, query=query)
                self.lists[kind] += 1
                on_list(items)
                del items
                self._applied()
                failures = 0
                while not self._stopping.is_set():
                    q = {**query, "resourceVersion": rv, "allowWatchBookmarks": "true"}
                    try:
                        async for event in self.api.watch(path, query=q,
                                                          timeout_s=self.watch_timeout_s):
                            obj = event.get("object") or {}
                            rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                            if event.get("type") != "BOOKMARK":
                                on_event(str(event.get("type")), obj)
                                self._applied()
                    except ApiError as e:
                        if not _cache_behind(e):
                            raise
                        # The API server's watch cache has not reached rv yet (a quiet
                        # kind, on an etcd without progress notifications): nothing was
                        # missed, so watch again from rv rather than list everything.
                        log.debug("watch cache behind kind=%s rv=%s", kind, rv)
            except WatchExpired as e:
                log.info("watch expired kind=%s error=%r; listing again", kind, str(e))
            except Exception as e:  # never let a follow task end: list again after a pause
                delay = self.backoff_s[min(failures, len(self.backoff_s) - 1)]
                failures += 1
                log.warning("watch failed kind=%s error=%r retry_in_s=%g", kind, str(e), delay)
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- applying what the API says -------------------------------------------------------
    def _mark_listed(self, kind: str) -> None:
        self._listed.add(kind)
        if not self.state.synced and self._listed >= set(_KINDS):
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


def _cache_behind(e: ApiError) -> bool:
    """kube-apiserver's answer when a watch asks for a resourceVersion its cache has not
    seen yet (504 "Too large resource version"): retry the watch."""
    return e.status == 504 and "too large resource version" in e.message.lower()


def _topology(obj: Mapping[str, Any]) -> tuple[str, Topology] | None:
    try:
        return topology_from_gputopology(obj)
    except HandoffError as e:
        log.warning("unreadable GPUTopology error=%r", str(e))
        return None


_: type[Cluster] = KubeCluster
