"""The exact GPU-set allocator.

Given a topology, the free GPUs, a size ``k``, GPUs that must be included and a minimum
link class, pick the best ``k``-set. "Best" is this order, compared lexicographically:

1. the constraint holds: the weakest link of the best ring through the set is at least
   ``min_link`` (for ``k = 2`` the pair's link; ``k = 1`` has no links and always holds);
2. the weakest link of the best ring through the set, as high as possible: what a ring
   all-reduce gets (the *bottleneck Hamiltonian cycle* of the set);
3. the total pairwise bandwidth inside the set, as high as possible (all-to-all);
4. what is left behind: the total pairwise bandwidth among the free GPUs that remain, as
   high as possible. With 1-3 equal, this is the same as cutting the least bandwidth
   between the set and the rest, so an orphan GPU is taken before one of an NVLink pair
   or quad is broken (NVIDIA/k8s-device-plugin#1193);
5. GPUs on as few NUMA nodes as possible; then the most same-NUMA pairs left among the
   free GPUs (take GPUs from the NUMA node that is already broken into, so the next pod
   finds a whole one: on NVSwitch machines, where every pair is equal, this decides);
6. lowest GPU indices, only so that the answer is deterministic.

Exactness: for each topology (cached by its fingerprint) the allocator tabulates every
subset of GPUs once: its ring bottleneck (a Held-Karp style bitmask DP over Hamiltonian
paths that keeps the best bottleneck per end vertex), its internal bandwidth and its NUMA
spread. At 8 GPUs that is 256 subsets; at 16 it is 65,536 (12,870 of size 8). A request
then scans the subsets of its size (at most 12,870) with numpy, and its answer is memoized
by ``(size, free mask, must-include mask, min link)`` per fingerprint. Nodes of more than
``MAX_ALLOCATOR_GPUS`` GPUs are refused with a reason, not approximated.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from topology.gpuids import indices_of, mask_of
from topology.links import ANY_NVLINK, Link
from topology.model import MAX_ALLOCATOR_GPUS, Topology

__all__ = [
    "Allocation",
    "Allocator",
    "Infeasible",
    "Result",
    "allocator_for",
    "best_set",
    "indices_of",
    "mask_of",
]

_IntArray = npt.NDArray[np.int64]

#: Ring value of a 1-GPU set: no links, so above every real link rank.
_NO_RING: Final = 1 << 10
#: Bandwidth is tabulated as integers in units of 1/10,000 GB/s (exact for the model).
_BW_SCALE: Final = 10_000
#: Memoized answers per topology before the memo is dropped and refilled.
_MEMO_LIMIT: Final = 200_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation:
    """The chosen set and the figures it was chosen by."""

    devices: tuple[int, ...]
    mask: int
    ring_link: Link | None
    total_bandwidth_gbps: float
    remainder_bandwidth_gbps: float
    numa_nodes: tuple[int, ...]

    def explain(self) -> str:
        gpus = ",".join(map(str, self.devices))
        ring = "no links (1 GPU)" if self.ring_link is None else f"ring bottleneck {self.ring_link}"
        numa = ",".join(map(str, self.numa_nodes)) or "unknown"
        return (
            f"GPUs {gpus}: {ring}, {self.total_bandwidth_gbps:g} GB/s between them, "
            f"{self.remainder_bandwidth_gbps:g} GB/s left among the other free GPUs, "
            f"NUMA {numa}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Infeasible:
    """No set fits. ``unresolvable``: not even with every GPU of the node free."""

    reason: str
    unresolvable: bool


Result = Allocation | Infeasible


def _subset_sums(values: list[int]) -> _IntArray:
    """``out[m]`` = sum of ``values[j]`` for bits ``j`` of ``m`` (length ``2**len``)."""
    out = np.zeros(1, dtype=np.int64)
    for v in values:
        out = np.concatenate((out, out + v))
    return out


def _subset_ors(values: list[int]) -> _IntArray:
    out = np.zeros(1, dtype=np.int64)
    for v in values:
        out = np.concatenate((out, out | v))
    return out


def _popcount(a: _IntArray) -> _IntArray:
    c = np.zeros_like(a)
    x = a.copy()
    while np.any(x):
        c += x & 1
        x >>= 1
    return c


class _Tables:
    """Per-subset figures of one topology; built once per fingerprint."""

    def __init__(self, t: Topology) -> None:
        n = t.size
        self.n = n
        size = 1 << n
        rank = np.full((n, n), -1, dtype=np.int16)
        weight = [[0] * n for _ in range(n)]
        same_numa = [[0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i != j:
                    rank[i, j] = t.link(i, j).rank
                    weight[i][j] = round(t.bandwidth(i, j) * _BW_SCALE)
                    ni, nj = t.gpus[i].numa_node, t.gpus[j].numa_node
                    same_numa[i][j] = int(ni is not None and ni == nj)

        masks = np.arange(size, dtype=np.int64)
        # Pairwise sums built bit by bit: adding GPU b adds its pairs with GPUs < b.
        bw = np.zeros(1, dtype=np.int64)
        numa_pairs = np.zeros(1, dtype=np.int64)
        for b in range(n):
            bw = np.concatenate((bw, bw + _subset_sums(weight[b][:b])))
            numa_pairs = np.concatenate((numa_pairs, numa_pairs + _subset_sums(same_numa[b][:b])))
        numa_ids = sorted({g.numa_node for g in t.gpus if g.numa_node is not None})
        numa_bit = [
            1 << numa_ids.index(g.numa_node) if g.numa_node is not None else 0 for g in t.gpus
        ]
        self.numa_ids = tuple(numa_ids)
        self.numa_bits = _subset_ors(numa_bit)
        self.numa_count = _popcount(self.numa_bits)
        self.bw = bw
        self.numa_pairs = numa_pairs
        popcount = _popcount(masks)
        self.by_size = [masks[popcount == k] for k in range(n + 1)]
        self.ring = self._rings(rank, masks)
        # Bit-reversed masks: larger means lower GPU indices (the final tie-break).
        rev = np.zeros(size, dtype=np.int64)
        for i in range(n):
            rev |= ((masks >> i) & 1) << (n - 1 - i)
        self.rev = rev

    def _rings(self, rank: npt.NDArray[np.int16], masks: _IntArray) -> _IntArray:
        """Bottleneck of the best Hamiltonian cycle of every subset.

        ``best[m, v]``: the best bottleneck of a path that starts at the lowest GPU of
        ``m``, visits every GPU of ``m`` once and ends at ``v`` (-1: none). Closing the
        path back to the start gives the ring.
        """
        n, size = self.n, 1 << self.n
        low = np.zeros(size, dtype=np.int64)
        nz = masks > 0
        low[nz] = np.log2((masks & -masks)[nz]).astype(np.int64)
        best = np.full((size, n), -1, dtype=np.int16)
        for s in range(n):
            best[1 << s, s] = _NO_RING
        ring = np.full(size, _NO_RING, dtype=np.int64)
        for p in range(2, n + 1):
            layer = self.by_size[p]
            layer_low = low[layer]
            for u in range(n):
                sel = layer[((layer >> u) & 1).astype(bool) & (layer_low != u)]
                if sel.size == 0:
                    continue
                prev = sel ^ (1 << u)
                best[sel, u] = np.minimum(best[prev], rank[:, u][None, :]).max(axis=1)
            closing = rank[:, layer_low].T  # closing[r, v] = rank(v, start of row r)
            ring[layer] = np.minimum(best[layer], closing).max(axis=1)
        return ring


class Allocator:
    """The allocator of one topology; answers are memoized. Thread-safe."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.n = topology.size
        self.full_mask = (1 << self.n) - 1
        self._tables: _Tables | None = None
        self._memo: dict[tuple[int, int, int, int], Result] = {}
        self._lock = threading.Lock()

    @property
    def tables(self) -> _Tables:
        if self._tables is None:
            with self._lock:
                if self._tables is None:
                    self._tables = _Tables(self.topology)
        return self._tables

    def best(
        self, size: int, free_mask: int | None = None, must_mask: int = 0,
        min_link: Link | None = None,
    ) -> Result:
        """The best ``size``-set inside ``free_mask`` (None: all) containing ``must_mask``."""
        free = self.full_mask if free_mask is None else free_mask
        key = (size, free, must_mask, -1 if min_link is None else min_link.rank)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        result = self._choose(size, free, must_mask, min_link)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = result
        return result

    def best_ring_possible(self, size: int) -> Link | None:
        """The best ring any ``size``-set of the whole node has (None for size 1 or none)."""
        if self.n > MAX_ALLOCATOR_GPUS or not 2 <= size <= self.n:
            return None
        return Link(int(self.tables.ring[self.tables.by_size[size]].max()))

    def _choose(self, size: int, free: int, must: int, min_link: Link | None) -> Result:
        n = self.n
        if n > MAX_ALLOCATOR_GPUS:
            return Infeasible(
                reason=f"node has {n} GPUs; the allocator handles up to {MAX_ALLOCATOR_GPUS}",
                unresolvable=True,
            )
        if size < 1:
            return Infeasible(reason=f"requested {size} GPUs; at least 1 is needed",
                              unresolvable=True)
        unknown = (free | must) & ~self.full_mask
        if free < 0 or must < 0 or unknown:
            bad = ",".join(map(str, indices_of(unknown))) if unknown > 0 else "negative index"
            return Infeasible(reason=f"GPU {bad} does not exist on this {n}-GPU node",
                              unresolvable=True)
        if size > n:
            return Infeasible(reason=f"requested {size} GPUs; the node has {n}",
                              unresolvable=True)
        n_must = bin(must).count("1")
        if n_must > size:
            return Infeasible(
                reason=f"{n_must} must-include GPUs ({_list(must)}) do not fit in a set of {size}",
                unresolvable=True,
            )
        n_free = bin(free).count("1")
        free_text = f"{n_free} free GPUs ({_list(free)})" if n_free else "no free GPUs"
        if must & ~free:
            taken = indices_of(must & ~free)
            word = "GPU" if len(taken) == 1 else "GPUs"
            verb = "is" if len(taken) == 1 else "are"
            return Infeasible(
                reason=f"must-include {word} {','.join(map(str, taken))} {verb} not free",
                unresolvable=False,
            )
        if n_free < size:
            return Infeasible(reason=f"{free_text}: {size} requested", unresolvable=False)

        tb = self.tables
        cand = tb.by_size[size]
        cand = cand[((cand & ~free) == 0) & ((cand & must) == must)]
        ring = tb.ring[cand]
        if min_link is not None and size >= 2:
            ok = ring >= min_link.rank
            if not ok.any():
                every = tb.by_size[size]
                every = every[(every & must) == must]
                possible = bool((tb.ring[every] >= min_link.rank).any())
                return Infeasible(
                    reason=f"{free_text}: no {_label(min_link)} {_shape(size)}",
                    unresolvable=not possible,
                )
            cand, ring = cand[ok], ring[ok]
        # Criteria 2..6, each narrowing the tie of the one before.
        cand = cand[ring == ring.max()]
        for key in (
            lambda c: tb.bw[c],
            lambda c: tb.bw[free ^ c],
            lambda c: -tb.numa_count[c],
            lambda c: tb.numa_pairs[free ^ c],
            lambda c: tb.rev[c],
        ):
            if cand.size == 1:
                break
            values = key(cand)
            cand = cand[values == values.max()]
        chosen = int(cand[0])
        return self._allocation(chosen, free)

    def _allocation(self, chosen: int, free: int) -> Allocation:
        tb = self.tables
        ring_value = int(tb.ring[chosen])
        numa_bits = int(tb.numa_bits[chosen])
        return Allocation(
            devices=indices_of(chosen),
            mask=chosen,
            ring_link=None if ring_value == _NO_RING else Link(ring_value),
            total_bandwidth_gbps=int(tb.bw[chosen]) / _BW_SCALE,
            remainder_bandwidth_gbps=int(tb.bw[free & ~chosen]) / _BW_SCALE,
            numa_nodes=tuple(tb.numa_ids[i] for i in indices_of(numa_bits)),
        )


def _list(mask: int) -> str:
    return ",".join(map(str, indices_of(mask)))


def _label(link: Link) -> str:
    if link == ANY_NVLINK:
        return "NVLink"
    return f"{link}-or-better"


def _shape(size: int) -> str:
    return "pair" if size == 2 else f"ring of {size}"


_ALLOCATORS: dict[str, Allocator] = {}
_ALLOCATORS_LOCK = threading.Lock()


def allocator_for(topology: Topology) -> Allocator:
    """The shared allocator of every topology with this fingerprint."""
    a = _ALLOCATORS.get(topology.fingerprint)
    if a is None:
        with _ALLOCATORS_LOCK:
            a = _ALLOCATORS.setdefault(topology.fingerprint, Allocator(topology))
    return a


def best_set(
    topology: Topology,
    size: int,
    *,
    free: Iterable[int] | None = None,
    must_include: Iterable[int] = (),
    min_link: Link | None = None,
) -> Result:
    """The best ``size``-set of ``topology``'s free GPUs; see the module docstring.

    >>> from topology.links import Link
    >>> nv, pix, sys = Link.parse("NV2"), Link.parse("PIX"), Link.parse("SYS")
    >>> t = Topology.from_matrix([
    ...     [None, nv, pix, sys],
    ...     [nv, None, sys, pix],
    ...     [pix, sys, None, nv],
    ...     [sys, pix, nv, None],
    ... ])
    >>> best_set(t, 2).devices
    (0, 1)
    >>> best_set(t, 2, free=[1, 2, 3]).devices
    (2, 3)
    >>> best_set(t, 2, free=[0, 2, 3], min_link=Link.parse("nv1")).devices
    (2, 3)
    >>> best_set(t, 2, free=[0, 3], min_link=Link.parse("nv1")).reason
    '2 free GPUs (0,3): no NVLink pair'
    """
    free_mask = None if free is None else _checked_mask(free)
    must_mask = _checked_mask(must_include)
    if free_mask == -1 or must_mask == -1:
        return Infeasible(reason="GPU indices must be non-negative", unresolvable=True)
    return allocator_for(topology).best(size, free_mask, must_mask, min_link)


def _checked_mask(indices: Iterable[int]) -> int:
    m = 0
    for i in indices:
        if i < 0:
            return -1
        m |= 1 << i
    return m
