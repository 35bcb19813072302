"""Matrix text (re-parseable), DOT and SVG."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import topologies
from tests.topology.fixtures import PRESET_FIXTURES, fixture_text
from topology.model import Topology
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS, preset
from topology.render import to_dot, to_matrix_text, to_svg

SVG = "{http://www.w3.org/2000/svg}"


def _same_matrix(a: Topology, b: Topology) -> None:
    assert a.links == b.links
    assert a.nics == b.nics
    assert [g.numa_node for g in a.gpus] == [g.numa_node for g in b.gpus]
    assert [g.cpu_affinity for g in a.gpus] == [g.cpu_affinity for g in b.gpus]


class TestMatrixText:
    @pytest.mark.parametrize("name", sorted(PRESETS))
    def test_round_trip_presets(self, name: str) -> None:
        """parse_topo_matrix(to_matrix_text(t)) keeps links, NICs, NUMA and affinity."""
        t = preset(name)
        _same_matrix(parse_topo_matrix(to_matrix_text(t)), t)

    @pytest.mark.parametrize("stem", sorted(PRESET_FIXTURES.values()))
    def test_round_trip_fixtures(self, stem: str) -> None:
        """A parsed fixture, written and read again, is unchanged."""
        t = parse_topo_matrix(fixture_text(stem))
        _same_matrix(parse_topo_matrix(to_matrix_text(t)), t)

    @settings(max_examples=150, deadline=None)
    @given(topologies(max_gpus=10), st.sets(st.integers(0, 9)))
    def test_round_trip_random(self, t: Topology, highlight: set[int]) -> None:
        """Generated topologies survive the text form, with or without a highlight."""
        _same_matrix(parse_topo_matrix(to_matrix_text(t, highlight)), t)

    def test_layout(self) -> None:
        """Tab-separated like nvidia-smi, with affinity columns, legend and NIC legend."""
        text = to_matrix_text(preset("dgx1-v100"))
        lines = text.splitlines()
        assert lines[0] == "\t" + "\t".join(
            [f"GPU{i}" for i in range(8)] + ["NIC0", "CPU Affinity", "NUMA Affinity"]
        )
        assert lines[1] == "GPU0\t X \tNV1\tNV1\tNV2\tNV2\tSYS\tSYS\tSYS\tNODE\t0-11,24-35\t0"
        assert "Legend:" in lines and "  NIC0: mlx5_0" in lines

    def test_highlight_line(self) -> None:
        """The highlighted set is listed after the matrix (out-of-range indices dropped)."""
        text = to_matrix_text(preset("dgx1-v100"), highlight=[3, 0, 42])
        assert "Highlighted: GPU0 GPU3" in text.splitlines()

    def test_unknown_values_are_na(self) -> None:
        t = Topology.from_matrix([[None]])
        assert to_matrix_text(t).splitlines()[1] == "GPU0\t X \tN/A\tN/A"


class TestDot:
    def test_nvlink_edges_labelled_and_weighted(self) -> None:
        """Every NVLink pair is drawn with its NVn label, pen width and weight."""
        dot = to_dot(preset("dgx1-v100"))
        assert 'gpu0 -- gpu3 [label="NV2", penwidth=2.0, weight=50];' in dot
        assert 'gpu0 -- gpu1 [label="NV1", penwidth=1.5, weight=25];' in dot
        assert len(re.findall(r'label="NV\d+"', dot)) == 16

    def test_only_best_pcie_class_dashed(self) -> None:
        """Of the PCIe paths only the best class is drawn, dashed (PIX on the PCIe tree)."""
        dot = to_dot(preset("pcie-16gpu-tree"))
        edges = [line for line in dot.splitlines() if " -- " in line]
        assert len(edges) == 8
        assert all('label="PIX"' in e and 'style="dashed"' in e for e in edges)

    def test_highlight(self) -> None:
        """Highlighted GPUs are filled, and every pair inside the set is drawn red."""
        dot = to_dot(preset("pcie-16gpu-tree"), highlight=[0, 1, 2, 3])
        assert 'gpu0 [label="GPU0\\nNVIDIA L4", fillcolor="#ffb74d", penwidth=3];' in dot
        red = [line for line in dot.splitlines() if " -- " in line and "#d62728" in line]
        assert len(red) == 6  # the 4 choose 2 pairs, PXB ones included
        assert 'gpu0 -- gpu2 [label="PXB"' in dot

    def test_numa_clusters(self) -> None:
        dot = to_dot(preset("dgx-a100"))
        assert dot.count("subgraph cluster_numa") == 4
        assert 'label="NUMA 7"' in dot

    def test_name_is_escaped(self) -> None:
        t = Topology.from_matrix([[None]], name='a "quoted"\\name')
        assert dot_title(to_dot(t)) == 'graph "a \\"quoted\\"\\\\name" {'


def dot_title(dot: str) -> str:
    return dot.splitlines()[0]


class TestSvg:
    @pytest.mark.parametrize("name", sorted(PRESETS))
    def test_well_formed(self, name: str) -> None:
        """Every preset draws to well-formed XML with one circle per GPU."""
        root = ET.fromstring(to_svg(preset(name)))
        assert root.tag == f"{SVG}svg"
        gpus = [g for g in root.iter(f"{SVG}g") if "gpu" in g.get("class", "")]
        assert len(gpus) == preset(name).size

    def test_free_used_and_highlight(self) -> None:
        """Used GPUs are grey with the holder in the tooltip; free green; highlight outlined."""
        svg = to_svg(preset("dgx1-v100"), used={2: "ml/train-7"}, highlight=[0, 3])
        root = ET.fromstring(svg)
        by_gpu = {}
        for g in root.iter(f"{SVG}g"):
            title = g.find(f"{SVG}title")
            circle = g.find(f"{SVG}circle")
            assert title is not None and circle is not None and title.text
            by_gpu[title.text.split(":")[0]] = (title.text, circle, g.get("class"))
        text, circle, cls = by_gpu["GPU2"]
        assert "used by ml/train-7" in text
        assert circle.get("fill") == "#9e9e9e" and cls == "gpu used"
        text, circle, cls = by_gpu["GPU1"]
        assert "free" in text and circle.get("fill") == "#4caf50" and cls == "gpu free"
        assert by_gpu["GPU0"][1].get("stroke") == "#ff6f00"
        assert by_gpu["GPU3"][1].get("stroke") == "#ff6f00"
        assert by_gpu["GPU1"][1].get("stroke") != "#ff6f00"

    def test_nvlink_edges_width_and_labels(self) -> None:
        """DGX-1: 16 NVLink chords, NV2 wider than NV1, each labelled; no SYS drawn."""
        root = ET.fromstring(to_svg(preset("dgx1-v100")))
        lines = list(root.iter(f"{SVG}line"))
        assert len(lines) == 16
        widths = {}
        for line in lines:
            title = line.find(f"{SVG}title")
            assert title is not None and title.text
            widths[title.text.split(",")[0].split(": ")[1]] = float(line.get("stroke-width", 0))
        assert widths["NV2"] > widths["NV1"]
        labels = [t.text for t in root.iter(f"{SVG}text")]
        assert labels.count("NV2") == 8 and labels.count("NV1") == 8
        assert "SYS" not in labels

    def test_nvswitch_hub(self) -> None:
        """All pairs NV12: drawn as a switch hub with one spoke per GPU."""
        root = ET.fromstring(to_svg(preset("dgx-a100")))
        assert len(list(root.iter(f"{SVG}line"))) == 8
        assert "NVSwitch" in [t.text for t in root.iter(f"{SVG}text")]

    def test_highlighted_edges(self) -> None:
        """Links inside the highlighted set are drawn in the highlight colour."""
        root = ET.fromstring(to_svg(preset("pcie-8gpu-nvlink-pairs"), highlight=[0, 2]))
        orange = [ln for ln in root.iter(f"{SVG}line") if ln.get("stroke") == "#ff6f00"]
        assert len(orange) == 1

    def test_title(self) -> None:
        root = ET.fromstring(to_svg(preset("gb200-4gpu"), title="node-7 <gb200>"))
        assert root.find(f"{SVG}title") is not None
        assert root.find(f"{SVG}title").text == "node-7 <gb200>"  # type: ignore[union-attr]

    def test_self_contained(self) -> None:
        """No external references: no href, no url(), no <image>."""
        svg = to_svg(preset("dgx1-v100"), used={0: "x"})
        assert "href" not in svg and "url(" not in svg and "<image" not in svg

    @settings(max_examples=100, deadline=None)
    @given(
        topologies(max_gpus=8),
        st.dictionaries(st.integers(0, 9), st.text()),
        st.sets(st.integers(0, 9)),
        st.none() | st.text(),
    )
    def test_any_text_stays_well_formed(
        self, t: Topology, used: dict[int, str], highlight: set[int], title: str | None
    ) -> None:
        """Labels and titles with markup or control characters are escaped."""
        root = ET.fromstring(to_svg(t, used=used, highlight=highlight, title=title))
        assert root.tag == f"{SVG}svg"
