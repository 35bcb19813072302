"""Presets: every one builds, is named, and matches the real matrix it was made from."""

from __future__ import annotations

import pytest

from tests.topology.fixtures import PRESET_FIXTURES, fixture_text
from topology.links import Link
from topology.model import Topology, TopologyError
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS, Preset, preset
from topology.serialize import dump

REQUIRED = [
    "dgx1-v100", "dgx-a100", "hgx-h100", "aws-p4d", "pcie-8gpu-nvlink-pairs",
    "pcie-4gpu-nvlink-pairs", "pcie-8gpu-sys", "workstation-2gpu-nvlink", "gb200-4gpu",
    "nvswitch-16gpu", "pcie-16gpu-tree",
]


def _cells(t: Topology) -> list[list[str]]:
    cells: list[list[str]] = dump(t)["links"]
    return cells


class TestCatalogue:
    def test_required_presets_exist(self) -> None:
        """The presets other parts and the benchmarks name are all there."""
        assert set(REQUIRED) <= set(PRESETS)

    @pytest.mark.parametrize("name", sorted(PRESETS))
    def test_preset_is_complete(self, name: str) -> None:
        """Named after its key, with a description, a model, memory, NUMA and affinity."""
        p = PRESETS[name]
        assert isinstance(p, Preset) and p.name == name and p.description
        t = preset(name)
        assert t.name == name
        assert t == p.build()
        for g in t.gpus:
            assert g.model and g.memory_mib and g.memory_mib > 1000
            assert g.numa_node is not None and g.cpu_affinity

    def test_unknown_name_lists_known_ones(self) -> None:
        """An unknown name is a TopologyError (not KeyError) listing every preset."""
        with pytest.raises(TopologyError) as e:
            preset("dgx-9000")
        assert "dgx-9000" in str(e.value)
        for name in PRESETS:
            assert name in str(e.value)

    def test_presets_mapping_is_read_only(self) -> None:
        with pytest.raises(TypeError):
            PRESETS["x"] = PRESETS["dgx1-v100"]  # type: ignore[index]


class TestAgainstFixtures:
    @pytest.mark.parametrize("name", sorted(PRESET_FIXTURES))
    def test_preset_matches_its_fixture(self, name: str) -> None:
        """Same link matrix, NUMA nodes, CPU affinity and NICs as the parsed real matrix."""
        parsed = parse_topo_matrix(fixture_text(PRESET_FIXTURES[name]))
        t = preset(name)
        assert _cells(t) == _cells(parsed)
        assert [g.numa_node for g in t.gpus] == [g.numa_node for g in parsed.gpus]
        assert [g.cpu_affinity for g in t.gpus] == [g.cpu_affinity for g in parsed.gpus]
        assert t.nics == parsed.nics


class TestBenchmarkPresets:
    def test_nvswitch_16gpu(self) -> None:
        """DGX-2 class: 16 GPUs, NV6 between every pair, NUMA 0 for 0-7 and 1 for 8-15."""
        t = preset("nvswitch-16gpu")
        assert t.size == 16
        assert {t.link(i, j) for i in range(16) for j in range(16) if i != j} == {
            Link.parse("NV6")
        }
        assert [g.numa_node for g in t.gpus] == [0] * 8 + [1] * 8

    @pytest.mark.parametrize(
        ("i", "j", "cell"),
        [
            # 0,1 share a PCIe switch; 0-3 share the upper switch; 0-7 one socket; 0-8 not.
            (0, 1, "PIX"), (2, 3, "PIX"), (0, 2, "PXB"), (1, 3, "PXB"), (0, 4, "NODE"),
            (3, 7, "NODE"), (0, 8, "SYS"), (7, 8, "SYS"), (8, 9, "PIX"), (12, 15, "PXB"),
            (8, 15, "NODE"),
        ],
    )
    def test_pcie_16gpu_tree(self, i: int, j: int, cell: str) -> None:
        """The PCIe tree: PIX pairs, PXB quads, NODE within a socket, SYS across."""
        t = preset("pcie-16gpu-tree")
        assert t.size == 16
        assert str(t.link(i, j)) == cell

    def test_dgx1_hybrid_cube_mesh_has_six_links_per_gpu(self) -> None:
        """Every V100 in a DGX-1 has six NVLinks: NV1+NV1+NV2+NV2 to four peers."""
        t = preset("dgx1-v100")
        for i in range(8):
            assert sum(t.link(i, j).nvlinks for j in range(8) if j != i) == 6
