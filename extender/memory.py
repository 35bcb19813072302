"""A cluster held in memory: the cluster-file mode, the simulator, and unit tests.

Pods are kept as decoded values (``extender.pods.Pod``), never as raw objects: those put
by the simulator or a test (:meth:`MemoryCluster.put_pod`), those bound here, and, for
cluster-file mode, the pods seen in filter (the only place such a mode learns a pod
from: a bind names it by UID). The pods seen in filter are remembered within a count
and a byte budget, the oldest first out; a refused bind adds nothing anywhere.

In cluster-file mode every holding a bind creates is written to a state file before the
bind answers (``extender.statefile``), and read back at start: a restart keeps what was
handed out, and a retried bind after it succeeds only where the pod still holds its GPUs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from extender import statefile
from extender.cluster import Cluster, ClusterError
from extender.pods import Pod, decode_pod, holding_from_pod
from extender.request import PodRef, RequestError
from extender.state import ClusterState, Holding
from topology.handoff import HandoffError, decode_gpu_sets
from topology.model import Topology
from topology.names import ASSIGNED_GPUS_ANNOTATION, DEFAULT_RESOURCE_NAME, TERMINAL_PHASES

__all__ = ["REMEMBERED_BYTES", "REMEMBERED_PODS", "MemoryCluster"]

log = logging.getLogger(__name__)

#: Pods seen in filter that cluster-file mode remembers for their bind, at most.
REMEMBERED_PODS: Final = 2_000
REMEMBERED_BYTES: Final = 32 * 1024 * 1024


def _cost(pod: Pod) -> int:
    """About what a remembered pod costs in memory (bytes)."""
    return 600 + sum(200 + len(c.name) for c in pod.request.containers)


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
        resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,),
        state_file: Path | None = None,
        remembered_pods: int = REMEMBERED_PODS,
        remembered_bytes: int = REMEMBERED_BYTES,
    ) -> None:
        self.mode = mode
        self.state = state if state is not None else ClusterState()
        self.topologies: dict[str, Topology] = dict(topologies or {})
        self.resource_names = tuple(resource_names)
        #: Pods that exist here, by UID: a decoded pod, or why it is not a valid one.
        self.pods: dict[str, Pod | RequestError] = {}
        #: What those pods hold, by the same rule as a watched pod's.
        self._holds: dict[str, Holding] = {}
        #: Holdings without a pod object (the cluster file's ``used`` GPUs).
        self.fixed: list[Holding] = list(fixed)
        self.state_file = state_file
        #: The holdings binds made here (what the state file records).
        self._bound: dict[str, Holding] = {}
        self._saving = asyncio.Lock()
        self._seen: OrderedDict[str, Pod] = OrderedDict()
        self._seen_bytes = 0
        self._max_seen = remembered_pods
        self._max_seen_bytes = remembered_bytes
        self._started = False
        for p in pods:
            self._put(p)

    # -- Cluster ------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self.state.synced:
            return False, "cluster state not loaded yet"
        return True, ""

    def is_leader(self) -> bool:
        return True

    async def start(self) -> None:
        if self.state_file is not None:
            for h in statefile.load(self.state_file):
                if h.node not in self.topologies:
                    log.warning("state file holding dropped pod=%s node=%s reason=%r", h.pod,
                                h.node, "the node is not in the cluster file")
                    continue
                self._bound[h.pod.uid] = h
        holdings = [*self.fixed, *self._holds.values(), *self._bound.values()]
        self.state.replace(self.topologies, holdings)
        self.state.synced = True
        self._started = True
        log.info("cluster loaded mode=%s nodes=%d holdings=%d state_file=%s", self.mode,
                 len(self.topologies), len(holdings), self.state_file or "none")

    async def stop(self) -> None:
        self._started = False

    def note_pod(self, pod: Pod) -> None:
        uid = pod.ref.uid
        if not uid:
            return
        old = self._seen.pop(uid, None)
        if old is not None:
            self._seen_bytes -= _cost(old)
        self._seen[uid] = pod
        self._seen_bytes += _cost(pod)
        while len(self._seen) > self._max_seen or self._seen_bytes > self._max_seen_bytes:
            _, dropped = self._seen.popitem(last=False)
            self._seen_bytes -= _cost(dropped)

    def seen(self, uid: str) -> Pod | None:
        """A pod remembered from filter, if it still is."""
        return self._seen.get(uid)

    async def get_pod(self, ref: PodRef) -> Pod | None:
        pod = self.pods.get(ref.uid) or self._seen.get(ref.uid)
        if isinstance(pod, RequestError):
            raise pod
        if pod is None or (pod.ref.namespace, pod.ref.name) != (ref.namespace, ref.name):
            return None
        return pod

    async def bind(self, ref: PodRef, node: str, assigned: str | None) -> None:
        pod = await self.get_pod(ref)
        if pod is None:
            raise ClusterError(f"pod {ref} (uid {ref.uid}) not found")
        if pod.node and pod.node != node:
            raise ClusterError(f"pod {ref} is already bound to {pod.node}", conflict=True)
        bound = dataclasses.replace(pod, node=node)
        if assigned is not None:
            try:
                sets = decode_gpu_sets(ASSIGNED_GPUS_ANNOTATION, assigned)
            except HandoffError as e:
                raise ClusterError(str(e)) from None
            bound = dataclasses.replace(bound, recorded=tuple(sorted(sets.items())),
                                        recorded_source="assigned")
        holding = bound.holding()
        if holding is not None and self.state_file is not None:
            async with self._saving:
                records = {**self._bound, ref.uid: holding}
                try:
                    await asyncio.to_thread(statefile.save, self.state_file, records.values())
                except OSError as e:
                    raise ClusterError(f"writing the state file {self.state_file}: {e}") from None
                self._bound = records
        if holding is not None or ref.uid in self.pods:
            self.pods[ref.uid] = bound
        if holding is not None:
            self._holds[ref.uid] = holding
            if self._started:
                self.state.hold(holding)

    # -- changes, as a watch would deliver them (the simulator, tests) ------------------
    def put_pod(self, pod: Mapping[str, Any]) -> None:
        uid = self._put(pod)
        if self._started:
            h = self._holds.get(uid)
            if h is not None:
                self.state.hold(h)
            else:
                status = pod.get("status")
                if isinstance(status, Mapping) and status.get("phase") in TERMINAL_PHASES:
                    self.state.release(uid)

    def delete_pod(self, uid: str) -> None:
        self.pods.pop(uid, None)
        self._holds.pop(uid, None)
        self._bound.pop(uid, None)
        if self._started:
            self.state.release(uid)

    def set_phase(self, uid: str, phase: str) -> None:
        pod = self.pods.get(uid)
        if isinstance(pod, Pod):
            self.pods[uid] = dataclasses.replace(pod, terminal=phase in TERMINAL_PHASES)
        if phase in TERMINAL_PHASES:
            self._holds.pop(uid, None)
            self._bound.pop(uid, None)
            if self._started:
                self.state.release(uid)

    def set_topology(self, node: str, topology: Topology) -> None:
        self.topologies[node] = topology
        if self._started:
            self.state.set_topology(node, topology)

    def remove_node(self, node: str) -> None:
        self.topologies.pop(node, None)
        if self._started:
            self.state.remove_node(node)

    # -- helpers ------------------------------------------------------------------------
    def _put(self, raw: Mapping[str, Any]) -> str:
        meta = raw.get("metadata")
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        if not isinstance(uid, str) or not uid:
            raise ValueError("a pod needs metadata.uid")
        try:
            self.pods[uid] = decode_pod(raw, self.resource_names)
        except RequestError as e:
            self.pods[uid] = e
        h = holding_from_pod(raw)
        if h is None:
            self._holds.pop(uid, None)
        else:
            self._holds[uid] = h
        return uid


_: type[Cluster] = MemoryCluster
