"""filter: which candidate nodes can give the pod a set meeting its constraint."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter, countOf, not_
from typing import Any, Final

from aiohttp import web

from extender.context import CONTEXT
from extender.plan import Rejection
from extender.request import GpuRequest, RequestError, pod_ref
from extender.state import UNKNOWN, Answer, ClusterState
from extender.wire import (
    ExtenderFilterResult,
    FilterArgs,
    decode_extender_args,
    decode_json,
    json_response,
)

__all__ = ["UNKNOWN_NODE", "FilterOutcome", "decide", "encode", "handle"]

log = logging.getLogger(__name__)

#: The message for a node whose topology is not known (yet).
UNKNOWN_NODE: Final = UNKNOWN.reason

_OK = attrgetter("ok")
_UNRESOLVABLE = attrgetter("unresolvable")
_REASON = attrgetter("reason")


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterOutcome:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]


def decide(state: ClusterState, request: GpuRequest, names: list[str]) -> FilterOutcome:
    """Judge every candidate: a dict lookup per node, verdicts shared by node state.

    A pod without GPUs passes everywhere. A node with no known topology goes to
    ``failed`` alone. A node that could not take the pod even with every GPU free goes
    to ``unresolvable`` (preemption cannot help there).
    """
    if request.empty:
        return FilterOutcome(passed=list(names), failed={}, unresolvable={})
    _, verdicts = state.verdicts_for(request, names)
    oks = list(map(_OK, verdicts))
    passed = list(compress(names, oks))
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    if len(passed) != len(names):
        bad = list(map(not_, oks))
        bad_names = list(compress(names, bad))
        bad_verdicts: list[Rejection] = list(compress(verdicts, bad))  # type: ignore[arg-type]
        if any(map(_UNRESOLVABLE, bad_verdicts)):
            for name, v in zip(bad_names, bad_verdicts, strict=True):
                (unresolvable if v.unresolvable else failed)[name] = v.reason
        else:
            failed = dict(zip(bad_names, map(_REASON, bad_verdicts), strict=True))
    return FilterOutcome(passed=passed, failed=failed, unresolvable=unresolvable)


def encode(args: FilterArgs, out: FilterOutcome) -> ExtenderFilterResult:
    """Answer in the form asked: ``NodeNames`` for names, ``Nodes`` for a NodeList."""
    nodes: dict[str, Any] | None = None
    if args.node_list is not None:
        keep = set(out.passed)
        nodes = {k: v for k, v in args.node_list.items() if k != "items"}
        nodes["items"] = [n for n in (args.node_list.get("items") or [])
                          if n["metadata"]["name"] in keep]
    return {
        "Nodes": nodes,
        "NodeNames": out.passed if args.by_name else None,
        "FailedNodes": out.failed,
        "FailedAndUnresolvableNodes": out.unresolvable,
        "Error": "",
    }


def error_result(message: str) -> ExtenderFilterResult:
    return {"Nodes": None, "NodeNames": None, "FailedNodes": {},
            "FailedAndUnresolvableNodes": {}, "Error": message}


def _answer(state: ClusterState, request: GpuRequest, args: FilterArgs) -> Answer:
    def compute() -> Answer:
        out = decide(state, request, args.names)
        unknown = countOf(out.failed.values(), UNKNOWN_NODE) if out.failed else 0
        return Answer(
            body=json.dumps(encode(args, out), separators=(",", ":")).encode(),
            counts=(len(out.passed), len(out.failed) - unknown, unknown,
                    len(out.unresolvable)),
        )

    if not args.by_name or args.node_list is not None:
        return compute()
    return state.answer("filter", request, args.names, compute)


async def handle(request: web.Request, body: bytes) -> web.Response:
    ext = request.app[CONTEXT]
    args = decode_extender_args(decode_json(body))
    try:
        gpu = GpuRequest.from_pod(args.pod, ext.cfg.resource_names)
    except RequestError as e:
        ext.metrics.pod_errors.labels("filter").inc()
        log.info("filter rejected pod=%s error=%r", pod_ref(args.pod), str(e))
        return json_response(error_result(str(e)))
    if not gpu.empty:
        ext.cluster.note_pod(args.pod)
    answer = _answer(ext.state, gpu, args)
    passed, failed, unknown, unresolvable = answer.counts
    d = ext.metrics.decisions
    d.labels("passed").inc(passed)
    d.labels("failed").inc(failed)
    d.labels("unknown").inc(unknown)
    d.labels("unresolvable").inc(unresolvable)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("filter pod=%s request=%s nodes=%d passed=%d failed=%d unknown=%d "
                  "unresolvable=%d", pod_ref(args.pod), gpu.describe(), len(args.names),
                  passed, failed, unknown, unresolvable)
    return web.Response(body=answer.body, content_type="application/json")
