"""Honour the extender's set when the plugin's pod cache lags behind the kubelet.

The extender's Binding and the kubelet's admission follow one watch event, and the
kubelet calls GetPreferredAllocation milliseconds after it sees the pod: the plugin's
own watch may not have delivered that pod yet, and the request carries no pod identity
to ask about. ``preferred`` answers as ``ResourceManager.preferred`` does, and when that
finds no assigned set that fits, it looks further only if the cache may lack the pod:

* ``known``: the cache knows a container waiting for that many GPUs (holding none by
  the kubelet's record, and not accounted for by an Allocate since): the kubelet is
  admitting that pod, or one like it. Answered at once, nothing asked (the usual case
  for pods the extender did not place);
* otherwise ``PodCacheCatchUp.check`` asks the kubelet's PodResources ``List`` (a local
  unix socket, no API server) which pods it has. The pod being admitted is among them:
  the kubelet adds a pod to its pod manager before it admits it, and ``List`` lists the
  pod manager's active pods (kubelet.go ``HandlePodAdditions``; podresources
  ``server_v1.go`` ``List``). The device manager does not hold its lock during the call
  (``callGetPreferredAllocationIfAvailable`` unlocks), so ``List`` answers meanwhile.

A pod listed there that the cache lacks means the cache is behind: the call waits until
the cache has it (woken by each change of the cache, which also ends the wait as soon as
an assigned set fits), at most ``max_wait``, and the set is chosen again (``delivered``
or ``timed_out``). It answers at once when:

* ``in_sync``: the kubelet lists no pod the cache lacks (nothing is on its way);
* ``watch_down``: the pod watch is not delivering (API server away): nothing can come;
* ``kubelet_unreachable``: ``List`` failed or did not answer within ``max_wait``.

A pod waited for in vain (``timed_out``; e.g. a static pod whose mirror pod is missing)
is not waited for again while the kubelet keeps listing it and the cache lacks it, so it
delays one call at most.

Everything here is awaited on the gRPC server's event loop: the ``List`` runs on gRPC's
threads and the wait is an ``asyncio.Event`` set from the watch thread, so ListAndWatch,
Allocate and other GetPreferredAllocation calls are served while one call waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from plugin.cluster import PodKey
from plugin.log import fields
from plugin.metrics import PluginMetrics
from plugin.pods import PodCache
from plugin.resources import Preferred, Refused, ResourceManager

__all__ = [
    "DEFAULT_MAX_WAIT_S",
    "CacheCheck",
    "CheckResult",
    "KubeletPods",
    "PodCacheCatchUp",
    "preferred",
]

log = logging.getLogger(__name__)

#: Longest a GetPreferredAllocation call waits for the pod cache (the kubelet has no
#: time-out on the call, and admits the node's pods one at a time meanwhile).
DEFAULT_MAX_WAIT_S: Final = 0.5

CheckResult = Literal[
    "known", "in_sync", "delivered", "timed_out", "watch_down", "kubelet_unreachable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheCheck:
    """What a check of the pod cache against the kubelet found, and what it cost."""

    result: CheckResult
    #: From the start of the check to its end (the ``List`` and the wait), when it waited.
    waited_s: float = 0.0
    #: The pods the kubelet listed and the cache lacked (``namespace/name``).
    pods: tuple[str, ...] = ()
    #: Why the kubelet's pods could not be read (``kubelet_unreachable``).
    error: str = ""

    @property
    def waited(self) -> bool:
        return self.result in ("delivered", "timed_out")


_KNOWN: Final = CacheCheck(result="known")


class KubeletPods(Protocol):
    """The pods the kubelet has now; raises when it does not answer within ``timeout``."""

    def __call__(self, timeout: float) -> Awaitable[frozenset[PodKey]]: ...


def _refs(keys: Iterable[PodKey]) -> tuple[str, ...]:
    return tuple(f"{ns}/{name}" for ns, name in sorted(keys))


def _describe(e: Exception) -> str:
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError
        return f"{getattr(code(), 'name', code())}: {details()}"
    return f"{type(e).__name__}: {e}"


class PodCacheCatchUp:
    """Checks ``cache`` against the kubelet's pods, and waits for the ones it lacks."""

    def __init__(
        self,
        cache: PodCache,
        kubelet_pods: KubeletPods,
        *,
        max_wait: float = DEFAULT_MAX_WAIT_S,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.cache = cache
        self.max_wait = max_wait
        self.metrics = metrics or PluginMetrics()
        self._kubelet_pods = kubelet_pods
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        # Read and replaced on the serving loop only.
        self._given_up: frozenset[PodKey] = frozenset()
        cache.on_change(self._changed)

    def _changed(self) -> None:
        """On the watch thread: wake every call waiting for the cache."""
        with self._lock:
            waiters = tuple(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop has closed (a restart)
                loop.call_soon_threadsafe(event.set)

    def known(self) -> CacheCheck:
        """No check: the cache knows a pod waiting for what the kubelet asks."""
        self.metrics.pod_cache_checks.labels("known").inc()
        return _KNOWN

    async def check(
        self, seen: Mapping[PodKey, object], answered: Callable[[], bool] = lambda: False
    ) -> CacheCheck:
        """Whether the kubelet has pods that ``seen`` (the cache as a call saw it) lacks;
        if so, wait until the cache has them too, or ``answered()`` (asked after each
        change of the cache) says what arrived is enough, at most ``max_wait`` seconds."""
        found = await self._check(seen, answered)
        self.metrics.pod_cache_checks.labels(found.result).inc()
        if found.waited:
            self.metrics.pod_cache_wait_seconds.observe(found.waited_s)
        waited_ms = round(found.waited_s * 1000, 1)
        if found.result == "delivered":
            log.info("pod cache caught up with the kubelet", extra=fields(
                pods=found.pods, waited_ms=waited_ms))
        elif found.result == "timed_out":
            log.warning("pod cache behind the kubelet; answering without it", extra=fields(
                pods=found.pods, waited_ms=waited_ms, max_wait_s=self.max_wait))
        elif found.result == "kubelet_unreachable":
            log.debug("kubelet pods unknown; answering at once", extra=fields(
                error=found.error))
        return found

    async def _check(
        self, seen: Mapping[PodKey, object], answered: Callable[[], bool]
    ) -> CacheCheck:
        if not self.cache.live:
            return CacheCheck(result="watch_down")
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            listed = await self._kubelet_pods(self.max_wait)
        except Exception as e:  # the kubelet restarting, a wrong socket path, a time-out
            return CacheCheck(result="kubelet_unreachable", error=_describe(e))
        current = self.cache.snapshot()
        # Forget pods given up on that have arrived since, or that the kubelet dropped.
        self._given_up = frozenset(k for k in self._given_up & listed if k not in current)
        missing = frozenset(k for k in listed if k not in seen) - self._given_up
        if not missing:
            return CacheCheck(result="in_sync")
        left, enough = await self._wait_for(missing, answered, loop, start + self.max_wait)
        waited = loop.time() - start
        if not enough:
            self._given_up |= left
            return CacheCheck(result="timed_out", waited_s=waited, pods=_refs(left))
        return CacheCheck(result="delivered", waited_s=waited, pods=_refs(missing - left))

    async def _wait_for(
        self,
        missing: frozenset[PodKey],
        answered: Callable[[], bool],
        loop: asyncio.AbstractEventLoop,
        deadline: float,
    ) -> tuple[frozenset[PodKey], bool]:
        """Await cache changes until it holds every ``missing`` pod or ``answered()``
        (enough arrived), the deadline passes or the watch fails: the pods still missing,
        and whether enough arrived."""
        changed = asyncio.Event()
        waiter = (loop, changed)
        with self._lock:
            self._waiters.add(waiter)
        try:
            snapshot: object = None
            while True:
                changed.clear()  # before looking: a change after the look sets it again
                current = self.cache.snapshot()
                left = frozenset(k for k in missing if k not in current)
                if not left:
                    return left, True
                if current is not snapshot and left != missing and answered():
                    return left, True
                snapshot = current
                remaining = deadline - loop.time()
                if remaining <= 0 or not self.cache.live:
                    return left, False
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                self._waiters.discard(waiter)


async def preferred(
    rm: ResourceManager,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    *,
    catch_up: PodCacheCatchUp | None,
) -> tuple[Preferred | Refused, CacheCheck | None]:
    """``rm.preferred``; when no assigned set fit, the cache is checked against the
    kubelet first (``catch_up``) and the set chosen again if the cache changed meanwhile.
    The check made, if any, comes back with the answer."""
    seen = catch_up.cache.snapshot() if catch_up is not None else None
    choice = rm.preferred(available, must_include, size)
    if catch_up is None or seen is None or not isinstance(choice, Preferred) \
            or choice.source == "assigned":
        return choice, None
    if rm.known_waiting(size) > 0:  # the cache knows a pod this can be for
        return choice, catch_up.known()

    def assigned() -> bool:  # the cache changed: does an assigned set fit now?
        again = rm.preferred(available, must_include, size)
        return isinstance(again, Preferred) and again.source == "assigned"

    found = await catch_up.check(seen, assigned)
    if catch_up.cache.snapshot() is not seen:
        choice = rm.preferred(available, must_include, size)
    return choice, found
