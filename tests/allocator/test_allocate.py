"""The allocator: exact against a brute-force reference, and right on real machines."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, given, settings

from tests.allocator.reference import best_key, ring_rank, total_bandwidth
from tests.strategies import requests
from topology.allocate import Allocation, Infeasible, allocator_for, best_set, mask_of
from topology.besteffort import best_effort
from topology.links import Link, parse_min_link
from topology.model import Topology
from topology.presets import preset


class TestAgainstBruteForce:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests())
    def test_optimal_for_constraint_ring_and_bandwidth(self, req) -> None:
        """Feasible exactly when some set is; then as good on criteria 1-3 as any set."""
        t, size, free, must, min_link_text = req
        min_link = parse_min_link(min_link_text) if min_link_text else None
        r = best_set(t, size, free=free, must_include=must, min_link=min_link)
        possible = (
            best_key(t, size, free, must, None if min_link is None else min_link.rank)
            if 1 <= size <= len(free) and must <= free and len(must) <= size
            else None
        )
        if possible is None:
            assert isinstance(r, Infeasible), r
            assert r.reason
            return
        assert isinstance(r, Allocation), r
        nodes = r.devices
        ring = ring_rank(t, nodes)
        assert ((1 << 10) if ring is None else ring, round(total_bandwidth(t, nodes), 4)) \
            == possible
        assert r.ring_link == (None if ring is None else Link(ring))

    @settings(max_examples=300, deadline=None)
    @given(requests())
    def test_never_returns_a_wrong_set(self, req) -> None:
        """Only free GPUs, no duplicates, the requested size, every must-include GPU."""
        t, size, free, must, min_link_text = req
        min_link = parse_min_link(min_link_text) if min_link_text else None
        r = best_set(t, size, free=free, must_include=must, min_link=min_link)
        if isinstance(r, Allocation):
            assert len(r.devices) == len(set(r.devices)) == size
            assert set(r.devices) <= free
            assert must <= set(r.devices)
            assert r.mask == mask_of(r.devices)
            if min_link is not None and size >= 2:
                assert r.ring_link is not None and r.ring_link >= min_link

    @settings(max_examples=60, deadline=None)
    @given(requests(max_gpus=8))
    def test_ring_at_least_as_good_as_best_effort(self, req) -> None:
        """Unconstrained, our ring bottleneck is never below NVIDIA's best-effort pick."""
        t, size, free, must, _ = req
        theirs = best_effort(t, size, sorted(free), sorted(must)) if must <= free else ()
        ours = best_set(t, size, free=free, must_include=must)
        if theirs:
            assert isinstance(ours, Allocation)
            mine, other = ring_rank(t, ours.devices), ring_rank(t, theirs)
            assert (mine is None and other is None) or mine >= other


def run_sequence(
    t: Topology, sizes: list[int], free: set[int] | None = None
) -> list[tuple[int, ...]]:
    free = set(range(t.size)) if free is None else set(free)
    out = []
    for size in sizes:
        r = best_set(t, size, free=free)
        assert isinstance(r, Allocation), r
        out.append(r.devices)
        free -= set(r.devices)
    return out


class TestRealMachines:
    def test_dgx1_four_pairs_are_four_nv2_pairs(self) -> None:
        t = preset("dgx1-v100")
        pairs = run_sequence(t, [2, 2, 2, 2])
        assert [str(t.link(a, b)) for a, b in pairs] == ["NV2"] * 4
        assert sorted(x for p in pairs for x in p) == list(range(8))

    def test_dgx1_two_quads_are_the_nvlink_complete_quads(self) -> None:
        t = preset("dgx1-v100")
        quads = run_sequence(t, [4, 4])
        assert sorted(quads) == [(0, 1, 2, 3), (4, 5, 6, 7)]
        for q in quads:
            assert all(t.link(a, b).is_nvlink for a in q for b in q if a != b)

    def test_one_gpu_takes_the_orphan_not_half_of_a_pair(self) -> None:
        """NV pairs 0-2, 1-3, 4-5, 6-7; GPU1 is used, so GPU3 is the orphan."""
        t = preset("pcie-8gpu-nvlink-pairs")
        r = best_set(t, 1, free=[0, 2, 3, 4, 5])
        assert isinstance(r, Allocation) and r.devices == (3,)

    def test_one_gpu_on_nvswitch_keeps_numa_nodes_whole(self) -> None:
        """DGX A100: GPUs 0,1 share NUMA 3; with GPU0 used, GPU1 goes before any other."""
        t = preset("dgx-a100")
        r = best_set(t, 1, free=range(1, 8))
        assert isinstance(r, Allocation) and r.devices == (1,)

    def test_nvswitch_quad_stays_on_one_numa_node(self) -> None:
        t = preset("hgx-h100")
        first, second = run_sequence(t, [4, 4])
        for quad in (first, second):
            assert len({t.gpus[i].numa_node for i in quad}) == 1

    def test_nvswitch_fills_the_broken_numa_node_first(self) -> None:
        """HGX H100, GPUs 0-2 (NUMA 0) used: a 1-GPU pod takes GPU3, the last on NUMA 0."""
        t = preset("hgx-h100")
        r = best_set(t, 1, free=range(3, 8))
        assert isinstance(r, Allocation) and r.devices == (3,)

    def test_all_sys_server_prefers_one_numa_node(self) -> None:
        t = preset("pcie-8gpu-sys")
        r = best_set(t, 2, free=[0, 4, 5, 6])
        assert isinstance(r, Allocation)
        assert len({t.gpus[i].numa_node for i in r.devices}) == 1

    def test_pcie_tree_keeps_to_the_lowest_switch(self) -> None:
        t = preset("pcie-16gpu-tree")
        pair = best_set(t, 2)
        quad = best_set(t, 4)
        assert isinstance(pair, Allocation) and str(pair.ring_link) == "PIX"
        assert isinstance(quad, Allocation) and str(quad.ring_link) == "PXB"

    def test_nvswitch_16_gpus_full_node(self) -> None:
        t = preset("nvswitch-16gpu")
        r = best_set(t, 16)
        assert isinstance(r, Allocation) and r.devices == tuple(range(16))
        assert r.ring_link is not None and r.ring_link.is_nvlink


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    size: int
    free: list[int] | None = None
    must: tuple[int, ...] = ()
    min_link: str | None = None
    reason: str
    unresolvable: bool


# DGX-1: GPUs 0-3 and 4-7 are NVLink quads; 0,1 / 5,6 have only SYS to each other.
CASES = [
    Case(name="zero", size=0, reason="requested 0 GPUs; at least 1 is needed", unresolvable=True),
    Case(name="more-than-node", size=9, reason="requested 9 GPUs; the node has 8",
         unresolvable=True),
    Case(name="more-than-free", size=4, free=[0, 1, 5], reason="3 free GPUs (0,1,5): 4 requested",
         unresolvable=False),
    Case(name="must-not-free", size=2, free=[0, 1], must=(3,),
         reason="must-include GPU 3 is not free", unresolvable=False),
    Case(name="must-too-many", size=2, must=(1, 2, 3),
         reason="3 must-include GPUs (1,2,3) do not fit in a set of 2", unresolvable=True),
    Case(name="no-nvlink-ring", size=4, free=[0, 1, 5, 6], min_link="nvlink",
         reason="4 free GPUs (0,1,5,6): no NVLink ring of 4", unresolvable=False),
    # No ring of 4 on DGX-1 has every hop NV2 (the NV2 links form one 8-cycle).
    Case(name="never-nv2-quad", size=4, min_link="NV2",
         reason="8 free GPUs (0,1,2,3,4,5,6,7): no NV2-or-better ring of 4", unresolvable=True),
    Case(name="no-nvlink-pair", size=2, free=[0, 5], min_link="nvlink",
         reason="2 free GPUs (0,5): no NVLink pair", unresolvable=False),
    Case(name="unknown-gpu", size=1, free=[8], reason="GPU 8 does not exist on this 8-GPU node",
         unresolvable=True),
    Case(name="nothing-free", size=1, free=[], reason="no free GPUs: 1 requested",
         unresolvable=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_infeasible_requests_say_why(case: Case) -> None:
    t = preset("dgx1-v100")
    r = best_set(t, case.size, free=case.free, must_include=case.must,
                 min_link=parse_min_link(case.min_link) if case.min_link else None)
    assert r == Infeasible(reason=case.reason, unresolvable=case.unresolvable)


def test_answers_are_memoized_per_fingerprint() -> None:
    """Two nodes of the same model share one allocator and one memoized answer."""
    a = preset("dgx1-v100")
    b = a.with_gpus(replace(g, uuid=f"GPU-x{g.index}", pci_bus_id=None) for g in a.gpus)
    assert allocator_for(a) is allocator_for(b)
    assert best_set(a, 2, free=[0, 3, 4]) is best_set(b, 2, free=[0, 3, 4])


def test_must_include_is_honoured_even_when_worse() -> None:
    t = preset("dgx1-v100")
    r = best_set(t, 2, must_include=[5], free=[0, 3, 5])
    assert isinstance(r, Allocation) and 5 in r.devices


def test_best_ring_possible() -> None:
    a = allocator_for(preset("dgx1-v100"))
    assert str(a.best_ring_possible(2)) == "NV2"
    assert str(a.best_ring_possible(4)) == "NV1"
    assert a.best_ring_possible(1) is None
