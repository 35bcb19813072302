"""What filter and prioritize remember between requests: verdicts, tables, last answers.

Owned by the app (one :class:`Decisions` per :class:`~extender.state.ClusterState`), so
the state itself holds only nodes and GPUs. Three memories, each bounded:

* **Verdicts** per pod shape and node key (``(topology fingerprint, free mask)``, see
  ``ClusterState.key_of``): identical nodes share them, and a verdict never goes stale,
  because a key names one free mask forever. At most ``max_verdicts`` in all; the pod
  shapes used longest ago go first.
* **Tables** per pod shape: what a verb derives from a verdict (filter an outcome code
  and the reason encoded as JSON, prioritize the plan's figures and its score), so a
  candidate costs a dict lookup or two. They go with their shape's verdicts.
* **Answers**: the last answer per verb and pod shape, reused while the state and the
  candidate list are unchanged (the pods of one Job share a shape, and pending pods are
  retried on every cluster event). Bounded by bytes (``answer_bytes``): the candidate
  list and the encoded answer are what an answer costs, and a request of 100,000
  unknown names makes both large.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Final, Generic, TypeVar, cast

from extender.plan import Rejection, Verdict, place
from extender.request import GpuRequest
from extender.state import ClusterState, NodeState

__all__ = ["DEFAULT_ANSWER_BYTES", "UNKNOWN", "Answer", "Decisions", "Key"]

#: The verdict of a node whose topology is not known (yet).
UNKNOWN: Final = Rejection(reason="no GPU topology known for this node (yet)", unresolvable=False)
#: A node key as filter and prioritize see it (``NodeState.key``); None: unknown node.
Key = int | None

DEFAULT_ANSWER_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_VERDICTS: Final = 500_000
#: Python's cost of one str in a list, beyond its characters (object header + pointer).
_PER_NAME: Final = 57
_PER_ANSWER: Final = 400
#: How often (in calls) the verdicts are counted against their bound.
_COUNT_EVERY: Final = 64

_T = TypeVar("_T")
C = TypeVar("C")


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer(Generic[C]):
    """A verb's encoded answer, and what its metrics and logs count."""

    body: bytes
    counts: C


@dataclass(frozen=True, slots=True, kw_only=True)
class _Memo:
    version: int
    names: list[str]
    answer: Answer[object]
    size: int


class Decisions:
    """Verdicts, the verbs' tables and their last answers, for one ``ClusterState``."""

    def __init__(
        self, state: ClusterState, *, answer_bytes: int = DEFAULT_ANSWER_BYTES,
        max_verdicts: int = DEFAULT_MAX_VERDICTS,
    ) -> None:
        self.state = state
        self.answer_bytes = answer_bytes
        self.max_verdicts = max_verdicts
        self._verdicts: OrderedDict[tuple[object, ...], dict[Key, Verdict]] = OrderedDict()
        self._tables: dict[tuple[object, ...], dict[Callable[[], object], object]] = {}
        self._answers: OrderedDict[tuple[str, tuple[object, ...]], _Memo] = OrderedDict()
        self._answer_total = 0
        self._calls = 0
        self._last_keys: tuple[list[str], int, list[Key]] | None = None

    # -- verdicts -----------------------------------------------------------------------
    def verdicts(self, request: GpuRequest) -> dict[Key, Verdict]:
        """The verdict cache for pods of this shape: ``{node.key: Verdict}``."""
        shape = request.shape
        cache = self._verdicts.get(shape)
        if cache is None:
            cache = self._verdicts[shape] = {None: UNKNOWN}
            self._bound_verdicts()
        else:
            self._verdicts.move_to_end(shape)
            self._calls += 1
            if self._calls % _COUNT_EVERY == 0:
                self._bound_verdicts()
        return cache

    def _bound_verdicts(self) -> None:
        total = sum(map(len, self._verdicts.values()))
        while total > self.max_verdicts and len(self._verdicts) > 1:
            shape, dropped = self._verdicts.popitem(last=False)
            self._tables.pop(shape, None)
            total -= len(dropped)

    @property
    def verdict_count(self) -> int:
        return sum(map(len, self._verdicts.values()))

    @staticmethod
    def judge(node: NodeState, request: GpuRequest, cache: dict[Key, Verdict]) -> Verdict:
        v = cache.get(node.key)
        if v is None:
            v = cache[node.key] = place(node.allocator, node.free_mask, request)
        return v

    def keys_of(self, names: list[str]) -> list[Key]:
        """Per name, in order, its node key (None: unknown node). One C-level ``map``.

        The keys of the last list asked are kept for its state version: filter and the
        prioritize answer made right after it (``extender.prefetch``) ask about the same
        list, and 5,000 lookups of freshly decoded names are not free."""
        last = self._last_keys
        version = self.state.version
        if last is not None and last[0] is names and last[1] == version:
            return last[2]
        keys = list(map(self.state.node_keys.get, names))
        self._last_keys = (names, version, keys)
        return keys

    def judge_new(
        self, request: GpuRequest, names: list[str], keys: list[Key],
        known: Container[Key], add: Callable[[Key, Verdict], None],
    ) -> None:
        """``add(key, verdict)`` once for each of ``keys`` (those of ``names``) not in
        ``known``; ``add`` must make the key known. An unknown node's verdict is
        :data:`UNKNOWN`; only node states never seen for this pod shape are placed."""
        cache = self.verdicts(request)
        nodes = self.state.nodes
        for name, key in zip(names, keys, strict=True):
            if key not in known:
                add(key, UNKNOWN if key is None else self.judge(nodes[name], request, cache))

    # -- tables -------------------------------------------------------------------------
    def table(self, request: GpuRequest, kind: Callable[[], _T]) -> _T:
        """A verb's own table for pods of this shape, made by ``kind()`` the first time.

        Tables go when the shape's verdicts do.
        """
        shape = request.shape
        if shape not in self._verdicts:
            self.verdicts(request)
        tables = self._tables.setdefault(shape, {})
        t = tables.get(kind)
        if t is None:
            t = tables[kind] = kind()
        return cast(_T, t)

    # -- answers ------------------------------------------------------------------------
    def answer(
        self, verb: str, request: GpuRequest, names: list[str], compute: Callable[[], Answer[C]]
    ) -> Answer[C]:
        """``compute()``, or the same answer as last time when nothing changed.

        One answer is kept per verb and pod shape, for one state version and one
        candidate list (compared in full); all of them together within ``answer_bytes``
        (the longest unused go first; an answer larger than a quarter of it is not kept).
        """
        slot = (verb, request.shape)
        hit = self._answers.get(slot)
        if hit is not None and hit.version == self.state.version and hit.names == names:
            self._answers.move_to_end(slot)
            return cast(Answer[C], hit.answer)
        version = self.state.version
        answer = compute()
        if hit is not None:
            del self._answers[slot]
            self._answer_total -= hit.size
        size = (_PER_ANSWER + len(answer.body) + _PER_NAME * len(names)
                + sum(map(len, names)))
        if size <= self.answer_bytes // 4:
            self._answers[slot] = _Memo(version=version, names=list(names),
                                        answer=cast(Answer[object], answer), size=size)
            self._answer_total += size
            while self._answer_total > self.answer_bytes:
                _, old = self._answers.popitem(last=False)
                self._answer_total -= old.size
        return answer

    @property
    def answer_total_bytes(self) -> int:
        """What the kept answers cost, as estimated against ``answer_bytes``."""
        return self._answer_total
