"""build_graph and the networkx-style helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from tests.strategies import topologies
from topology.graph import build_graph, numa_groups, nvlink_graph, nvlink_islands
from topology.model import Topology
from topology.presets import preset


class TestBuildGraph:
    def test_nodes_and_attributes(self) -> None:
        """One node per GPU carrying the Gpu's fields."""
        t = preset("dgx-a100")
        G = build_graph(t)
        assert sorted(G.nodes) == list(range(8))
        assert G.nodes[4]["numa_node"] == 7
        assert G.nodes[0]["model"] == "NVIDIA A100-SXM4-40GB"
        assert G.nodes[0]["cpu_affinity"] == "48-63,176-191"
        assert G.graph["fingerprint"] == t.fingerprint and G.graph["name"] == "dgx-a100"

    def test_edges(self) -> None:
        """Every pair is an edge with link, rank, bandwidth weight and the NVLink flag."""
        t = preset("dgx1-v100")
        G = build_graph(t)
        assert G.number_of_edges() == 28
        assert G.edges[0, 3] == {
            "link": "NV2", "rank": t.link(0, 3).rank, "weight": 50.0, "nvlink": True,
            "nvlinks": 2,
        }
        assert G.edges[0, 5]["link"] == "SYS" and not G.edges[0, 5]["nvlink"]
        assert G.edges[0, 5]["weight"] == 6.0

    @settings(max_examples=50, deadline=None)
    @given(topologies(max_gpus=8))
    def test_matches_topology(self, t: Topology) -> None:
        """Each edge says what the topology says."""
        G = build_graph(t)
        assert G.number_of_nodes() == t.size
        for i, j, d in G.edges(data=True):
            assert d["link"] == str(t.link(i, j))
            assert d["weight"] == t.bandwidth(i, j)
            assert d["rank"] == t.link(i, j).rank


class TestNvlinkGraph:
    def test_only_nvlink_edges(self) -> None:
        """All GPUs stay; PCIe pairs go."""
        H = nvlink_graph(preset("pcie-8gpu-nvlink-pairs"))
        assert H.number_of_nodes() == 8
        assert sorted(tuple(sorted(e)) for e in H.edges) == [(0, 2), (1, 3), (4, 5), (6, 7)]

    def test_accepts_a_graph(self) -> None:
        """Like networkx algorithms, the helpers take the graph too."""
        t = preset("dgx1-v100")
        assert nvlink_graph(build_graph(t)).number_of_edges() == 16


class TestIslands:
    @pytest.mark.parametrize(
        ("name", "islands"),
        [
            ("dgx1-v100", [set(range(8))]),
            ("pcie-8gpu-nvlink-pairs", [{0, 2}, {1, 3}, {4, 5}, {6, 7}]),
            ("pcie-4gpu-nvlink-pairs", [{0, 1}, {2}, {3}]),
            ("pcie-8gpu-sys", [{i} for i in range(8)]),
            ("nvswitch-16gpu", [set(range(16))]),
        ],
    )
    def test_islands(self, name: str, islands: list[set[int]]) -> None:
        """NVLink components, ordered by their lowest GPU."""
        assert nvlink_islands(preset(name)) == [frozenset(s) for s in islands]


class TestNumaGroups:
    def test_dgx_a100(self) -> None:
        """Groups in node order."""
        groups = numa_groups(preset("dgx-a100"))
        assert list(groups) == [1, 3, 5, 7]
        assert groups[3] == frozenset({0, 1})

    def test_unknown_last(self) -> None:
        """GPUs without a NUMA node form the None group, last."""
        t = preset("pcie-4gpu-nvlink-pairs")
        gpus = [t.gpus[0], t.gpus[1].__class__(index=1), *t.gpus[2:]]
        groups = numa_groups(t.with_gpus(gpus))
        assert list(groups) == [0, 1, None]
        assert groups[None] == frozenset({1})
