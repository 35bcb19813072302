"""A cluster held in memory: the cluster-file mode, the simulator, and unit tests.

Pods are Pod objects (API JSON) keyed by UID; writes (``assign``, ``bind``) change them in
place, as the API server would, and every change goes through the same
:func:`apply_pod` rule as a Kubernetes watch event. Tests can inject write failures
and delays.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from extender.cluster import Cluster, ClusterError, holding_from_pod
from extender.state import ClusterState, Holding
from topology.model import Topology
from topology.names import ASSIGNED_GPUS_ANNOTATION, TERMINAL_PHASES

__all__ = ["MemoryCluster", "apply_pod"]

log = logging.getLogger(__name__)


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


class MemoryCluster:
    """:class:`~extender.cluster.Cluster` over in-memory nodes and pods."""

    def __init__(
        self,
        *,
        topologies: Mapping[str, Topology] | None = None,
        pods: Iterable[Mapping[str, Any]] = (),
        fixed: Iterable[Holding] = (),
        state: ClusterState | None = None,
        mode: str = "memory",
    ) -> None:
        self.mode = mode
        self.state = state if state is not None else ClusterState()
        self.topologies: dict[str, Topology] = dict(topologies or {})
        self.pods: dict[str, dict[str, Any]] = {}
        for p in pods:
            self.pods[_uid(p)] = copy.deepcopy(dict(p))
        #: Holdings without a pod object (the cluster file's ``used`` GPUs).
        self.fixed: list[Holding] = list(fixed)
        #: Failures to raise from the next writes, in order (tests).
        self.assign_faults: list[ClusterError] = []
        self.bind_faults: list[ClusterError] = []
        #: Seconds each write takes (tests of binds in flight).
        self.write_delay_s = 0.0
        #: Every write, in order: ("assign" | "bind", "ns/name", detail).
        self.writes: list[tuple[str, str, str]] = []
        self._started = False

    # -- Cluster ------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self.state.synced:
            return False, "cluster state not loaded yet"
        return True, ""

    def is_leader(self) -> bool:
        return True

    async def start(self) -> None:
        holdings = list(self.fixed)
        for pod in self.pods.values():
            h = holding_from_pod(pod)
            if h is not None:
                holdings.append(h)
        self.state.replace(self.topologies, holdings)
        self.state.synced = True
        self._started = True
        log.info("cluster loaded mode=%s nodes=%d pods=%d", self.mode,
                 len(self.topologies), len(holdings))

    async def stop(self) -> None:
        self._started = False

    def note_pod(self, pod: Mapping[str, Any]) -> None:
        self.state.remember_pod(pod)

    async def get_pod(self, namespace: str, name: str, uid: str) -> Mapping[str, Any] | None:
        pod = self._find(namespace, name, uid)
        return None if pod is None else copy.deepcopy(pod)

    async def assign(self, namespace: str, name: str, uid: str, value: str) -> None:
        await self._write_delay()
        if self.assign_faults:
            raise self.assign_faults.pop(0)
        pod = self._find(namespace, name, uid)
        if pod is None:
            raise ClusterError(f"pod {namespace}/{name} (uid {uid}) not found")
        pod.setdefault("metadata", {}).setdefault("annotations", {})
        pod["metadata"]["annotations"][ASSIGNED_GPUS_ANNOTATION] = value
        self.writes.append(("assign", f"{namespace}/{name}", value))

    async def bind(self, namespace: str, name: str, uid: str, node: str) -> None:
        await self._write_delay()
        if self.bind_faults:
            raise self.bind_faults.pop(0)
        pod = self._find(namespace, name, uid)
        if pod is None:
            raise ClusterError(f"pod {namespace}/{name} (uid {uid}) not found")
        spec = pod.setdefault("spec", {})
        current = spec.get("nodeName")
        if current and current != node:
            raise ClusterError(
                f"pod {namespace}/{name} is already bound to {current}", conflict=True
            )
        spec["nodeName"] = node
        self.writes.append(("bind", f"{namespace}/{name}", node))
        apply_pod(self.state, pod)

    # -- changes, as a watch would deliver them -----------------------------------------
    def put_pod(self, pod: Mapping[str, Any]) -> None:
        uid = _uid(pod)
        self.pods[uid] = copy.deepcopy(dict(pod))
        if self._started:
            apply_pod(self.state, self.pods[uid])

    def delete_pod(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if self._started:
            apply_pod(self.state, pod or {"metadata": {"uid": uid}}, deleted=True)

    def set_phase(self, uid: str, phase: str) -> None:
        pod = self.pods[uid]
        pod.setdefault("status", {})["phase"] = phase
        if self._started:
            apply_pod(self.state, pod)

    def set_topology(self, node: str, topology: Topology) -> None:
        self.topologies[node] = topology
        if self._started:
            self.state.set_topology(node, topology)

    def remove_node(self, node: str) -> None:
        self.topologies.pop(node, None)
        if self._started:
            self.state.remove_node(node)

    # -- helpers ------------------------------------------------------------------------
    def _find(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        pod = self.pods.get(uid)
        if pod is None:
            seen = self.state.recall_pod(uid)
            if seen is None:
                return None
            pod = self.pods[uid] = copy.deepcopy(dict(seen))
        meta = pod.get("metadata") or {}
        if meta.get("namespace", namespace) != namespace or meta.get("name", name) != name:
            return None
        return pod

    async def _write_delay(self) -> None:
        if self.write_delay_s:
            await asyncio.sleep(self.write_delay_s)


def _uid(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    if not isinstance(uid, str) or not uid:
        raise ValueError("a pod needs metadata.uid")
    return uid


_: type[Cluster] = MemoryCluster
