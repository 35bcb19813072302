"""filter: which candidate nodes can give the pod a set meeting its constraint."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter, countOf
from typing import Any, Final

from aiohttp import web

from extender.context import CONTEXT
from extender.plan import Rejection, Verdict
from extender.request import GpuRequest, RequestError, pod_ref
from extender.state import UNKNOWN, Answer, ClusterState, Key
from extender.wire import (
    ExtenderFilterResult,
    FilterArgs,
    decode_extender_args,
    decode_json,
    escape_names,
    json_response,
    plain_names,
)

__all__ = ["UNKNOWN_NODE", "FilterOutcome", "decide", "encode", "encode_names", "handle"]

log = logging.getLogger(__name__)

#: The message for a node whose topology is not known (yet).
UNKNOWN_NODE: Final = UNKNOWN.reason

_REASON = attrgetter("reason")

# A candidate's outcome, one byte per candidate: translate() to a 0/1 selector for
# compress() and count() run at C speed over the whole candidate list.
_PASSED, _FAILED, _UNRESOLVABLE, _UNKNOWN = 0, 1, 2, 3
_PASSES: Final = bytes.maketrans(b"\0\1\2\3", b"\1\0\0\0")
_FAILS: Final = bytes.maketrans(b"\0\1\2\3", b"\0\1\0\1")  # unknown nodes fail alone
_UNRESOLVABLES: Final = bytes.maketrans(b"\0\1\2\3", b"\0\0\1\0")


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterOutcome:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]


class _Judged:
    """Per pod shape and node key: the outcome code, and for a rejection the verdict and
    its reason as a JSON fragment ``":"<reason>","`` (see :func:`_members`)."""

    __slots__ = ("codes", "fragments", "rejections")

    def __init__(self) -> None:
        self.codes: dict[Key, int] = {}
        self.rejections: dict[Key, Rejection] = {}
        self.fragments: dict[Key, str] = {}

    def add(self, key: Key, verdict: Verdict) -> None:
        if isinstance(verdict, Rejection):
            self.rejections[key] = verdict
            self.fragments[key] = f'":{json.dumps(verdict.reason)},"'
            self.codes[key] = (_UNKNOWN if key is None
                               else _UNRESOLVABLE if verdict.unresolvable else _FAILED)
        else:
            self.codes[key] = _PASSED


def _judge(
    state: ClusterState, request: GpuRequest, names: list[str]
) -> tuple[_Judged, list[Key], bytes]:
    """Every candidate's outcome code: a dict lookup for its key and one for the code."""
    judged = state.table(request, _Judged)
    keys = state.keys_of(names)
    try:
        codes = bytes(map(judged.codes.__getitem__, keys))
    except KeyError:  # node states not judged for this pod shape yet
        state.judge_new(request, names, keys, judged.codes, judged.add)
        codes = bytes(map(judged.codes.__getitem__, keys))
    return judged, keys, codes


def decide(state: ClusterState, request: GpuRequest, names: list[str]) -> FilterOutcome:
    """Judge every candidate: a dict lookup per node, verdicts shared by node state.

    A pod without GPUs passes everywhere. A node with no known topology goes to
    ``failed`` alone. A node that could not take the pod even with every GPU free goes
    to ``unresolvable`` (preemption cannot help there).
    """
    if request.empty:
        return FilterOutcome(passed=list(names), failed={}, unresolvable={})
    judged, keys, codes = _judge(state, request, names)

    def reasons(selector: bytes) -> dict[str, str]:
        bad = map(judged.rejections.__getitem__, compress(keys, selector))
        return dict(zip(compress(names, selector), map(_REASON, bad), strict=True))

    return FilterOutcome(
        passed=list(compress(names, codes.translate(_PASSES))),
        failed=reasons(codes.translate(_FAILS)),
        unresolvable=reasons(codes.translate(_UNRESOLVABLES)) if _UNRESOLVABLE in codes
        else {},
    )


def encode_names(state: ClusterState, request: GpuRequest, names: list[str]) -> Answer | None:
    """The answer to a ``NodeNames`` request, encoded from pre-encoded fragments.

    The same bytes as ``json.dumps(encode(args, decide(...)))`` (tested), without a dict
    per answer or escaping a reason per node: the candidates' names are joined as they
    are when they need no escaping (node names never do), and every rejection's reason
    was encoded once, when its verdict was made. None for what it does not do: a pod
    without GPUs, or a name given twice (``FailedNodes`` is a map).
    """
    if request.empty:
        return None
    judged, keys, codes = _judge(state, request, names)
    fails = codes.translate(_FAILS)
    passed = list(compress(names, codes.translate(_PASSES)))
    failed = list(compress(names, fails))
    failed_fragments = list(map(judged.fragments.__getitem__, compress(keys, fails)))
    unresolvable: list[str] = []
    unresolvable_fragments: list[str] = []
    if _UNRESOLVABLE in codes:
        sel = codes.translate(_UNRESOLVABLES)
        unresolvable = list(compress(names, sel))
        unresolvable_fragments = list(map(judged.fragments.__getitem__, compress(keys, sel)))
    if len(set(failed)) != len(failed) or len(set(unresolvable)) != len(unresolvable):
        return None
    if not plain_names(names):
        passed = escape_names(passed)
        failed = escape_names(failed)
        unresolvable = escape_names(unresolvable)
    body = "".join([
        '{"Nodes":null,"NodeNames":[', '"' if passed else "", '","'.join(passed),
        '"],"FailedNodes":{' if passed else '],"FailedNodes":{',
        *_members(failed, failed_fragments), '},"FailedAndUnresolvableNodes":{',
        *_members(unresolvable, unresolvable_fragments), '},"Error":""}',
    ])
    return Answer(body=body.encode(), counts=(
        len(passed), codes.count(_FAILED), codes.count(_UNKNOWN), len(unresolvable)))


def _members(names: list[str], fragments: list[str]) -> list[str]:
    """The members of a JSON object of strings, as pieces to join: name (escaped),
    fragment ``":"<value>","`` (opening the next name), name, ..., the last fragment cut
    after its value."""
    if not names:
        return []
    parts = [""] * (2 * len(names) + 1)
    parts[0] = '"'
    parts[1::2] = names
    parts[2::2] = fragments
    parts[-1] = parts[-1][:-2]
    return parts


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
        if args.by_name and args.node_list is None:
            fast = encode_names(state, request, args.names)
            if fast is not None:
                return fast
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
    gpu = ext.gpu_request("filter", args.pod)
    if isinstance(gpu, RequestError):
        return json_response(error_result(str(gpu)))  # the scheduler shows it on the pod
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
