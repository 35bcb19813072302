"""bind: choose the set again on fresh state, write it on the pod, create the Binding.

Binds are asynchronous in kube-scheduler: later pods are filtered while a bind is in
flight. So the chosen set is *reserved* in ``ClusterState`` before any write; filter
and other binds see those GPUs as taken. The per-node lock covers the choice and the
reservation (synchronous, no I/O); the writes run outside it, so a slow API server does
not stall other binds on the node, and the reservation is what keeps their sets apart.
On failure the reservation is released; on success it becomes a holding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from extender.cluster import Cluster, ClusterError, holding_from_pod
from extender.config import ExtenderConfig
from extender.context import CONTEXT
from extender.metrics import Metrics
from extender.plan import Plan, place
from extender.request import GpuRequest, PodRef, RequestError
from extender.state import ClusterState, Holding
from extender.wire import (
    BindArgs,
    ExtenderBindingResult,
    decode_binding_args,
    decode_json,
    json_response,
)
from topology.handoff import encode_gpu_sets

__all__ = ["Binder", "choose", "handle"]

log = logging.getLogger(__name__)


def choose(state: ClusterState, node_name: str, request: GpuRequest, pod: PodRef) -> Holding | str:
    """The pod's sets on ``node_name`` on the state as it is now, or why there are none."""
    node = state.nodes.get(node_name)
    if node is None:
        return f"node {node_name}: no GPU topology known for this node (yet)"
    v = place(node.allocator, node.free_mask, request)
    if not isinstance(v, Plan):
        return f"node {node_name} can no longer take the pod: {v.reason}"
    return Holding(
        pod=pod, node=node_name, source="binding",
        sets=tuple((c, node.ids_of(idx)) for c, idx in v.sets),
    )


class Binder:
    """Per-node locks and one bind at a time per pod."""

    def __init__(
        self, cluster: Cluster, state: ClusterState, cfg: ExtenderConfig, metrics: Metrics
    ) -> None:
        self.cluster = cluster
        self.state = state
        self.cfg = cfg
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[str, tuple[str, asyncio.Future[str]]] = {}

    def lock(self, node: str) -> asyncio.Lock:
        lock = self._locks.get(node)
        if lock is None:
            lock = self._locks[node] = asyncio.Lock()
        return lock

    async def bind(self, args: BindArgs) -> str:
        """Bind; returns the error message ("" on success)."""
        uid = args.pod_uid
        held = self.state.holdings.get(uid)
        if held is not None:
            if held.node == args.node:
                self.metrics.binds.labels("retry").inc()
                return ""
            return f"pod {args.pod_namespace}/{args.pod_name} already holds GPUs on {held.node}"
        running = self._inflight.get(uid)
        if running is not None:
            other_node, other = running
            if other_node != args.node:
                return (f"a bind of pod {args.pod_namespace}/{args.pod_name} to {other_node} "
                        "is in progress")
            return await asyncio.shield(other)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[uid] = (args.node, fut)
        try:
            error = await self._bind(args)
            fut.set_result(error)
        except BaseException as e:
            fut.set_result(f"bind interrupted: {e!r}")
            raise
        finally:
            self._inflight.pop(uid, None)
        self.metrics.binds.labels("error" if error else "bound").inc()
        return error

    async def _bind(self, args: BindArgs) -> str:
        ns, name, uid, node = args.pod_namespace, args.pod_name, args.pod_uid, args.node
        ref = PodRef(namespace=ns, name=name, uid=uid)
        if not self.cluster.is_leader():
            return "this extender replica is not the leader; the scheduler will retry"
        try:
            pod = await self.cluster.get_pod(ns, name, uid)
        except ClusterError as e:
            return f"reading pod {ref}: {e}"
        if pod is None:
            return (f"pod {ref} (uid {uid}) not found"
                    + (" (in cluster-file mode a pod is known from its filter call)"
                       if self.cluster.mode == "file" else ""))
        meta: Mapping[str, Any] = pod.get("metadata") or {}
        if meta.get("uid") not in (None, uid):
            return f"pod {ref} now has uid {meta.get('uid')}, not {uid} (it was recreated)"
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound:
            if bound != node:
                self.metrics.bind_conflicts.inc()
                return f"pod {ref} is already bound to {bound}"
            h = holding_from_pod(pod)
            if h is not None:
                self.state.hold(h)
            log.info("bind retry pod=%s node=%s (already bound)", ref, node)
            return ""
        try:
            request = GpuRequest.from_pod(pod, self.cfg.resource_names)
        except RequestError as e:
            return str(e)
        if request.empty:
            return await self._write(ref, node, None)
        async with self.lock(node):
            chosen = choose(self.state, node, request, ref)
            if isinstance(chosen, str):
                self.metrics.bind_conflicts.inc()
                log.warning("bind conflict pod=%s node=%s reason=%r", ref, node, chosen)
                return chosen
            self.state.reserve(chosen)
        return await self._write(ref, node, chosen)

    async def _write(self, ref: PodRef, node: str, chosen: Holding | None) -> str:
        try:
            async with asyncio.timeout(self.cfg.bind_timeout_s):
                if chosen is not None:
                    value = encode_gpu_sets(dict(chosen.sets))
                    await self.cluster.assign(ref.namespace, ref.name, ref.uid, value)
                await self.cluster.bind(ref.namespace, ref.name, ref.uid, node)
        except (ClusterError, TimeoutError) as e:
            self.state.unreserve(ref.uid)
            if isinstance(e, ClusterError) and e.conflict:
                self.metrics.bind_conflicts.inc()
            why = str(e) or f"timed out after {self.cfg.bind_timeout_s:g}s"
            log.warning("bind failed pod=%s node=%s error=%r", ref, node, why)
            return f"binding pod {ref} to {node}: {why}"
        except BaseException:
            self.state.unreserve(ref.uid)
            raise
        if chosen is not None:
            self.state.commit(ref.uid, "bind")
            log.info("bound pod=%s node=%s gpus=%s", ref, node,
                     ";".join(f"{c}={','.join(ids)}" for c, ids in chosen.sets))
        else:
            log.info("bound pod=%s node=%s gpus=none", ref, node)
        return ""


async def handle(request: web.Request, body: bytes) -> web.Response:
    ext = request.app[CONTEXT]
    args = decode_binding_args(decode_json(body))
    error = await ext.binder.bind(args)
    result: ExtenderBindingResult = {"Error": error}
    return json_response(result)
