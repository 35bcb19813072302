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

On the wire (``extender.encoding.host_priorities``) every score is sent less the lowest
among the candidates, and hosts at that lowest are left out: the scheduler adds nothing
for a host not listed, so its choice is the same, and the list it decodes on its
scheduling cycle is as long as the hosts that rank above the worst only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from itertools import compress
from typing import Any, Final

from aiohttp import web

from extender.context import Extender
from extender.decisions import Answer, Decisions, Key
from extender.encoding import (
    SCORE_TAILS,
    escape_names,
    host_priorities,
    host_priorities_body,
    plain_names,
    scores_body,
)
from extender.plan import Plan, Verdict
from extender.request import GpuRequest, RequestError
from extender.state import ClusterState
from extender.wire import decode_extender_args
from topology.names import MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY

__all__ = [
    "WEIGHTS",
    "Top",
    "answer",
    "encode",
    "handle",
    "host_priorities",
    "normalize",
    "score",
    "scores",
    "scores_in_slices",
    "top_scored",
]

log = logging.getLogger(__name__)

#: (M, R, A, L) weights of the formula above.
WEIGHTS = (0.40, 0.30, 0.15, 0.15)
#: More candidates than twice this are ranked in slices (the event loop runs between
#: them) and the answer is encoded in a worker thread.
SLICE: Final = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Top:
    """The first best candidate: its index in the request (-1: none) and its score."""

    index: int
    score: int


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


def _judge(
    decisions: Decisions, request: GpuRequest, names: list[str], ranked: _Ranked,
    keys: list[Key] | None = None,
) -> tuple[list[Key], set[Key]]:
    """Every candidate's key (looked up unless given) and the distinct ones, each with a
    plan in ``ranked``."""
    if keys is None:
        keys = decisions.keys_of(names)
    distinct = set(keys)
    if not distinct <= ranked.seen:
        decisions.judge_new(request, names, keys, ranked.seen, ranked.add)
    return keys, distinct


def _rank(
    decisions: Decisions, request: GpuRequest, names: list[str]
) -> tuple[list[Key], set[Key], _Ranked]:
    """Every candidate's key, and the scores by key of those keys; computed once per
    node state while the best figures among the candidates stay the same."""
    ranked = decisions.table(request, _Ranked)
    keys, distinct = _judge(decisions, request, names, ranked)
    _score(ranked, distinct)
    return keys, distinct, ranked


def _score(ranked: _Ranked, distinct: set[Key]) -> None:
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
        ranked.tails[k] = SCORE_TAILS[value]


async def scores_in_slices(
    state: ClusterState, request: GpuRequest, names: list[str], *, decisions: Decisions
) -> list[int]:
    """:func:`scores`, judging :data:`SLICE` candidates at a time and letting the event
    loop run in between; normalized over all the candidates, as one call would."""
    if request.empty:
        return [MIN_EXTENDER_PRIORITY] * len(names)
    ranked = decisions.table(request, _Ranked)
    keys: list[Key] = []
    distinct: set[Key] = set()
    for i in range(0, len(names), SLICE):
        part, seen = _judge(decisions, request, names[i:i + SLICE], ranked)
        keys += part
        distinct |= seen
        await asyncio.sleep(0)
    _score(ranked, distinct)
    values: list[int] = []
    for i in range(0, len(keys), SLICE):
        values += map(ranked.scores.__getitem__, keys[i:i + SLICE])
        await asyncio.sleep(0)
    return values


def scores(
    state: ClusterState, request: GpuRequest, names: list[str], *,
    decisions: Decisions | None = None,
) -> list[int]:
    """The score of every candidate, in request order; computed once per node state.

    Pass the app's ``decisions`` to share verdicts across calls (a throwaway one is
    made otherwise)."""
    if request.empty:
        return [MIN_EXTENDER_PRIORITY] * len(names)
    if decisions is None:
        decisions = Decisions(state)
    elif decisions.state is not state:
        raise ValueError("these decisions belong to another ClusterState")
    keys, _, ranked = _rank(decisions, request, names)
    return list(map(ranked.scores.__getitem__, keys))


def top_scored(
    decisions: Decisions, request: GpuRequest, names: list[str], keys: list[Key]
) -> list[str]:
    """Those of ``names`` (whose node keys are ``keys``) at the highest score among them:
    what :func:`scores` would rank first, without looking the keys up again."""
    if request.empty:
        return list(names)
    ranked = decisions.table(request, _Ranked)
    _, distinct = _judge(decisions, request, names, ranked, keys)
    _score(ranked, distinct)
    scores = ranked.scores
    top = max(map(scores.__getitem__, distinct), default=0)
    best = {k for k in distinct if scores[k] == top}
    return list(compress(names, map(best.__contains__, keys)))


def encode(names: list[str], values: list[int]) -> bytes:
    """The HostPriorityList as JSON (``extender.encoding.scores_body``)."""
    return scores_body(names, values)


def answer(decisions: Decisions, request: GpuRequest, names: list[str]) -> Answer[Top]:
    """The encoded answer, and the first best candidate."""
    if request.empty:
        values = [MIN_EXTENDER_PRIORITY] * len(names)
        return Answer(body=encode(names, values),
                      counts=Top(index=0 if names else -1, score=0))
    keys, distinct, ranked = _rank(decisions, request, names)
    scores = ranked.scores
    best = max(map(scores.__getitem__, distinct), default=0)
    floor = min(map(scores.__getitem__, distinct), default=0)
    # Per candidate, its score less the lowest, one byte each (scores are 0..10): the
    # hosts to send are the non-zero bytes, their scores those bytes (see the module doc).
    shifted = {k: scores[k] - floor for k in distinct}
    sent = bytes(map(shifted.__getitem__, keys))
    top = sent.index(best - floor) if sent else -1
    hosts = list(compress(names, sent))
    plain = hosts if plain_names(hosts) else escape_names(hosts)
    tails = list(map(SCORE_TAILS.__getitem__, sent.translate(None, b"\0")))
    return Answer(body=host_priorities_body(plain, tails), counts=Top(index=top, score=best))


async def handle(ext: Extender, data: Any) -> web.Response:
    args = decode_extender_args(data)
    pod = ext.pod("prioritize", args.pod, need_uid=False)
    # An invalid pod has no Error field here (the filter told it): score nothing.
    gpu = GpuRequest() if isinstance(pod, RequestError) else pod.request
    if len(args.names) > 2 * SLICE:
        values = await scores_in_slices(ext.state, gpu, args.names, decisions=ext.decisions)
        body = await ext.intake.run(scores_body, args.names, values)
        best = max(values, default=0)
        result = Answer(body=body, counts=Top(index=values.index(best) if values else -1,
                                              score=best))
    else:
        result = ext.decisions.answer("prioritize", gpu, args.names,
                                      lambda: answer(ext.decisions, gpu, args.names))
    if log.isEnabledFor(logging.DEBUG):
        top = result.counts
        log.debug("prioritize pod=%s nodes=%d top=%s",
                  "invalid" if isinstance(pod, RequestError) else pod.ref, len(args.names),
                  f"{args.names[top.index]}:{top.score}" if top.index >= 0 else None)
    return web.Response(body=result.body, content_type="application/json")
