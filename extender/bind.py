"""bind: choose the set again on fresh state, then one Binding that records it on the pod.

Binds are asynchronous in kube-scheduler: later pods are filtered while a bind is in
flight. So the chosen set is *reserved* in ``ClusterState`` before any write; filter
and other binds see those GPUs as taken. The per-node lock covers the choice and the
reservation (synchronous, no I/O); the write runs outside it, so a slow API server does
not stall other binds on the node, and the reservation is what keeps their sets apart.
On failure the reservation is released; on success it becomes a holding. The write is
one call of the cluster (in API mode one Binding carrying the assigned set; see
``extender.kube``).

A bind's outcome is a value: :class:`Bound` or :class:`BindRefused` with the reason
(the scheduler shows it, and retries the pod).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from extender.cluster import Cluster, ClusterError
from extender.config import ExtenderConfig
from extender.encoding import json_response
from extender.metrics import Metrics
from extender.patience import Patience
from extender.plan import Plan, place
from extender.pods import Pod, RecentPods
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
    """Per-node locks, one bind at a time per pod, and the bind's time budget.

    The pod's GPU request comes from filter (``RecentPods``: the scheduler filters a pod
    before it binds it); only a pod this process has not seen (it restarted in between)
    is read from the cluster. The whole bind, waiting for the node's lock, choosing the
    set and the API call, has ``bind_timeout_s``; a bind that takes more than
    ``slow_bind_s`` is logged with the part that took the time.
    """

    def __init__(
        self, cluster: Cluster, state: ClusterState, cfg: ExtenderConfig, metrics: Metrics,
        *, recent: RecentPods | None = None, slow_bind_s: float = 0.2,
        patience: Patience | None = None,
    ) -> None:
        self.cluster = cluster
        #: Delay scheduling: a pod waiting for its best set is refused a worse one here
        #: too (None: every pod is judged as it is).
        self.patience = patience
        self.state = state
        self.cfg = cfg
        self.metrics = metrics
        self.recent = recent if recent is not None else RecentPods()
        self.slow_bind_s = slow_bind_s
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
        timing = _Timing()
        try:
            try:
                async with asyncio.timeout(self.cfg.bind_timeout_s):
                    result = await self._bind(ref, args.node, timing)
            except TimeoutError:
                self.state.unreserve(ref.uid)
                result = BindRefused(reason=(
                    f"binding pod {ref} to {args.node}: timed out after "
                    f"{self.cfg.bind_timeout_s:g}s ({timing.describe()})"))
            fut.set_result(result)
        except BaseException as e:
            fut.set_result(BindRefused(reason=f"bind interrupted: {e!r}"))
            raise
        finally:
            self._inflight.pop(ref.uid, None)
        self._account(ref, args.node, result, timing)
        return result

    def _account(self, ref: PodRef, node: str, result: BindResult, timing: _Timing) -> None:
        self.metrics.binds.labels("bound" if isinstance(result, Bound) else "error").inc()
        for phase, seconds in timing.phases.items():
            self.metrics.bind_phases.labels(phase).observe(seconds)
        if timing.total() > self.slow_bind_s:
            log.warning("bind slow pod=%s node=%s %s result=%s", ref, node, timing.describe(),
                        "bound" if isinstance(result, Bound) else "refused")

    async def _bind(self, ref: PodRef, node: str, timing: _Timing) -> BindResult:
        if not self.cluster.is_leader():
            return BindRefused(reason="this extender replica is not the leader; the scheduler "
                                      "will retry")
        pod = self.recent.get(ref.uid)
        if pod is None or (pod.ref.namespace, pod.ref.name) != (ref.namespace, ref.name):
            found = await self._read(ref, node, timing)
            if not isinstance(found, Pod):
                return found
            pod = found
        request = pod.request
        if request.empty:
            return await self._write(ref, node, None, timing)
        if self.patience is not None:
            request = self.patience.request_at(ref.uid, request, self.patience.clock())
        started = time.perf_counter()
        async with self.lock(node):
            timing.add("lock", time.perf_counter() - started)
            started = time.perf_counter()
            chosen = choose(self.state, node, request, ref)
            if isinstance(chosen, Holding):
                self.state.reserve(chosen)
            timing.add("choose", time.perf_counter() - started)
        if isinstance(chosen, BindRefused):
            self.metrics.bind_conflicts.inc()
            log.warning("bind conflict pod=%s node=%s reason=%r", ref, node, chosen.reason)
            return chosen
        return await self._write(ref, node, chosen, timing)

    async def _read(self, ref: PodRef, node: str, timing: _Timing) -> Pod | BindResult:
        """The pod from the cluster (not seen in filter), or the bind's result already."""
        started = time.perf_counter()
        try:
            pod = await self.cluster.get_pod(ref)
        except ClusterError as e:
            return BindRefused(reason=f"reading pod {ref}: {e}")
        except RequestError as e:
            return BindRefused(reason=str(e))
        finally:
            timing.add("api", time.perf_counter() - started)
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
        return pod

    async def _write(self, ref: PodRef, node: str, chosen: Holding | None,
                     timing: _Timing) -> BindResult:
        started = time.perf_counter()
        try:
            value = None if chosen is None else encode_gpu_sets(dict(chosen.sets))
            await self.cluster.bind(ref, node, value)
        except ClusterError as e:
            self.state.unreserve(ref.uid)
            if e.conflict:
                self.metrics.bind_conflicts.inc()
            log.warning("bind failed pod=%s node=%s error=%r", ref, node, str(e))
            return BindRefused(reason=f"binding pod {ref} to {node}: {e}")
        except BaseException:
            self.state.unreserve(ref.uid)
            raise
        finally:
            timing.add("api", time.perf_counter() - started)
        self.recent.forget(ref.uid)
        if chosen is None:
            log.info("bound pod=%s node=%s gpus=none", ref, node)
            return Bound(pod=ref, node=node)
        held = self.state.commit(ref.uid, "bind")
        log.info("bound pod=%s node=%s gpus=%s", ref, node,
                 ";".join(f"{c}={','.join(ids)}" for c, ids in chosen.sets))
        return Bound(pod=ref, node=node, holding=held)


class _Timing:
    """Seconds per phase of one bind, for its log line and the phase histogram."""

    __slots__ = ("phases", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds

    def total(self) -> float:
        return time.perf_counter() - self.started

    def describe(self) -> str:
        parts = [f"total_ms={1000 * self.total():.1f}"]
        parts += [f"{p}_ms={1000 * s:.1f}" for p, s in self.phases.items()]
        return " ".join(parts)


async def handle(binder: Binder, data: Any) -> web.Response:
    args = decode_binding_args(data)
    result = await binder.bind(args)
    answer: ExtenderBindingResult = {"Error": "" if isinstance(result, Bound) else result.reason}
    return json_response(answer)
