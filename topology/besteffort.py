"""NVIDIA's best-effort GPU policy, reimplemented from its published description.

This is the baseline the benchmark measures the exact allocator against (speed, and the
weakest ring link of what it picks). It is not used to place pods.

The policy (go-gpuallocator ``besteffort_policy.go``, as documented there):

* score every GPU pair by its link: cross-CPU 10, same CPU 20, host bridge 30,
  multiple PCIe switches 40, single PCIe switch 50, same board 60, plus 100 per NVLink;
* pad the free GPUs to a multiple of ``k``, enumerate every partition of them into sets
  of size ``k``, keep the partition with the highest total of set scores (a set's score
  is the sum of its pairs' scores) among those with a set holding every must-include GPU;
* return the best-scoring set of that partition that holds the must-include GPUs.

``nvidia-smi topo -m`` prints ``NV<n>`` for an NVLink pair and hides the PCIe path under
it; the pair is then scored ``100 * n`` plus 20 on one NUMA node, else 10.

The number of partitions is ``(m-1)!! `` for pairs of ``m`` GPUs: 105 at 8, 2,027,025 at 16.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from topology.links import Link, LinkKind
from topology.model import Topology

__all__ = ["best_effort", "pair_score", "partitions"]

_PCIE_SCORE = {
    LinkKind.SYS: 10,
    LinkKind.NODE: 20,
    LinkKind.PHB: 30,
    LinkKind.PXB: 40,
    LinkKind.PIX: 50,
}
NVLINK_SCORE_PER_LINK = 100


def pair_score(t: Topology, i: int, j: int) -> int:
    link: Link = t.link(i, j)
    if link.is_nvlink:
        ni, nj = t.gpus[i].numa_node, t.gpus[j].numa_node
        return NVLINK_SCORE_PER_LINK * link.nvlinks + (20 if ni is not None and ni == nj else 10)
    return _PCIE_SCORE[link.kind]


def partitions(items: Sequence[int | None], size: int) -> Iterator[list[tuple[int | None, ...]]]:
    """Every partition of ``items`` (a multiple of ``size`` long) into sets of ``size``."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]

    def groups(start: int, need: int) -> Iterator[tuple[int, ...]]:
        if need == 0:
            yield ()
            return
        for pos in range(start, len(rest) - need + 1):
            for tail in groups(pos + 1, need - 1):
                yield (pos, *tail)

    for picked in groups(0, size - 1):
        group = (first, *(rest[p] for p in picked))
        chosen = set(picked)
        remaining = [x for p, x in enumerate(rest) if p not in chosen]
        for sub in partitions(remaining, size):
            yield [group, *sub]


def best_effort(
    t: Topology, size: int, free: Sequence[int], must_include: Sequence[int] = ()
) -> tuple[int, ...]:
    """The set the best-effort policy picks (empty when it picks none)."""
    if size <= 0 or len(free) < size or len(must_include) > size:
        return ()
    scores = {(i, j): pair_score(t, i, j) for i in free for j in free if i < j}
    must = set(must_include)

    def set_score(s: tuple[int | None, ...]) -> int:
        real = sorted(x for x in s if x is not None)
        return sum(scores[(a, b)] for n, a in enumerate(real) for b in real[n + 1:])

    padded: list[int | None] = list(free) + [None] * ((-len(free)) % size)
    best: list[tuple[int | None, ...]] | None = None
    best_total = 0
    for candidate in partitions(padded, size):
        if not any(must <= set(s) and None not in s for s in candidate):
            continue
        total = sum(set_score(s) for s in candidate)
        if best is None or total > best_total:
            best, best_total = candidate, total
    if best is None:
        return ()
    sets = [s for s in best if must <= set(s) and None not in s]
    sets.sort(key=set_score, reverse=True)
    return tuple(sorted(x for x in sets[0] if x is not None))
