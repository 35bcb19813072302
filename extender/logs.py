"""Logging that a flood cannot turn into a flood of records."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Final

__all__ = ["THROTTLE_S", "Throttle", "suppressed"]

#: Seconds within which the same error is logged once.
THROTTLE_S: Final = 10.0


class Throttle:
    """At most one record per key per ``interval_s``; the next one tells how many were
    dropped meanwhile."""

    def __init__(self, interval_s: float = THROTTLE_S, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._last: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        """None: drop this record; else log it, saying this many were dropped before."""
        now = self.clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval_s:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return 0 if seen is None else seen[1]


def suppressed(n: int) -> str:
    """The tail of a record that follows ``n`` dropped ones (" suppressed=n")."""
    return f" suppressed={n}" if n else ""
