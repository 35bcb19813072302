"""filter: which candidate nodes can give the pod a set meeting its constraint.

With delay scheduling (``extender.patience``) a pod waiting for its best set passes only
where it gets that set; the others go to ``FailedAndUnresolvableNodes`` with the reason
(:func:`judge_pod`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter, countOf
from typing import Any, Final

from aiohttp import web

from extender.context import Extender
from extender.decisions import UNKNOWN, Answer, Decisions, Key
from extender.encoding import (
    dumps_chunked,
    escape_names,
    filter_names_body,
    filter_result,
    json_bytes,
    json_response,
    member_run,
    name_run,
    plain_names,
    reason_fragment,
)
from extender.patience import Patience
from extender.plan import Rejection, Verdict
from extender.request import GpuRequest, RequestError
from extender.state import ClusterState
from extender.wire import ExtenderFilterResult, FilterArgs, decode_extender_args

__all__ = [
    "UNKNOWN_NODE",
    "AllPassed",
    "FilterCounts",
    "FilterOutcome",
    "answer",
    "counts_of",
    "decide",
    "decide_in_slices",
    "encode",
    "encode_names",
    "encode_names_keeping",
    "error_result",
    "handle",
    "judge_pod",
    "settle",
]

log = logging.getLogger(__name__)

#: The message for a node whose topology is not known (yet).
UNKNOWN_NODE: Final = UNKNOWN.reason
#: A full-``Nodes`` answer for more candidates than this is encoded in a worker thread.
_LARGE_NODE_LIST: Final = 100
#: More candidates than this are judged in slices (the event loop runs between them) and
#: the answer is encoded in a worker thread.
SLICE: Final = 10_000

_REASON = attrgetter("reason")

# A candidate's outcome, one byte per candidate: translate() to a 0/1 selector for
# compress() and count() run at C speed over the whole candidate list. WAITING: only a
# worse set than the best, for a pod waiting for it (answered as unresolvable).
_PASSED, _FAILED, _UNRESOLVABLE, _UNKNOWN, _WAITING = 0, 1, 2, 3, 4
_PASSES: Final = bytes.maketrans(b"\0\1\2\3\4", b"\1\0\0\0\0")
_FAILS: Final = bytes.maketrans(b"\0\1\2\3\4", b"\0\1\0\1\0")  # unknown nodes fail alone
_UNRESOLVABLES: Final = bytes.maketrans(b"\0\1\2\3\4", b"\0\0\1\0\1")
_WAITINGS: Final = bytes.maketrans(b"\0\1\2\3\4", b"\0\0\0\0\1")


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterOutcome:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    #: Those of ``unresolvable`` that could take the pod, only not with its best set
    #: (the pod waits for it: ``extender.patience``).
    waiting: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterCounts:
    """How many candidates went where (for the metrics)."""

    passed: int
    failed: int
    unknown: int
    unresolvable: int
    #: Could take the pod only with a worse set than its best (answered as unresolvable).
    waiting: int = 0
    #: Passed, but left out for a better-scored candidate (``extender.narrow``).
    outscored: int = 0


class _Judged:
    """Per pod shape and node key: the outcome code, and for a rejection the verdict and
    its reason as a JSON fragment (``extender.encoding.reason_fragment``)."""

    __slots__ = ("codes", "fragments", "rejections")

    def __init__(self) -> None:
        self.codes: dict[Key, int] = {}
        self.rejections: dict[Key, Rejection] = {}
        self.fragments: dict[Key, str] = {}

    def add(self, key: Key, verdict: Verdict) -> None:
        if isinstance(verdict, Rejection):
            self.rejections[key] = verdict
            self.fragments[key] = reason_fragment(verdict.reason)
            self.codes[key] = (_UNKNOWN if key is None else _WAITING if verdict.waiting
                               else _UNRESOLVABLE if verdict.unresolvable else _FAILED)
        else:
            self.codes[key] = _PASSED


def _judge(
    decisions: Decisions, request: GpuRequest, names: list[str]
) -> tuple[_Judged, list[Key], bytes]:
    """Every candidate's outcome code: a dict lookup for its key and one for the code."""
    judged = decisions.table(request, _Judged)
    keys = decisions.keys_of(names)
    try:
        codes = bytes(map(judged.codes.__getitem__, keys))
    except KeyError:  # node states not judged for this pod shape yet
        decisions.judge_new(request, names, keys, judged.codes, judged.add)
        codes = bytes(map(judged.codes.__getitem__, keys))
    return judged, keys, codes


def decide(
    state: ClusterState, request: GpuRequest, names: list[str], *,
    decisions: Decisions | None = None,
) -> FilterOutcome:
    """Judge every candidate: a dict lookup per node, verdicts shared by node state.

    A pod without GPUs passes everywhere. A node with no known topology goes to
    ``failed`` alone. A node that could not take the pod even with every GPU free goes
    to ``unresolvable`` (preemption cannot help there). Pass the app's ``decisions`` to
    share verdicts across calls (a throwaway one is made otherwise).
    """
    if request.empty:
        return FilterOutcome(passed=list(names), failed={}, unresolvable={})
    decisions = _of(state, decisions)
    judged, keys, codes = _judge(decisions, request, names)

    def reasons(selector: bytes) -> dict[str, str]:
        bad = map(judged.rejections.__getitem__, compress(keys, selector))
        return dict(zip(compress(names, selector), map(_REASON, bad), strict=True))

    waiting = _WAITING in codes
    return FilterOutcome(
        passed=list(compress(names, codes.translate(_PASSES))),
        failed=reasons(codes.translate(_FAILS)),
        unresolvable=reasons(codes.translate(_UNRESOLVABLES))
        if waiting or _UNRESOLVABLE in codes else {},
        waiting=list(compress(names, codes.translate(_WAITINGS))) if waiting else [],
    )


def judge_pod(
    state: ClusterState, request: GpuRequest, names: list[str], *, uid: str, now: float,
    patience: Patience, decisions: Decisions | None = None,
) -> FilterOutcome:
    """:func:`decide` for the pod ``uid`` at ``now``, with delay scheduling: while the pod
    is patient (``Patience.request_at``) a node that could give it only a worse set than
    its best fails; when none passes because of that, the pod is passed over and its
    clock starts (:func:`settle`)."""
    judged = patience.request_at(uid, request, now)
    out = decide(state, judged, names, decisions=decisions)
    return settle(out, judged, uid=uid, now=now, patience=patience)


def settle(
    out: FilterOutcome, judged: GpuRequest, *, uid: str, now: float, patience: Patience
) -> FilterOutcome:
    """A patient pod's outcome: passed over (its clock started) when no node passed and
    some only for a worse set; the waiting nodes' reasons say since when."""
    if not judged.patient or not out.waiting:
        return out
    since = patience.since(uid)
    if not out.passed:
        since = patience.passed_over(uid, now)
        if since == now:
            log.info("waiting for the best set uid=%s request=%s nodes=%d", uid,
                     judged.describe(), len(out.waiting))
    if since is None:
        return out
    note = f" (passed over since {time.strftime('%H:%M:%SZ', time.gmtime(since))})"
    unresolvable = dict(out.unresolvable)
    for name in set(out.waiting):
        unresolvable[name] += note
    return dataclasses.replace(out, unresolvable=unresolvable)


def _of(state: ClusterState, decisions: Decisions | None) -> Decisions:
    if decisions is None:
        return Decisions(state)
    if decisions.state is not state:
        raise ValueError("these decisions belong to another ClusterState")
    return decisions


@dataclass(frozen=True, slots=True, kw_only=True)
class _Parts:
    """A ``NodeNames`` answer in pieces: names (plain or escaped) and reason fragments."""

    passed: list[str]
    failed: list[str]
    failed_fragments: list[str]
    unresolvable: list[str]
    unresolvable_fragments: list[str]
    counts: FilterCounts
    #: The keys of ``passed`` (given ``with_keys``), for ``extender.narrow``.
    passed_keys: list[Key] = dataclasses.field(default_factory=list)


def _parts(decisions: Decisions, request: GpuRequest, names: list[str], *,
           with_keys: bool = False) -> _Parts:
    judged, keys, codes = _judge(decisions, request, names)
    fails = codes.translate(_FAILS)
    passes = codes.translate(_PASSES)
    passed = list(compress(names, passes))
    passed_keys = list(compress(keys, passes)) if with_keys else []
    failed = list(compress(names, fails))
    failed_fragments = list(map(judged.fragments.__getitem__, compress(keys, fails)))
    unresolvable: list[str] = []
    unresolvable_fragments: list[str] = []
    if _UNRESOLVABLE in codes or _WAITING in codes:
        sel = codes.translate(_UNRESOLVABLES)
        unresolvable = list(compress(names, sel))
        unresolvable_fragments = list(map(judged.fragments.__getitem__, compress(keys, sel)))
    counts = FilterCounts(passed=len(passed), failed=codes.count(_FAILED),
                          unknown=codes.count(_UNKNOWN),
                          unresolvable=codes.count(_UNRESOLVABLE),
                          waiting=codes.count(_WAITING))
    if not plain_names(names):
        passed = escape_names(passed)
        failed = escape_names(failed)
        unresolvable = escape_names(unresolvable)
    return _Parts(passed=passed, failed=failed, failed_fragments=failed_fragments,
                  unresolvable=unresolvable, unresolvable_fragments=unresolvable_fragments,
                  counts=counts, passed_keys=passed_keys)


def _join(parts: list[_Parts]) -> Answer[FilterCounts] | None:
    """The answer from its pieces; None when a name is given twice (``FailedNodes`` is a
    map, so the plain encoder decides which entry stays).

    Each part is joined on its own and then the parts together: no single call over all
    the candidates, so a thread running this lets the event loop have the GIL between.
    """
    failed_seen: set[str] = set()
    unresolvable_seen: set[str] = set()
    n_failed = n_unresolvable = 0
    for x in parts:
        failed_seen.update(x.failed)
        unresolvable_seen.update(x.unresolvable)
        n_failed += len(x.failed)
        n_unresolvable += len(x.unresolvable)
    if len(failed_seen) != n_failed or len(unresolvable_seen) != n_unresolvable:
        return None
    body = filter_names_body(
        [name_run(x.passed) for x in parts if x.passed],
        [member_run(x.failed, x.failed_fragments) for x in parts if x.failed],
        [member_run(x.unresolvable, x.unresolvable_fragments) for x in parts if x.unresolvable],
    )
    counts = FilterCounts(**{k: sum(getattr(x.counts, k) for x in parts) for k in (
        "passed", "failed", "unknown", "unresolvable", "waiting", "outscored")})
    return Answer(body=body, counts=counts)


def encode_names(
    decisions: Decisions, request: GpuRequest, names: list[str]
) -> Answer[FilterCounts] | None:
    """The answer to a ``NodeNames`` request, encoded from pre-encoded fragments.

    The same bytes as ``json_bytes(encode(args, decide(...)))`` (tested), without a dict
    per answer or escaping a reason per node: the candidates' names are joined as they
    are when they need no escaping (node names never do), and every rejection's reason
    was encoded once, when its verdict was made. None for what it does not do: a pod
    without GPUs, or a name given twice (``FailedNodes`` is a map).
    """
    if request.empty:
        return None
    return _join([_parts(decisions, request, names)])


def encode_names_keeping(
    decisions: Decisions, request: GpuRequest, names: list[str],
    keep: Callable[[list[str], list[Key]], list[str]],
) -> Answer[FilterCounts] | None:
    """:func:`encode_names` with the candidates that passed narrowed by ``keep`` (given
    two or more of them, with their keys; see ``extender.narrow``). None where
    :func:`encode_names` is, and for names that need escaping."""
    if request.empty or not plain_names(names):
        return None
    parts = _parts(decisions, request, names, with_keys=True)
    if len(parts.passed) > 1:
        kept = keep(parts.passed, parts.passed_keys)
        counts = dataclasses.replace(parts.counts, passed=len(kept),
                                     outscored=len(parts.passed) - len(kept))
        parts = dataclasses.replace(parts, passed=kept, counts=counts, passed_keys=[])
    return _join([parts])


def encode(args: FilterArgs, out: FilterOutcome) -> ExtenderFilterResult:
    """Answer in the form asked: ``NodeNames`` for names, ``Nodes`` for a NodeList."""
    nodes: dict[str, Any] | None = None
    if args.node_list is not None:
        keep = set(out.passed)
        nodes = {k: v for k, v in args.node_list.items() if k != "items"}
        nodes["items"] = [n for n in (args.node_list.get("items") or [])
                          if n["metadata"]["name"] in keep]
    return filter_result(passed=out.passed if args.by_name else None, failed=out.failed,
                         unresolvable=out.unresolvable, nodes=nodes)


def error_result(message: str) -> ExtenderFilterResult:
    return filter_result(passed=None, failed={}, unresolvable={}, error=message)


def counts_of(out: FilterOutcome) -> FilterCounts:
    unknown = countOf(out.failed.values(), UNKNOWN_NODE) if out.failed else 0
    return FilterCounts(passed=len(out.passed), failed=len(out.failed) - unknown,
                        unknown=unknown, unresolvable=len(out.unresolvable) - len(out.waiting),
                        waiting=len(out.waiting))


async def decide_in_slices(
    state: ClusterState, request: GpuRequest, names: list[str], *, decisions: Decisions
) -> FilterOutcome:
    """:func:`decide`, :data:`SLICE` candidates at a time, letting the event loop run in
    between (the same outcome while the state does not change meanwhile)."""
    passed: list[str] = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    waiting: list[str] = []
    for i in range(0, len(names), SLICE):
        out = decide(state, request, names[i:i + SLICE], decisions=decisions)
        passed += out.passed
        failed.update(out.failed)
        unresolvable.update(out.unresolvable)
        waiting += out.waiting
        await asyncio.sleep(0)
    return FilterOutcome(passed=passed, failed=failed, unresolvable=unresolvable,
                         waiting=waiting)


def answer(decisions: Decisions, request: GpuRequest, args: FilterArgs) -> Answer[FilterCounts]:
    """The encoded answer to ``args`` (reused while nothing changed, for ``NodeNames``)."""

    def compute() -> Answer[FilterCounts]:
        if args.by_name and args.node_list is None:
            fast = encode_names(decisions, request, args.names)
            if fast is not None:
                return fast
        out = decide(decisions.state, request, args.names, decisions=decisions)
        return Answer(body=json_bytes(encode(args, out)), counts=counts_of(out))

    if not args.by_name or args.node_list is not None:
        return compute()
    return decisions.answer("filter", request, args.names, compute)


@dataclass(frozen=True, slots=True)
class AllPassed:
    """Every candidate passed: prioritize will be asked about this very request."""

    request: GpuRequest
    names: list[str]


async def _patient_answer(
    ext: Extender, args: FilterArgs, judged: GpuRequest, *, uid: str, now: float
) -> Answer[FilterCounts]:
    """The answer for a pod passed over for its best set (:func:`settle`): its reasons
    carry the pod's own clock, so it is neither taken from nor kept in the answers
    shared by pods of its shape (the verdicts are shared as for any pod). Until a pod
    is passed over its answer says nothing of its own and is shared."""
    large = len(args.names) > 2 * SLICE or (
        args.node_list is not None and len(args.names) > _LARGE_NODE_LIST)
    if large:
        out = await decide_in_slices(ext.state, judged, args.names, decisions=ext.decisions)
    else:
        out = decide(ext.state, judged, args.names, decisions=ext.decisions)
    out = settle(out, judged, uid=uid, now=now, patience=ext.patience)
    encoded = encode(args, out)
    body = await ext.intake.run(dumps_chunked, encoded) if large else json_bytes(encoded)
    return Answer(body=body, counts=counts_of(out))


#: The shared answer narrowed to the top-scored candidates (``extender.narrow``), from
#: the filter's args, the request judged and the pod's own request.
Narrow = Callable[[FilterArgs, GpuRequest, GpuRequest], Answer[FilterCounts]]


async def handle(
    ext: Extender, data: Any, *, narrow: Narrow | None = None
) -> tuple[web.Response, AllPassed | None]:
    """The answer, and whether every candidate passed (see ``extender.prefetch``)."""
    args = decode_extender_args(data)
    pod = ext.pod("filter", args.pod)
    if isinstance(pod, RequestError):
        return json_response(error_result(str(pod))), None  # shown on the pod
    gpu = pod.request
    if not gpu.empty:
        ext.cluster.note_pod(pod)
    many = len(args.names) > 2 * SLICE
    now = ext.patience.clock()
    uid = pod.ref.uid
    gpu = ext.patience.request_at(uid, gpu, now)  # waiting for its best set, or as it is
    sliced: Answer[FilterCounts] | None = None
    waited = gpu.patient and ext.patience.since(uid) is not None
    if waited:
        # Passed over before: its reasons carry its own clock.
        sliced = await _patient_answer(ext, args, gpu, uid=uid, now=now)
    elif many and args.by_name and args.node_list is None and not gpu.empty:
        # Many names: judged in slices, joined from their pieces off the event loop.
        parts = []
        for i in range(0, len(args.names), SLICE):
            parts.append(_parts(ext.decisions, gpu, args.names[i:i + SLICE]))
            await asyncio.sleep(0)
        sliced = await ext.intake.run(_join, parts)
        del parts
    if sliced is not None:
        result = sliced
    elif many or (args.node_list is not None and len(args.names) > _LARGE_NODE_LIST):
        # A full-Nodes answer (it echoes the Node objects), or names given twice: judge
        # in slices and encode off the event loop.
        out = await decide_in_slices(ext.state, gpu, args.names, decisions=ext.decisions)
        body = await ext.intake.run(dumps_chunked, encode(args, out))
        result = Answer(body=body, counts=counts_of(out))
    elif narrow is not None and args.by_name and args.node_list is None:
        result = narrow(args, gpu, pod.request)
    else:
        result = answer(ext.decisions, gpu, args)
    if gpu.patient and not waited and result.counts.waiting and not result.counts.passed:
        # Passed over for the first time: its clock starts, and the reasons say so.
        result = await _patient_answer(ext, args, gpu, uid=uid, now=now)
    c = result.counts
    d = ext.metrics.decisions
    d.labels("passed").inc(c.passed)
    d.labels("failed").inc(c.failed)
    d.labels("unknown").inc(c.unknown)
    d.labels("unresolvable").inc(c.unresolvable)
    if c.waiting:
        d.labels("waiting").inc(c.waiting)
    if c.outscored:
        d.labels("outscored").inc(c.outscored)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("filter pod=%s request=%s nodes=%d passed=%d failed=%d unknown=%d "
                  "unresolvable=%d waiting=%d", pod.ref, gpu.describe(), len(args.names),
                  c.passed, c.failed, c.unknown, c.unresolvable, c.waiting)
    everyone = (args.by_name and args.node_list is None and not gpu.empty
                and c.passed == len(args.names))
    # Prioritize judges the pod as it is (patience only narrows the filter).
    return (web.Response(body=result.body, content_type="application/json"),
            AllPassed(pod.request, args.names) if everyone else None)
