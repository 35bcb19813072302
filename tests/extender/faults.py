"""The in-memory cluster with test hooks: write failures, writes held at a gate, a record.

Test-only: the shipped ``MemoryCluster`` has none of this.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from extender.cluster import ClusterError
from extender.memory import MemoryCluster
from extender.request import PodRef


class FaultyCluster(MemoryCluster):
    """:class:`MemoryCluster` whose binds can fail on purpose or wait at a gate."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: Failures to raise from the next binds, in order.
        self.faults: list[ClusterError] = []
        #: Every successful write, in order: ("bind", "ns/name", node, assigned value).
        self.writes: list[tuple[str, str, str, str | None]] = []
        self._gate: asyncio.Event | None = None
        #: Binds waiting at the gate now.
        self.waiting = 0
        self._arrivals: list[asyncio.Future[None]] = []

    def hold_writes(self) -> None:
        """From now on, binds wait (before writing) until :meth:`release_writes`."""
        self._gate = asyncio.Event()

    def release_writes(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def bind(self, ref: PodRef, node: str, assigned: str | None) -> None:
        gate = self._gate
        if gate is not None:
            self.waiting += 1
            self._notify()
            try:
                await gate.wait()
            finally:
                self.waiting -= 1
        if self.faults:
            raise self.faults.pop(0)
        await super().bind(ref, node, assigned)
        self.writes.append(("bind", str(ref), node, assigned))

    def _notify(self) -> None:
        arrivals, self._arrivals = self._arrivals, []
        for f in arrivals:
            if not f.done():
                f.set_result(None)

    async def settled(self, tasks: Iterable[asyncio.Future[Any]]) -> None:
        """Return once every one of ``tasks`` is done or waiting at the gate."""
        tasks = list(tasks)
        while sum(t.done() for t in tasks) + self.waiting < len(tasks):
            arrival = asyncio.get_running_loop().create_future()
            self._arrivals.append(arrival)
            pending = [t for t in tasks if not t.done()]
            await asyncio.wait([arrival, *pending], return_when=asyncio.FIRST_COMPLETED)
            if not arrival.done():
                arrival.cancel()
