"""Prioritize answers made ahead, in the gap kube-scheduler leaves after filter.

In a scheduling cycle kube-scheduler calls filter, then runs its own score plugins over
the nodes that passed, and only then calls prioritize with those nodes. When every
candidate passed, the prioritize request is byte for byte the filter request (the same
pod and the same names, encoded the same way). So right after filter answers, this
module works out the prioritize answer for that body (the extender's other core is
otherwise idle while the scheduler scores), and the prioritize request that comes is
recognised by a digest of its raw body (``extender.intake.digest``) and answered
without decoding it.

An answer made ahead is used only while the cluster state is the version it was made
on (a bind in between changes scores: it is made again then, the normal way), and at
most a few are kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from extender.state import ClusterState

__all__ = ["Prefetch"]

log = logging.getLogger(__name__)

#: Answers kept: the scheduler runs one cycle at a time; a few cover retries.
_KEPT: Final = 8


@dataclass(frozen=True, slots=True)
class _Made:
    version: int
    body: bytes


class Prefetch:
    """Prioritize answers by request digest, made after filter on the loop's idle time."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._made: OrderedDict[bytes, _Made] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def offer(self, key: bytes, make: Callable[[], bytes]) -> None:
        """Make the answer for the body ``key`` soon (after the current answer is sent)."""
        version = self.state.version

        def run() -> None:
            if self.state.version != version or key in self._made:
                return  # the state moved on: prioritize will compute it itself
            try:
                body = make()
            except Exception:
                log.exception("prefetch of a prioritize answer failed")
                return
            self._made[key] = _Made(version, body)
            while len(self._made) > _KEPT:
                self._made.popitem(last=False)

        asyncio.get_running_loop().call_soon(run)

    def take(self, key: bytes) -> bytes | None:
        """The answer made ahead for the body ``key``, if the state is still its version."""
        made = self._made.pop(key, None)
        if made is not None and made.version == self.state.version:
            self.hits += 1
            return made.body
        self.misses += 1
        return None
