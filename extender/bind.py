"""bind: choose the set again on fresh state, write it on the pod, create the Binding.

Binds are asynchronous in kube-scheduler: later pods are filtered while a bind is in
flight. So the chosen set is *reserved* in ``ClusterState`` before any write; filter
and other binds see those GPUs as taken. The per-node lock covers the choice and the
reservation (synchronous, no I/O); the write runs outside it, so a slow API server does
not stall other binds on the node, and the reservation is what keeps their sets apart.
On failure the reservation is released; on success it becomes a holding.

A bind's outcome is a value: :class:`Bound` or :class:`BindRefused` with the reason
(the scheduler shows it, and retries the pod).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from extender.cluster import Cluster, ClusterError
from extender.config import ExtenderConfig
from extender.encoding import json_response
from extender.metrics import Metrics
from extender.patience import Patience
from extender.plan import Plan, place
from extender.request import GpuRequest, PodRef, RequestError
from extender.state import ClusterState, Holding
from extender.wire import BindArgs, ExtenderBindingResult, decode_binding_args
from topology.handoff import encode_gpu_sets

__all__ = ["BindRefused", "BindResult", "Binder", "Bound", "choose", "handle"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bound:
    """The pod is bound to ``node``; ``holding`` is what it holds there (None: no GPUs)."""

    pod: PodRef
    node: str
    holding: Holding | None = None
    #: The pod was bound already (a retry of a bind that had happened).
    retry: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BindRefused:
    """Why the pod was not bound (the scheduler retries it with a new filter)."""

    reason: str


BindResult = Bound | BindRefused


def choose(
    state: ClusterState, node_name: str, request: GpuRequest, pod: PodRef
) -> Holding | BindRefused:
    """The pod's sets on ``node_name`` on the state as it is now, or why there are none.

    A patient ``request`` (``extender.patience.Patience.request_at``) is refused a set
    worse than its best, as the filter refuses it: the scheduler retries the pod."""
    node = state.nodes.get(node_name)
    if node is None:
        return BindRefused(reason=f"node {node_name}: no GPU topology known for this node (yet)")
    v = place(node.allocator, node.free_mask, request)
    if not isinstance(v, Plan):
        return BindRefused(reason=f"node {node_name} can no longer take the pod: {v.reason}")
    return Holding(
        pod=pod, node=node_name, source="binding",
        sets=tuple((c, node.gpus.ids_of(idx)) for c, idx in v.sets),
    )


class Binder:
    """Per-node locks and one bind at a time per pod."""

    def __init__(
        self, cluster: Cluster, state: ClusterState, cfg: ExtenderConfig, metrics: Metrics,
        *, patience: Patience | None = None,
    ) -> None:
        self.cluster = cluster
        #: Delay scheduling: a pod waiting for its best set is refused a worse one here
        #: too (None: every pod is judged as it is).
        self.patience = patience
        self.state = state
        self.cfg = cfg
        self.metrics = metrics
        self._locks: dict[str, asyncio.Lock] = {}
        self._inflight: dict[str, tuple[str, asyncio.Future[BindResult]]] = {}

    def lock(self, node: str) -> asyncio.Lock:
        lock = self._locks.get(node)
        if lock is None:
            lock = self._locks[node] = asyncio.Lock()
        return lock

    async def bind(self, args: BindArgs) -> BindResult:
        ref = PodRef(namespace=args.pod_namespace, name=args.pod_name, uid=args.pod_uid)
        held = self.state.holdings.get(ref.uid)
        if held is not None:
            if held.node == args.node:
                self.metrics.binds.labels("retry").inc()
                return Bound(pod=ref, node=args.node, holding=held, retry=True)
            return BindRefused(reason=f"pod {ref} already holds GPUs on {held.node}")
        running = self._inflight.get(ref.uid)
        if running is not None:
            other_node, other = running
            if other_node != args.node:
                return BindRefused(reason=f"a bind of pod {ref} to {other_node} is in progress")
            return await asyncio.shield(other)
        fut: asyncio.Future[BindResult] = asyncio.get_running_loop().create_future()
        self._inflight[ref.uid] = (args.node, fut)
        try:
            result = await self._bind(ref, args.node)
            fut.set_result(result)
        except BaseException as e:
            fut.set_result(BindRefused(reason=f"bind interrupted: {e!r}"))
            raise
        finally:
            self._inflight.pop(ref.uid, None)
        self.metrics.binds.labels("bound" if isinstance(result, Bound) else "error").inc()
        return result

    async def _bind(self, ref: PodRef, node: str) -> BindResult:
        if not self.cluster.is_leader():
            return BindRefused(reason="this extender replica is not the leader; the scheduler "
                                      "will retry")
        try:
            pod = await self.cluster.get_pod(ref)
        except ClusterError as e:
            return BindRefused(reason=f"reading pod {ref}: {e}")
        except RequestError as e:
            return BindRefused(reason=str(e))
        if pod is None:
            return BindRefused(reason=(
                f"pod {ref} (uid {ref.uid}) not found"
                + (" (in cluster-file mode a pod is known from its filter call)"
                   if self.cluster.mode == "file" else "")))
        if pod.ref.uid not in ("", ref.uid):
            return BindRefused(reason=f"pod {ref} now has uid {pod.ref.uid}, not {ref.uid} "
                                      "(it was recreated)")
        if pod.node:
            if pod.node != node:
                self.metrics.bind_conflicts.inc()
                return BindRefused(reason=f"pod {ref} is already bound to {pod.node}")
            h = pod.holding()
            if h is not None:
                self.state.hold(h)
            log.info("bind retry pod=%s node=%s (already bound)", ref, node)
            return Bound(pod=ref, node=node, holding=h, retry=True)
        request = pod.request
        if request.empty:
            return await self._write(ref, node, None)
        if self.patience is not None:
            request = self.patience.request_at(ref.uid, request, self.patience.clock())
        async with self.lock(node):
            chosen = choose(self.state, node, request, ref)
            if isinstance(chosen, BindRefused):
                self.metrics.bind_conflicts.inc()
                log.warning("bind conflict pod=%s node=%s reason=%r", ref, node, chosen.reason)
                return chosen
            self.state.reserve(chosen)
        return await self._write(ref, node, chosen)

    async def _write(self, ref: PodRef, node: str, chosen: Holding | None) -> BindResult:
        try:
            async with asyncio.timeout(self.cfg.bind_timeout_s):
                value = None if chosen is None else encode_gpu_sets(dict(chosen.sets))
                await self.cluster.bind(ref, node, value)
        except (ClusterError, TimeoutError) as e:
            self.state.unreserve(ref.uid)
            if isinstance(e, ClusterError) and e.conflict:
                self.metrics.bind_conflicts.inc()
            why = str(e) or f"timed out after {self.cfg.bind_timeout_s:g}s"
            log.warning("bind failed pod=%s node=%s error=%r", ref, node, why)
            return BindRefused(reason=f"binding pod {ref} to {node}: {why}")
        except BaseException:
            self.state.unreserve(ref.uid)
            raise
        if chosen is None:
            log.info("bound pod=%s node=%s gpus=none", ref, node)
            return Bound(pod=ref, node=node)
        held = self.state.commit(ref.uid, "bind")
        log.info("bound pod=%s node=%s gpus=%s", ref, node,
                 ";".join(f"{c}={','.join(ids)}" for c, ids in chosen.sets))
        return Bound(pod=ref, node=node, holding=held)


async def handle(binder: Binder, data: Any) -> web.Response:
    args = decode_binding_args(data)
    result = await binder.bind(args)
    answer: ExtenderBindingResult = {"Error": "" if isinstance(result, Bound) else result.reason}
    return json_response(answer)
