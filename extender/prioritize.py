"""prioritize: 0..10 per node from the set it would give and what that leaves behind.

The formula (one place, :func:`score`)::

    score = round(10 × (0.40·M + 0.30·R + 0.15·A + 0.15·L))

* ``M`` (min-link met): 1 when every container's set meets the pod's
  ``gputopo.io/min-link`` (or the pod asks none), else 0. A node that gives the preferred
  link always ranks above one that does not.
* ``R`` (ring): the bottleneck bandwidth of the best ring through the node's set
  (the weakest over containers), divided by the best such figure among the candidate
  nodes of this request: what a ring all-reduce gets, relative to the best on offer.
  1 for pods of 1-GPU containers (no links).
* ``A`` (all-to-all): the bandwidth between the GPUs of the set(s), divided by the best
  among the candidates.
* ``L`` (left behind): what the pod leaves behind, 0..1. Three quarters: the class of
  the best link the pod cuts between its GPUs and the free GPUs it leaves, against the
  best link among the free GPUs before it: ``1 - rank(cut) / rank(best)`` (cutting only
  SYS links costs nothing; leaving the last GPU of an NVLink pair alone costs all). One
  quarter: the share of the free GPUs' bandwidth (less the pod's own) that stays among the
  GPUs left. 1 for an exact fit, so partly used nodes rank above empty ones of the same
  quality and whole machines stay free for whole-machine jobs.

For pods of 1-GPU containers only, ``R`` and ``A`` carry nothing (no links), so their
weight moves to ``L``: ``score = round(10 × (0.40·M + 0.60·L))``; a 1-GPU pod goes where
it breaks the least: an orphan GPU before the half of an NVLink pair.

Nodes that cannot take the pod, or have no known topology, score 0; a pod without GPUs
scores 0 everywhere (the extender adds nothing). The scheduler adds
``score × weight × 10`` to its own total.
"""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web

from extender.context import CONTEXT
from extender.plan import Plan, Verdict
from extender.request import GpuRequest, RequestError, pod_ref
from extender.state import Answer, ClusterState, Key
from extender.wire import HostPriority, decode_extender_args, decode_json, escape_names, plain_names
from topology.names import MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY

__all__ = ["WEIGHTS", "encode", "handle", "host_priorities", "normalize", "score", "scores"]

log = logging.getLogger(__name__)

#: (M, R, A, L) weights of the formula above.
WEIGHTS = (0.40, 0.30, 0.15, 0.15)


def normalize(x: float) -> int:
    """A fraction 0..1 to an integer priority 0..10, rounding half up, clamped."""
    value = int(x * MAX_EXTENDER_PRIORITY + 0.5)
    return max(MIN_EXTENDER_PRIORITY, min(MAX_EXTENDER_PRIORITY, value))


def score(plan: Plan, best_ring_gbps: float, best_pair_gbps: float) -> int:
    """The formula in the module docstring for one node's plan."""
    m = 1.0 if plan.meets_min_link else 0.0
    r = 1.0 if plan.ring_gbps is None or best_ring_gbps <= 0 else plan.ring_gbps / best_ring_gbps
    a = 1.0 if best_pair_gbps <= 0 else plan.pair_gbps / best_pair_gbps
    wm, wr, wa, wl = WEIGHTS
    if plan.ring_gbps is None:
        # 1-GPU containers only: no links to rank, so what is left behind decides.
        wr, wa, wl = 0.0, 0.0, wr + wa + wl
    return normalize(wm * m + wr * r + wa * a + wl * plan.left_ratio)


class _Ranked:
    """Per pod shape and node key: the plan and its figures, and the scores (with their
    JSON tails) for the best figures last on offer."""

    __slots__ = ("best", "pairs", "plans", "rings", "scores", "seen", "tails")

    def __init__(self) -> None:
        self.seen: set[Key] = set()
        self.plans: dict[Key, Plan] = {}
        self.rings: dict[Key, float] = {}
        self.pairs: dict[Key, float] = {}
        self.best: tuple[float, float] | None = None
        self.scores: dict[Key, int] = {}
        self.tails: dict[Key, str] = {}

    def add(self, key: Key, verdict: Verdict) -> None:
        self.seen.add(key)
        if isinstance(verdict, Plan):
            self.plans[key] = verdict
            self.pairs[key] = verdict.pair_gbps
            if verdict.ring_gbps is not None:
                self.rings[key] = verdict.ring_gbps


def _rank(
    state: ClusterState, request: GpuRequest, names: list[str]
) -> tuple[list[Key], set[Key], _Ranked]:
    """Every candidate's key, and the scores by key of those keys; computed once per
    node state while the best figures among the candidates stay the same."""
    ranked = state.table(request, _Ranked)
    keys = state.keys_of(names)
    distinct = set(keys)
    if not distinct <= ranked.seen:
        state.judge_new(request, names, keys, ranked.seen, ranked.add)
    rings, pairs = ranked.rings, ranked.pairs
    best = (max(map(rings.__getitem__, distinct.intersection(rings)), default=0.0),
            max(map(pairs.__getitem__, distinct.intersection(pairs)), default=0.0))
    if best != ranked.best:
        ranked.best = best
        ranked.scores.clear()
        ranked.tails.clear()
    for k in distinct.difference(ranked.scores):
        plan = ranked.plans.get(k)
        value = MIN_EXTENDER_PRIORITY if plan is None else score(plan, *best)
        ranked.scores[k] = value
        ranked.tails[k] = _TAILS[value]
    return keys, distinct, ranked


def scores(state: ClusterState, request: GpuRequest, names: list[str]) -> list[int]:
    """The score of every candidate, in request order; computed once per node state."""
    if request.empty:
        return [MIN_EXTENDER_PRIORITY] * len(names)
    keys, _, ranked = _rank(state, request, names)
    return list(map(ranked.scores.__getitem__, keys))


def host_priorities(names: list[str], values: list[int]) -> list[HostPriority]:
    return [{"Host": n, "Score": s} for n, s in zip(names, values, strict=True)]


# The HostPriorityList is written as: '[{"Host":"' name tail name tail ... where a tail
# closes one entry and opens the next; the last one closes the list instead.
_OPEN: Final = '[{"Host":"'
_TAILS: Final = tuple(f'","Score":{s}}},{{"Host":"' for s in range(MAX_EXTENDER_PRIORITY + 1))
_CUT: Final = len(',{"Host":"')


def _body(names: list[str], tails: list[str]) -> bytes:
    """``names`` (plain or escaped) and their tails as the JSON HostPriorityList."""
    if not names:
        return b"[]"
    parts = [""] * (2 * len(names) + 1)
    parts[0] = _OPEN
    parts[1::2] = names
    parts[2::2] = tails
    parts[-1] = parts[-1][:-_CUT] + "]"
    return "".join(parts).encode()


def encode(names: list[str], values: list[int]) -> bytes:
    """The HostPriorityList as JSON: the same bytes as ``json.dumps`` of
    :func:`host_priorities` (compact), without a dict per node."""
    plain = names if plain_names(names) else escape_names(names)
    return _body(plain, list(map(_TAILS.__getitem__, values)))


def _answer(state: ClusterState, request: GpuRequest, names: list[str]) -> Answer:
    """The encoded answer; counts: the first best node's index and its score."""
    if request.empty:
        values = scores(state, request, names)
        return Answer(body=encode(names, values), counts=(0, 0) if names else (-1, 0))
    keys, distinct, ranked = _rank(state, request, names)
    tails = list(map(ranked.tails.__getitem__, keys))
    best = max(map(ranked.scores.__getitem__, distinct), default=0)
    top = tails.index(_TAILS[best]) if tails else -1
    plain = names if plain_names(names) else escape_names(names)
    return Answer(body=_body(plain, tails), counts=(top, best))


async def handle(request: web.Request, body: bytes) -> web.Response:
    ext = request.app[CONTEXT]
    args = decode_extender_args(decode_json(body))
    gpu = ext.gpu_request("prioritize", args.pod)
    if isinstance(gpu, RequestError):
        gpu = GpuRequest()  # no Error field here; the filter told the pod. Score nothing.
    answer = ext.state.answer("prioritize", gpu, args.names,
                              lambda: _answer(ext.state, gpu, args.names))
    if log.isEnabledFor(logging.DEBUG):
        top, best = answer.counts
        log.debug("prioritize pod=%s nodes=%d top=%s", pod_ref(args.pod), len(args.names),
                  f"{args.names[top]}:{best}" if top >= 0 else None)
    return web.Response(body=answer.body, content_type="application/json")
