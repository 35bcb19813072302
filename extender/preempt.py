"""preempt: for pods whose link constraint is required, the fewest victims that free a good set.

kube-scheduler proposes, per node, victims that would make room by count. Freeing
*some* GPUs is not enough for a ``required`` pod: the freed and free GPUs together must
hold a set meeting its min-link. For each node this keeps the victims that hold no GPUs
known to the extender (the scheduler chose them for other resources), and among those
that hold GPUs the smallest subset (then the one freeing fewest GPUs; then by UID, to
be deterministic) whose release gives the pod a plan. A node where even all proposed victims would
not free a good set is dropped. Pods without a required constraint, or without GPUs,
get the scheduler's proposal back unchanged. Victims are only ever removed, never
added, so the scheduler's priority and PDB rules still hold; ``NumPDBViolations`` is
passed through (an upper bound once victims are removed).

A pod the filter passed over while it waits for its best set (``extender.patience``)
gets no candidates: it could run now on a worse set, and nobody is evicted for a wait
the pod chose.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from extender.context import Extender
from extender.decisions import Decisions, Key
from extender.encoding import json_response
from extender.plan import Plan, Verdict, place
from extender.request import GpuRequest, RequestError
from extender.state import ClusterState, NodeState
from extender.wire import ExtenderPreemptionResult, MetaVictims, decode_preemption_args

__all__ = ["MAX_SUBSETS", "decide", "handle"]

log = logging.getLogger(__name__)

#: Victim subsets tried per node before settling for all GPU-holding victims.
MAX_SUBSETS = 4096


def decide(
    state: ClusterState,
    request: GpuRequest,
    victims: dict[str, tuple[tuple[str, ...], int]],
    *, decisions: Decisions | None = None,
) -> dict[str, MetaVictims]:
    """The candidates to keep, each with its (possibly fewer) victims."""
    if request.empty or not request.required:
        return {node: _meta(uids, pdb) for node, (uids, pdb) in victims.items() if uids}
    cache = (decisions or Decisions(state)).verdicts(request)
    out: dict[str, MetaVictims] = {}
    for node_name, (uids, pdb) in victims.items():
        node = state.nodes.get(node_name)
        if node is None or not uids:
            continue
        holding_gpus: list[tuple[str, int]] = []
        others: list[str] = []
        for uid in uids:
            h = state.holdings.get(uid)
            mask = node.gpus.mask_of_ids(h.ids) if h is not None and h.node == node_name else 0
            if mask:
                holding_gpus.append((uid, mask))
            else:
                others.append(uid)
        plan_with = functools.partial(_plan_with, state, node, request, cache)
        if plan_with(0) is not None:
            # The node already fits our view; the scheduler's victims are for its count.
            out[node_name] = _meta(uids, pdb)
            continue
        chosen = _fewest(holding_gpus, plan_with)
        if chosen is None:
            log.info("preempt dropped node=%s reason=%r", node_name,
                     "no subset of the proposed victims frees a set meeting min-link")
            continue
        keep = tuple(others) + chosen
        if keep:
            out[node_name] = _meta(keep, pdb)
    return out


def _plan_with(
    state: ClusterState,
    node: NodeState, request: GpuRequest, cache: dict[Key, Verdict], freed: int
) -> Plan | None:
    """The pod's plan on ``node`` if the GPUs of ``freed`` were free too."""
    free = (node.free_mask | freed) & node.full_mask
    key = state.key_of(node.topology.fingerprint, free)
    v = cache.get(key)
    if v is None:
        v = cache[key] = place(node.allocator, free, request)
    return v if isinstance(v, Plan) else None


def _fewest(
    holders: list[tuple[str, int]], plan_with: Callable[[int], Plan | None]
) -> tuple[str, ...] | None:
    tried = 0
    for k in range(1, len(holders) + 1):
        found: list[tuple[int, str, tuple[str, ...]]] = []
        for combo in itertools.combinations(holders, k):
            tried += 1
            if tried > MAX_SUBSETS:
                everything = 0
                for _, m in holders:
                    everything |= m
                return tuple(u for u, _ in holders) if plan_with(everything) else None
            freed = 0
            for _, m in combo:
                freed |= m
            if plan_with(freed) is not None:
                found.append((bin(freed).count("1"), ",".join(u for u, _ in combo),
                              tuple(u for u, _ in combo)))
        if found:
            return min(found)[2]
    return None


def _meta(uids: tuple[str, ...], pdb: int) -> MetaVictims:
    return {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb}


async def handle(ext: Extender, data: Any) -> web.Response:
    args = decode_preemption_args(data)
    pod = ext.pod("preempt", args.pod, need_uid=False)
    if isinstance(pod, RequestError):
        # No Error field in the preemption result: offer no candidates (nothing evicted).
        result: ExtenderPreemptionResult = {"NodeNameToMetaVictims": {}}
        return json_response(result)
    uid = pod.ref.uid
    if uid and ext.patience.since(uid) is not None and ext.patience.request_at(
            uid, pod.request, ext.patience.clock()).patient:
        log.info("preempt pod=%s candidates=%d kept=0 (waiting for its best set)", pod.ref,
                 len(args.victims))
        ext.metrics.preempt_nodes.labels("dropped").inc(len(args.victims))
        result = {"NodeNameToMetaVictims": {}}
        return json_response(result)
    kept = decide(ext.state, pod.request, args.victims, decisions=ext.decisions)
    ext.metrics.preempt_nodes.labels("kept").inc(len(kept))
    ext.metrics.preempt_nodes.labels("dropped").inc(len(args.victims) - len(kept))
    log.info("preempt pod=%s candidates=%d kept=%d", pod.ref, len(args.victims), len(kept))
    result = {"NodeNameToMetaVictims": kept}
    return json_response(result)
