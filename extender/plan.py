"""Place one pod on one node: a set per container, or the reason none fits. Pure.

Shared by filter (does a plan exist), prioritize (how good is it), bind (the plan written
on the pod) and preempt (which victims make a plan exist). The container rule is in
``extender.request``'s module docstring.

A *patient* request (``GpuRequest.patient``, see ``extender.patience``) is placed as any
other, and then refused (``Rejection.waiting``) when a container of 2+ GPUs would get a
worse ring than the one an empty node of this type gives it: it waits for that set.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

from extender.request import ContainerRequest, GpuRequest
from extender.validation import format_duration
from topology.allocate import Allocation, Allocator, Infeasible
from topology.gpuids import indices_of, mask_of
from topology.links import Link, bandwidth_gbps

__all__ = ["Plan", "Rejection", "Verdict", "place"]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Plan:
    """GPU indices per container (pod order), and the figures prioritize scores by.

    Compared by identity (``eq=False``): verdicts are shared cache entries, and the hot
    path tests lists of them for ``None`` at C speed."""

    ok: ClassVar[bool] = True
    sets: tuple[tuple[str, tuple[int, ...]], ...]
    mask: int
    #: The weakest ring bottleneck over containers of 2+ GPUs, in GB/s (None: all 1-GPU).
    ring_gbps: float | None
    ring_link: Link | None
    #: Bandwidth between the GPUs of each container, summed.
    pair_gbps: float
    #: Bandwidth among the node's free GPUs left after this pod.
    remainder_gbps: float
    #: What the pod leaves behind, 0..1 (1: nothing of value cut). Mostly the class of
    #: the best link the pod cuts between its GPUs and the free GPUs it leaves, against
    #: the best link among the free GPUs before it: ``1 - rank(cut) / rank(best)``
    #: (cutting only SYS links costs nothing; leaving the last GPU of an NVLink pair
    #: alone costs all); then, as a quarter, the share of the free GPUs' bandwidth (less
    #: the pod's own) that stays among the GPUs left. 1 for an exact fit.
    left_ratio: float
    #: Whether every container's set meets the pod's min-link (True when none asked).
    meets_min_link: bool


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Rejection:
    """Why the node cannot take the pod; ``unresolvable`` when not even empty."""

    ok: ClassVar[bool] = False
    reason: str
    unresolvable: bool
    #: The node could take the pod, only not with the best set its node type offers,
    #: and the pod waits for that set (a patient request). Such a node goes to
    #: FailedAndUnresolvableNodes (``unresolvable`` is True): preemption is not for a
    #: wait the pod chose.
    waiting: bool = False


Verdict = Plan | Rejection


def place(alloc: Allocator, free_mask: int, request: GpuRequest) -> Verdict:
    """The pod's plan on a node whose free GPUs are ``free_mask``.

    The required constraint filters; a preferred one is tried first and dropped when the
    node cannot give it (``meets_min_link=False``). ``unresolvable`` is decided by placing
    the pod on the same node with every GPU free. A patient request is refused, with
    ``waiting``, where a container of 2+ GPUs would get a worse ring than on an empty node
    of this type.
    """
    if request.patient:
        return _patient(alloc, free_mask, request)
    link = request.min_link
    verdict = _place(alloc, free_mask, request, link)
    if isinstance(verdict, Rejection) and link is not None and not request.required:
        relaxed = _place(alloc, free_mask, request, None)
        if isinstance(relaxed, Plan):
            return _replace_meets(relaxed, False)
        verdict = relaxed
    if isinstance(verdict, Rejection) and not verdict.unresolvable and free_mask != alloc.full_mask:
        empty = place(alloc, alloc.full_mask, request)
        if isinstance(empty, Rejection):
            return Rejection(reason=verdict.reason, unresolvable=True)
    return verdict


def _patient(alloc: Allocator, free_mask: int, request: GpuRequest) -> Verdict:
    """``place`` for a pod waiting for its best set (see the module docstring)."""
    plain = dataclasses.replace(request, patient=False)
    verdict = place(alloc, free_mask, plain)
    if not isinstance(verdict, Plan) or verdict.ring_link is None:
        return verdict
    best = place(alloc, alloc.full_mask, plain)
    if not isinstance(best, Plan):
        return verdict
    short: list[tuple[str, int, Link, Link]] = []
    for (name, devices), (_, best_devices) in zip(verdict.sets, best.sets, strict=True):
        if len(devices) < 2:
            continue
        got, want = _ring_of(alloc, devices), _ring_of(alloc, best_devices)
        if got is not None and want is not None and got < want:
            short.append((name, len(devices), want, got))
    if not short:
        return verdict
    bound = request.patience_s
    wait = ("waiting" if bound is None or math.isinf(bound)
            else f"waiting up to {format_duration(bound)}")
    if len(request.containers) == 1:
        _, k, want, got = short[0]
        reason = (f"{wait} for the best set this node type offers ({want} {_set_name(k)}); "
                  f"best free here now: {got}")
    else:
        wants = ", ".join(f"{name}: {want} {_set_name(k)}" for name, k, want, _ in short)
        gots = ", ".join(f"{name} {got}" for name, _, _, got in short)
        reason = (f"{wait} for the best sets this node type offers ({wants}); best free "
                  f"here now: {gots}")
    return Rejection(reason=reason, unresolvable=True, waiting=True)


def _ring_of(alloc: Allocator, devices: tuple[int, ...]) -> Link | None:
    r = alloc.best(len(devices), mask_of(devices))
    return r.ring_link if isinstance(r, Allocation) else None


def _set_name(k: int) -> str:
    return "pair" if k == 2 else f"ring of {k}"


def _replace_meets(plan: Plan, meets: bool) -> Plan:
    return dataclasses.replace(plan, meets_min_link=meets)


def _place(alloc: Allocator, free_mask: int, request: GpuRequest, link: Link | None) -> Verdict:
    gb_per_link = alloc.topology.gb_per_nvlink
    multi = len(request.containers) > 1
    if multi:
        n_free = bin(free_mask).count("1")
        if n_free < request.total:
            free = ",".join(map(str, indices_of(free_mask)))
            text = f"{n_free} free GPUs ({free})" if n_free else "no free GPUs"
            per = ", ".join(f"{c.name}={c.count}" for c in request.containers)
            return Rejection(
                reason=f"{text}: {request.total} requested ({per})",
                unresolvable=request.total > alloc.n,
            )
    exclusive = _place_exclusive(alloc, free_mask, request.exclusive, link)
    if isinstance(exclusive, Rejection):
        return exclusive
    chosen: dict[str, Allocation] = dict(exclusive)
    union = 0
    for a in chosen.values():
        union |= a.mask
    mask = union
    for c in request.shared:
        r = _place_shared(alloc, c, free_mask, mask, link)
        if isinstance(r, Infeasible):
            return _reject(r, c, multi)
        chosen[c.name] = r
        mask |= r.mask
    ring_link: Link | None = None
    for a in chosen.values():
        if a.ring_link is not None and (ring_link is None or a.ring_link < ring_link):
            ring_link = a.ring_link
    rest = free_mask & ~mask
    remainder = _remainder_gbps(alloc, rest)
    return Plan(
        sets=tuple((c.name, chosen[c.name].devices) for c in request.containers),
        mask=mask,
        ring_gbps=None if ring_link is None else bandwidth_gbps(ring_link, gb_per_link),
        ring_link=ring_link,
        pair_gbps=sum(
            chosen[c.name].total_bandwidth_gbps
            for c in (request.exclusive or request.shared)
        ),
        remainder_gbps=remainder,
        left_ratio=_left_ratio(alloc, free_mask, mask, remainder),
        meets_min_link=True,
    )


def _place_exclusive(
    alloc: Allocator, free_mask: int, containers: tuple[ContainerRequest, ...],
    link: Link | None,
) -> list[tuple[str, Allocation]] | Rejection:
    """Disjoint sets for the app containers (largest first).

    Each container first gets the allocator's best set of what is left (greedy, which is
    what keeps sets good). When that leaves a later container without a set, an exact
    search over the first container's possible sets follows (at most ``_SEARCH_LIMIT``
    tries), so a pod is only rejected when no disjoint placement meeting the constraint
    exists at all.
    """
    multi = len(containers) > 1
    out: list[tuple[str, Allocation]] = []
    left = free_mask
    for k, c in enumerate(containers):
        r = alloc.best(c.count, left, 0, link)
        if isinstance(r, Infeasible):
            if k > 0:
                found = _search(alloc, free_mask, containers, link, [_SEARCH_LIMIT])
                if found is not None:
                    return found
            return _reject(r, c, multi)
        out.append((c.name, r))
        left &= ~r.mask
    return out


#: Candidate sets tried by the exact fallback search of a multi-container pod.
_SEARCH_LIMIT = 20_000


def _search(
    alloc: Allocator, free_mask: int, containers: tuple[ContainerRequest, ...],
    link: Link | None, budget: list[int],
) -> list[tuple[str, Allocation]] | None:
    first, rest = containers[0], containers[1:]
    if not rest:
        r = alloc.best(first.count, free_mask, 0, link)
        return None if isinstance(r, Infeasible) else [(first.name, r)]
    for combo in itertools.combinations(indices_of(free_mask), first.count):
        budget[0] -= 1
        if budget[0] < 0:
            return None
        m = mask_of(combo)
        r = alloc.best(first.count, m, 0, link)
        if isinstance(r, Infeasible):
            continue
        tail = _search(alloc, free_mask & ~m, rest, link, budget)
        if tail is not None:
            return [(first.name, r), *tail]
    return None


def _place_shared(
    alloc: Allocator, c: ContainerRequest, free_mask: int, union: int, link: Link | None
) -> Allocation | Infeasible:
    """A regular init container: inside the GPUs already placed, or around them."""
    in_union = bin(union).count("1")
    if union and c.count <= in_union:
        r = alloc.best(c.count, union, 0, link)
        if isinstance(r, Allocation):
            return r
    elif union:
        r = alloc.best(c.count, free_mask, union, link)
        if isinstance(r, Allocation):
            return r
    return alloc.best(c.count, free_mask, 0, link)


def _remainder_gbps(alloc: Allocator, rest: int) -> float:
    """Bandwidth among the GPUs of ``rest`` (the allocator's own table, memoized)."""
    n = bin(rest).count("1")
    if n < 2:
        return 0.0
    r = alloc.best(n, rest)
    return r.total_bandwidth_gbps if isinstance(r, Allocation) else 0.0


#: Weight of the cut link's class in ``Plan.left_ratio``; the rest is the bandwidth share.
_CUT_CLASS_WEIGHT = 0.75


def _left_ratio(alloc: Allocator, free_mask: int, pod_mask: int, remainder_gbps: float) -> float:
    """See ``Plan.left_ratio``."""
    rest = free_mask & ~pod_mask
    if not rest:
        return 1.0
    link = alloc.topology.link
    cut = max(link(i, j).rank for i in indices_of(pod_mask & free_mask) for j in indices_of(rest))
    best_pair = alloc.best(2, free_mask)
    best = best_pair.ring_link.rank if isinstance(best_pair, Allocation) \
        and best_pair.ring_link is not None else 0
    by_class = 1.0 if best <= 0 else max(0.0, 1.0 - cut / best)
    spare = _remainder_gbps(alloc, free_mask) - _remainder_gbps(alloc, pod_mask & free_mask)
    by_bandwidth = 1.0 if spare <= 0 else max(0.0, min(1.0, remainder_gbps / spare))
    return _CUT_CLASS_WEIGHT * by_class + (1 - _CUT_CLASS_WEIGHT) * by_bandwidth


def _reject(r: Infeasible, c: ContainerRequest, multi: bool) -> Rejection:
    reason = f"container {c.name}: {r.reason}" if multi else r.reason
    return Rejection(reason=reason, unresolvable=r.unresolvable)
