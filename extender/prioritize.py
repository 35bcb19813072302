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
* ``L`` (left behind): the bandwidth among the node's free GPUs after this pod, divided
  by the bandwidth of the best set of that many GPUs on the same machine. 1 when what is
  left is as well connected as it could be (an NVLink quad kept whole), lower when the
  pod would split the groups the next pods need; 1 when fewer than 2 GPUs are left.

Nodes that cannot take the pod, or have no known topology, score 0; a pod without GPUs
scores 0 everywhere (the extender adds nothing). The scheduler adds
``score × weight × 10`` to its own total.
"""

from __future__ import annotations

import json
import logging
import re
from itertools import chain

from aiohttp import web

from extender.context import CONTEXT
from extender.plan import Plan
from extender.request import GpuRequest, RequestError, pod_ref
from extender.state import Answer, ClusterState
from extender.wire import HostPriority, decode_extender_args, decode_json
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
    return normalize(wm * m + wr * r + wa * a + wl * plan.left_ratio)


def scores(state: ClusterState, request: GpuRequest, names: list[str]) -> list[int]:
    """The score of every candidate, in request order; computed once per node state."""
    if request.empty:
        return [MIN_EXTENDER_PRIORITY] * len(names)
    keys, verdicts = state.verdicts_for(request, names)
    distinct = dict(zip(keys, verdicts, strict=True))
    plans = [v for v in distinct.values() if isinstance(v, Plan)]
    best_ring = max((p.ring_gbps for p in plans if p.ring_gbps is not None), default=0.0)
    best_pair = max((p.pair_gbps for p in plans), default=0.0)
    # Scores per node state, kept while the best figures on offer stay the same.
    memo = state.scratch.setdefault(("scores", request.shape), {})
    by_key = memo.get((best_ring, best_pair))
    if by_key is None:
        memo.clear()
        by_key = memo[(best_ring, best_pair)] = {}
    for k in distinct.keys() - by_key.keys():
        v = distinct[k]
        by_key[k] = (score(v, best_ring, best_pair) if isinstance(v, Plan)
                     else MIN_EXTENDER_PRIORITY)
    return list(map(by_key.__getitem__, keys))


def host_priorities(names: list[str], values: list[int]) -> list[HostPriority]:
    return [{"Host": n, "Score": s} for n, s in zip(names, values, strict=True)]


_SAFE_NAMES = re.compile(r"[a-z0-9.\-\n]*")
_HOST = '{"Host":"'
_TAILS = tuple(f'","Score":{s}}},' for s in range(MAX_EXTENDER_PRIORITY + 1))


def encode(names: list[str], values: list[int]) -> bytes:
    """The HostPriorityList as JSON. Node names (DNS subdomains) need no escaping, so
    the common case is formatted directly, without a dict per node; anything else goes
    through ``json.dumps``."""
    if names and _SAFE_NAMES.fullmatch("\n".join(names)):
        text = "".join(chain.from_iterable(zip(
            map(_HOST.__add__, names), map(_TAILS.__getitem__, values), strict=True)))
        return ("[" + text[:-1] + "]").encode()
    return json.dumps(host_priorities(names, values), separators=(",", ":")).encode()


async def handle(request: web.Request, body: bytes) -> web.Response:
    ext = request.app[CONTEXT]
    args = decode_extender_args(decode_json(body))
    try:
        gpu = GpuRequest.from_pod(args.pod, ext.cfg.resource_names)
    except RequestError as e:
        # Prioritize has no Error field; the filter already told the pod. Score nothing.
        ext.metrics.pod_errors.labels("prioritize").inc()
        log.info("prioritize ignored pod=%s error=%r", pod_ref(args.pod), str(e))
        gpu = GpuRequest()
    def compute() -> Answer:
        values = scores(ext.state, gpu, args.names)
        top = max(range(len(values)), key=values.__getitem__, default=-1)
        return Answer(body=encode(args.names, values), counts=(top, values[top] if values else 0))

    answer = ext.state.answer("prioritize", gpu, args.names, compute)
    if log.isEnabledFor(logging.DEBUG):
        top, best = answer.counts
        log.debug("prioritize pod=%s nodes=%d top=%s", pod_ref(args.pod), len(args.names),
                  f"{args.names[top]}:{best}" if top >= 0 else None)
    return web.Response(body=answer.body, content_type="application/json")
