"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

Decisions in flight and the per-node locks live in one process, so one replica serves
at a time; the others stand by (not ready, so the Service routes to the leader). A
holder's lease counts as expired ``lease_duration_s`` after this replica last *saw it
change* (local clock, like client-go: no trust in other machines' clocks). The leader
renews every ``retry_period_s`` and stops calling itself leader when it could not renew
for ``renew_deadline_s``. Updates carry the resourceVersion, so two candidates cannot
both win. On shutdown the leader releases the lease so a standby takes over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from extender.kubeapi import ApiError, KubeApi

__all__ = ["LeaseElector"]

log = logging.getLogger(__name__)


def _micro_time(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(
        self, api: KubeApi, *, name: str, namespace: str, identity: str,
        lease_duration_s: float = 15.0, renew_deadline_s: float = 10.0,
        retry_period_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_period_s = retry_period_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._holder = ""
        self._renewed_at: float | None = None
        self._stopping = asyncio.Event()
        #: Rounds run by :meth:`run` so far (see wait_rounds).
        self.rounds = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    def is_leader(self) -> bool:
        return (self._renewed_at is not None
                and self.clock() - self._renewed_at < self.renew_deadline_s)

    def describe(self) -> str:
        holder = self._holder or "nobody"
        return f"lease {self.namespace}/{self.name} is held by {holder}; this is {self.identity}"

    async def try_acquire_or_renew(self) -> bool:
        """One round: take or renew the lease if possible."""
        now = self.clock()
        wall = _micro_time(self.wall_clock())
        try:
            lease = await self.api.request("GET", self.path)
        except ApiError as e:
            if e.status != 404:
                log.warning("lease read failed lease=%s error=%r", self.name, str(e))
                return False
            lease = None
        spec_new = {"holderIdentity": self.identity,
                    "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
                    "acquireTime": wall, "renewTime": wall, "leaseTransitions": 0}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": spec_new}
            return await self._write("POST", self.path.rsplit("/", 1)[0], body, now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseTransitions"))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        self._holder = holder
        if holder and holder != self.identity and now - self._observed_at < self.lease_duration_s:
            self._renewed_at = None
            return False
        new_spec = dict(spec)
        new_spec.update(holderIdentity=self.identity, renewTime=wall,
                        leaseDurationSeconds=spec_new["leaseDurationSeconds"])
        if holder != self.identity:
            new_spec["acquireTime"] = wall
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": new_spec}
        return await self._write("PUT", self.path, body, now)

    async def _write(self, method: str, path: str, body: dict[str, Any], now: float) -> bool:
        try:
            await self.api.request(method, path, body=body)
        except ApiError as e:
            log.info("lease not taken lease=%s identity=%s error=%r", self.name,
                     self.identity, str(e))
            return False
        if self._renewed_at is None:
            log.info("leader elected lease=%s identity=%s", self.name, self.identity)
        self._renewed_at = now
        self._holder = self.identity
        return True

    async def release(self) -> None:
        """Give the lease up (shutdown) so a standby need not wait for it to expire."""
        if self._renewed_at is None:
            return
        try:
            lease = await self.api.request("GET", self.path)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1,
                        renewTime=_micro_time(self.wall_clock()))
            await self.api.request("PUT", self.path, body={**lease, "spec": spec})
            log.info("lease released lease=%s identity=%s", self.name, self.identity)
        except (ApiError, TimeoutError) as e:
            log.warning("lease release failed lease=%s error=%r", self.name, str(e))
        finally:
            self._renewed_at = None

    async def wait_rounds(self, after: int) -> None:
        """Return once :meth:`run` has finished more than ``after`` rounds."""
        while self.rounds <= after:
            w = asyncio.get_running_loop().create_future()
            self._waiters.append(w)
            await w

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Try every ``retry_period_s`` until :meth:`stop`; release the lease at the end."""
        was = False
        try:
            while not self._stopping.is_set():
                try:
                    # A round that hangs on the API server must not outlive the renew
                    # deadline (client-go bounds its renewal the same way).
                    async with asyncio.timeout(self.renew_deadline_s):
                        await self.try_acquire_or_renew()
                except Exception as e:
                    log.warning("lease round failed lease=%s error=%r", self.name, str(e))
                now = self.is_leader()
                if was and not now:
                    log.warning("leadership lost lease=%s identity=%s", self.name, self.identity)
                was = now
                self.rounds += 1
                waiters, self._waiters = self._waiters, []
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.retry_period_s)
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_period_s):
                    await self.release()
