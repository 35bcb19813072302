"""A slow, obviously-correct reference for the allocator's criteria 1-3.

Independent of topology.allocate: rings are found by depth-first search for a
Hamiltonian cycle in the graph of links at or above a threshold, not by the bitmask DP.
"""

from __future__ import annotations

from itertools import combinations

from topology.model import Topology


def has_ring(t: Topology, nodes: tuple[int, ...], threshold: int) -> bool:
    k = len(nodes)
    if k == 1:
        return True
    if k == 2:
        return t.link(nodes[0], nodes[1]).rank >= threshold
    start = nodes[0]
    adj = {a: [b for b in nodes if b != a and t.link(a, b).rank >= threshold] for a in nodes}

    def dfs(v: int, seen: set[int]) -> bool:
        if len(seen) == k:
            return start in adj[v]
        return any(dfs(w, seen | {w}) for w in adj[v] if w not in seen)

    return dfs(start, {start})


def ring_rank(t: Topology, nodes: tuple[int, ...]) -> int | None:
    """Bottleneck of the best ring through ``nodes`` (None for one GPU)."""
    if len(nodes) == 1:
        return None
    ranks = sorted({t.link(a, b).rank for a, b in combinations(nodes, 2)}, reverse=True)
    for r in ranks:
        if has_ring(t, nodes, r):
            return r
    raise AssertionError("a complete graph always has a ring at its lowest rank")


def total_bandwidth(t: Topology, nodes: tuple[int, ...]) -> float:
    return sum(t.bandwidth(a, b) for a, b in combinations(nodes, 2))


def best_key(
    t: Topology, size: int, free: set[int], must: set[int], min_rank: int | None
) -> tuple[int, float] | None:
    """The best (ring rank, total bandwidth) of any valid set, or None when none is valid."""
    best: tuple[int, float] | None = None
    for nodes in combinations(sorted(free), size):
        if not must <= set(nodes):
            continue
        r = ring_rank(t, nodes)
        rr = 1 << 10 if r is None else r
        if min_rank is not None and size >= 2 and rr < min_rank:
            continue
        key = (rr, round(total_bandwidth(t, nodes), 4))
        if best is None or key > best:
            best = key
    return best
