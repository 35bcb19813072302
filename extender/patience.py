"""Delay scheduling for the best set: how long a pod waits, and since when it has waited.

Zaharia et al. ("Delay Scheduling", EuroSys 2010) let a job skip its turn for a bounded
time when no slot with local data is free, because one usually frees soon; here the slot
is a GPU set. A multi-GPU pod whose link policy is not ``required`` is, for a bounded
time, passed by the filter only on nodes that can give every container of 2+ GPUs the
ring an empty node of that type gives it (``extender.plan``); a node that could take it
only with a worse set fails with the reason. The rules:

* **Who waits.** A pod with a container of 2+ GPUs, without ``link-policy: required``
  (a required pod already waits for its link, without limit), whose patience is above
  0: ``gputopo.io/best-set-patience`` on the pod, else the extender's
  ``--best-set-patience``. 1-GPU pods never wait.
* **The clock** starts the first time the filter *passes the pod over* for its best set:
  no candidate passed, and some candidate could have taken it with a worse set
  (:meth:`Patience.passed_over`). A pod whose best set is free on some candidate is not
  passed over, and its clock does not start.
* **After the patience** (``now >= since + patience``) the pod is judged exactly as
  without this module, and stays so.
* **Bind** chooses the set again on fresh state with the same judgement: while the pod
  is patient a worse set is refused (the scheduler retries the pod).

Decisions take ``now`` as an argument (seconds since the epoch for the HTTP handlers,
the simulated time for the simulator); :attr:`Patience.clock` is what the handlers read.

The clocks are kept per pod UID, for the :data:`DEFAULT_MAX_PODS` pods passed over most
recently (LRU), in this process only: a restart (or a fail-over to the standby) forgets
them, and a waiting pod's wait starts again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from extender.request import GpuRequest

__all__ = ["DEFAULT_MAX_PODS", "Patience", "waits_for_best"]

log = logging.getLogger(__name__)

#: Pods whose clock is kept (the least recently passed over go first): ~150 bytes each.
DEFAULT_MAX_PODS: Final = 10_000


def waits_for_best(request: GpuRequest) -> bool:
    """Whether delay scheduling applies to pods of this request at all (by its shape:
    a container of 2+ GPUs, and no ``link-policy: required``)."""
    return not request.required and any(c.count >= 2 for c in request.containers)


class Patience:
    """The per-pod clocks of delay scheduling, and the judgement of a pod at ``now``.

    Owned by the app (one per process, like ``extender.decisions.Decisions``).
    """

    def __init__(
        self, default_s: float, *, max_pods: int = DEFAULT_MAX_PODS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not default_s >= 0 or max_pods < 1:
            raise ValueError(f"patience {default_s!r} must be >= 0 and max_pods {max_pods!r} "
                             ">= 1")
        self.default_s = default_s
        self.max_pods = max_pods
        #: What the HTTP handlers read ``now`` from (tests inject their own).
        self.clock = clock
        self._since: OrderedDict[str, float] = OrderedDict()

    def bound(self, request: GpuRequest) -> float:
        """The pod's patience in seconds: its annotation, else the default."""
        return self.default_s if request.patience_s is None else request.patience_s

    def request_at(self, uid: str, request: GpuRequest, now: float) -> GpuRequest:
        """``request`` as it is judged at ``now``: patient (waiting for its best set)
        or as it is.

        >>> from extender.request import ContainerRequest
        >>> pair = GpuRequest(containers=(ContainerRequest(name="main", count=2),))
        >>> p = Patience(600.0)
        >>> p.request_at("u1", pair, 0.0).patient
        True
        >>> p.passed_over("u1", 100.0)
        100.0
        >>> p.request_at("u1", pair, 699.0).patient, p.request_at("u1", pair, 700.0).patient
        (True, False)
        """
        if request.patient or not waits_for_best(request):
            return request
        bound = self.bound(request)
        if bound <= 0:
            return request
        since = self._since.get(uid)
        if since is not None and now - since >= bound:
            return request
        return dataclasses.replace(request, patient=True, patience_s=bound)

    def passed_over(self, uid: str, now: float) -> float:
        """The filter passed the pod over for its best set at ``now``: when its clock
        started (``now`` the first time)."""
        since = self._since.get(uid)
        if since is not None:
            self._since.move_to_end(uid)
            return since
        self._since[uid] = now
        while len(self._since) > self.max_pods:
            self._since.popitem(last=False)
        return now

    def since(self, uid: str) -> float | None:
        """When the pod was first passed over (None: never, or forgotten)."""
        return self._since.get(uid)

    def __len__(self) -> int:
        return len(self._since)
