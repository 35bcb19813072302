"""parse_topo_matrix: every real fixture, the PARTIAL one refused, broken inputs, fuzz."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.topology.fixtures import (
    PARTIAL_STEM,
    PRESET_FIXTURES,
    complete_fixture_stems,
    fixture_text,
    have_fixtures,
)
from topology.links import Link
from topology.model import TopologyError
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS
from topology.render import to_matrix_text

ALL_STEMS = sorted(set(PRESET_FIXTURES.values()) | set(complete_fixture_stems()))


@dataclass(frozen=True, kw_only=True)
class FixtureFacts:
    """What a fixture must parse to, read off the file by eye."""

    stem: str
    gpus: int
    numa: tuple[int | None, ...]
    nics: tuple[str, ...]
    cells: tuple[tuple[int, int, str], ...]
    cpu0: str


FACTS = [
    FixtureFacts(
        stem="dgx1_v100_hybrid_cube_mesh_1nic",
        gpus=8,
        # no NUMA column: inferred from the two CPU Affinity strings
        numa=(0, 0, 0, 0, 1, 1, 1, 1),
        nics=("mlx5_0",),
        cells=((0, 3, "NV2"), (0, 5, "SYS"), (0, 1, "NV1"), (3, 7, "NV1"), (6, 7, "NV2")),
        cpu0="0-11,24-35",
    ),
    FixtureFacts(
        stem="dgx_a100_8gpu_nv12_10nics",
        gpus=8,
        numa=(3, 3, 1, 1, 7, 7, 5, 5),
        nics=tuple(f"mlx5_{k}" for k in range(10)),  # from the NIC Legend, not NIC0..
        cells=((0, 7, "NV12"), (3, 4, "NV12")),
        cpu0="48-63,176-191",
    ),
    FixtureFacts(
        stem="hgx_h100_class_8gpu_nv18_13nics",
        gpus=8,
        numa=(0, 0, 0, 0, 1, 1, 1, 1),
        nics=tuple(f"mlx5_ib{k}" for k in range(8)) + tuple(f"mlx5_eth{k}" for k in range(5)),
        cells=((0, 1, "NV18"), (2, 6, "NV18")),
        cpu0="0-55,112-167",
    ),
    FixtureFacts(
        stem="aws_p4d_24xlarge",
        gpus=8,
        numa=(0, 0, 0, 0, 1, 1, 1, 1),
        nics=(),
        cells=((0, 4, "NV12"),),
        cpu0="0-23,48-71",
    ),
    FixtureFacts(
        stem="pcie_8gpu_nvlink_bridge_pairs_nv12",
        gpus=8,
        numa=(0, 0, 0, 0, 1, 1, 1, 1),
        nics=(),
        cells=((0, 2, "NV12"), (1, 3, "NV12"), (0, 1, "SYS"), (4, 5, "NV12"), (6, 7, "NV12")),
        cpu0="0-31",
    ),
    FixtureFacts(
        stem="pcie_4x_a100_nvlink_bridge_pairs_2nics",
        gpus=4,
        numa=(0, 0, 1, 1),
        nics=("mlx5_0", "mlx5_1"),
        cells=((0, 1, "NV12"), (2, 3, "NODE"), (1, 2, "SYS")),
        cpu0="0-27,56-83",
    ),
    FixtureFacts(
        stem="pcie_8x_rtx4090_dual_socket_all_sys_2nics",
        gpus=8,
        numa=(0, 0, 0, 0, 1, 1, 1, 1),
        nics=("NIC0", "NIC1"),  # no NIC Legend in this one: the column names stay
        cells=((0, 7, "SYS"), (3, 4, "SYS")),
        cpu0="0-55,112-167",
    ),
    FixtureFacts(
        stem="workstation_2x_rtx3090_nvlink_bridge_nv4",
        gpus=2,
        numa=(0, 0),
        nics=(),
        cells=((0, 1, "NV4"),),
        cpu0="0-5",
    ),
    FixtureFacts(
        stem="gb200_4gpu_nv18",
        gpus=4,
        numa=(0, 0, 1, 1),
        nics=(),
        cells=((0, 3, "NV18"), (1, 2, "NV18")),
        cpu0="0-71",
    ),
]


class TestFixtures:
    @pytest.mark.parametrize("stem", ALL_STEMS)
    def test_every_complete_fixture_parses(self, stem: str) -> None:
        """Each real fixture (all but PARTIAL) gives a consistent topology."""
        t = parse_topo_matrix(fixture_text(stem), name=stem)
        assert t.name == stem
        assert t.size >= 2
        assert all(g.cpu_affinity for g in t.gpus)
        for nic in t.nics:
            assert len(nic.links) == t.size

    @pytest.mark.parametrize("facts", FACTS, ids=lambda f: f.stem)
    def test_fixture_facts(self, facts: FixtureFacts) -> None:
        """GPU count, chosen cells, NUMA nodes, NIC names and CPU affinity as in the file."""
        t = parse_topo_matrix(fixture_text(facts.stem))
        assert t.size == facts.gpus
        assert tuple(g.numa_node for g in t.gpus) == facts.numa
        assert tuple(n.name for n in t.nics) == facts.nics
        assert t.gpus[0].cpu_affinity == facts.cpu0
        for i, j, cell in facts.cells:
            assert str(t.link(i, j)) == cell, (i, j)
            assert str(t.link(j, i)) == cell, (j, i)

    def test_dgx1_nic_links_come_from_the_gpu_rows(self) -> None:
        """mlx5_0 sits under GPU2/GPU3's switch (PIX), NODE to GPU0/1, SYS to the other socket."""
        t = parse_topo_matrix(fixture_text("dgx1_v100_hybrid_cube_mesh_1nic"))
        assert [str(c) for c in t.nics[0].links] == ["NODE", "NODE", "PIX", "PIX"] + ["SYS"] * 4

    def test_rtx4090_phb_nic(self) -> None:
        """The tab-separated file with empty fields: NIC0 is PHB to GPU6 only."""
        t = parse_topo_matrix(fixture_text("pcie_8x_rtx4090_dual_socket_all_sys_2nics"))
        assert [str(c) for c in t.nics[0].links] == ["SYS"] * 6 + ["PHB", "SYS"]

    def test_partial_fixture_is_refused_naming_what_is_missing(self) -> None:
        """The DGX-2 excerpt stops after GPU3: refused, naming GPU4..GPU15."""
        with pytest.raises(TopologyError) as e:
            parse_topo_matrix(fixture_text(PARTIAL_STEM))
        assert str(e.value) == (
            "matrix cut short: header names 16 GPUs but rows stop after GPU3 "
            "(GPU4..GPU15 missing)"
        )


GOOD = """\
# source: hand-made
nvidia-smi topo -m
        GPU0    GPU1    GPU2    mlx5_0  CPU Affinity    NUMA Affinity
GPU0     X      NV1     SYS     PIX     0-7             0
GPU1    NV1      X      SYS     PIX     0-7             0
GPU2    SYS     SYS      X      SYS     8-15            1
mlx5_0  PIX     PIX     SYS      X
"""


def _edit(old: str, new: str, count: int = 1) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, count)


@dataclass(frozen=True, kw_only=True)
class Broken:
    name: str
    text: str
    message: str  # a substring the error must contain


BROKEN = [
    Broken(name="empty", text="", message="empty input"),
    Broken(name="blank lines only", text="\n  \n\t\n", message="empty input"),
    Broken(name="no header", text="hello\nworld\n", message="no GPU header line"),
    Broken(
        name="cut short",
        text="\n".join(GOOD.splitlines()[:4]),
        message="matrix cut short: header names 3 GPUs but rows stop after GPU0 "
        "(GPU1..GPU2 missing)",
    ),
    Broken(
        name="cut short by one",
        text="\n".join(GOOD.splitlines()[:5]),
        message="rows stop after GPU1 (GPU2 missing)",
    ),
    Broken(
        name="header only",
        text="\n".join(GOOD.splitlines()[:3]),
        message="header names 3 GPUs but no GPU rows follow it (GPU0..GPU2 missing)",
    ),
    Broken(
        name="too few cells",
        text=_edit("GPU1    NV1      X      SYS     PIX", "GPU1    NV1      X      SYS"),
        message="row GPU1 has too few cells: expected 6",
    ),
    Broken(
        name="too many cells",
        text=_edit("8-15            1", "8-15            1    7"),
        message="row GPU2 has too many cells",
    ),
    Broken(
        name="NIC row too short",
        text=_edit("mlx5_0  PIX     PIX     SYS      X", "mlx5_0  PIX     PIX     SYS"),
        message="row mlx5_0 has too few cells",
    ),
    Broken(
        name="rows out of order",
        text=GOOD.replace("GPU1    NV1", "GPUx").replace("GPU2    SYS", "GPU1    NV1")
        .replace("GPUx", "GPU2    SYS"),
        message="row GPU2 out of order: expected GPU1 next",
    ),
    Broken(
        name="row missing in the middle",
        text="\n".join(line for line in GOOD.splitlines() if not line.startswith("GPU1")),
        message="row GPU2 out of order: expected GPU1 next",
    ),
    Broken(
        name="row twice",
        text=GOOD.replace("mlx5_0  PIX     PIX     SYS      X",
                          "GPU2    SYS     SYS      X      SYS     8-15            1"),
        message="row GPU2 appears twice",
    ),
    Broken(
        name="row not in the header",
        text=GOOD.replace("mlx5_0  PIX", "GPU7    PIX"),
        message="row GPU7 is not in the header",
    ),
    Broken(
        name="diagonal not X",
        text=_edit("GPU2    SYS     SYS      X", "GPU2    SYS     SYS     NV1"),
        message="row GPU2, column GPU2: diagonal is 'NV1', not X",
    ),
    Broken(
        name="X off the diagonal",
        text=_edit("GPU0     X      NV1", "GPU0     X       X "),
        message="row GPU0, column GPU1: X off the diagonal",
    ),
    Broken(
        name="asymmetric pair",
        text=_edit("GPU1    NV1      X", "GPU1    NV2      X"),
        message="asymmetric link: GPU0-GPU1 is NV1 but GPU1-GPU0 is NV2",
    ),
    Broken(
        name="asymmetric NIC",
        text=_edit("mlx5_0  PIX     PIX", "mlx5_0  PIX     PXB"),
        message="asymmetric link: GPU1-mlx5_0 is PIX but mlx5_0-GPU1 is PXB",
    ),
    Broken(
        name="unknown cell",
        text=_edit("GPU2    SYS     SYS      X      SYS", "GPU2    SYS     SYS      X      QQQ"),
        message="row GPU2, column mlx5_0: unknown link 'QQQ'",
    ),
    Broken(
        name="unknown GPU cell",
        text=_edit("GPU1    NV1      X      SYS", "GPU1    NV1      X      QQQ"),
        message="row GPU1, column GPU2: unknown link 'QQQ'",
    ),
    Broken(name="NV0", text=_edit("NV1", "NV0", 2), message="row GPU0, column GPU1: unknown link"),
    Broken(
        name="bad NUMA cell",
        text=_edit("8-15            1", "8-15            one"),
        message="row GPU2, column NUMA Affinity: expected a node number or N/A, got 'one'",
    ),
    Broken(
        name="header out of order",
        text=_edit("GPU0    GPU1    GPU2", "GPU0    GPU2    GPU1"),
        message="header: column 2 is GPU2; expected GPU1",
    ),
    Broken(
        name="duplicate header column",
        text=_edit("GPU2    mlx5_0", "GPU2    GPU2"),
        message="header: column 'GPU2' appears twice",
    ),
    Broken(
        name="GPU column after a NIC",
        text=_edit("GPU2    mlx5_0", "mlx5_0  GPU2"),
        message="header: column 4 is GPU2; expected GPU columns first",
    ),
]


class TestBrokenInputs:
    @pytest.mark.parametrize("case", BROKEN, ids=lambda c: c.name)
    def test_refused_with_a_message_naming_the_culprit(self, case: Broken) -> None:
        """Every broken input raises TopologyError (not another error) saying what is wrong."""
        with pytest.raises(TopologyError) as e:
            parse_topo_matrix(case.text)
        assert case.message in str(e.value)

    def test_the_good_input_parses(self) -> None:
        """The base of the broken cases is itself fine (so each case breaks one thing)."""
        t = parse_topo_matrix(GOOD)
        assert t.size == 3
        assert t.link(0, 1) == Link.parse("NV1")
        assert [g.numa_node for g in t.gpus] == [0, 0, 1]
        assert t.nics[0].name == "mlx5_0"


class TestUntidyInputs:
    def test_soc_is_sys(self) -> None:
        """Old drivers print SOC for what is now SYS."""
        t = parse_topo_matrix("\tGPU0\tGPU1\nGPU0\t X \tSOC\nGPU1\tSOC\t X \n")
        assert t.link(0, 1) == Link.parse("SYS")

    def test_no_affinity_columns(self) -> None:
        """Without affinity columns, GPUs have no NUMA node and no affinity."""
        t = parse_topo_matrix("GPU0 GPU1\nGPU0 X PIX\nGPU1 PIX X\n")
        assert [(g.numa_node, g.cpu_affinity) for g in t.gpus] == [(None, None), (None, None)]

    def test_single_gpu(self) -> None:
        """One GPU: the header's second word is not X, the row's is."""
        t = parse_topo_matrix(
            "        GPU0    CPU Affinity    NUMA Affinity\nGPU0     X      0-7   0\n"
        )
        assert t.size == 1 and t.gpus[0].numa_node == 0

    def test_numa_inferred_in_order_of_first_appearance(self) -> None:
        """No NUMA column: the first distinct CPU Affinity is node 0, the next 1, ..."""
        text = (
            "GPU0 GPU1 GPU2 CPU Affinity\n"
            "GPU0 X SYS SYS 8-15\nGPU1 SYS X SYS 0-7\nGPU2 SYS SYS X 8-15\n"
        )
        assert [g.numa_node for g in parse_topo_matrix(text).gpus] == [0, 1, 0]

    def test_numa_not_applicable_and_ranges(self) -> None:
        """NUMA Affinity N/A or a range of nodes gives no single node; GPU NUMA ID is read."""
        text = (
            "GPU0 GPU1 CPU Affinity NUMA Affinity GPU NUMA ID\n"
            "GPU0 X NV1 N/A N/A 2\nGPU1 NV1 X 0-7 0-1 N/A\n"
        )
        t = parse_topo_matrix(text)
        assert [(g.numa_node, g.cpu_affinity) for g in t.gpus] == [(None, None), (None, "0-7")]

    def test_nic_rows_optional_and_legend_names(self) -> None:
        """NIC rows may be absent; a NIC Legend names the NICs."""
        text = (
            "\tGPU0\tGPU1\tNIC0\tCPU Affinity\n"
            "GPU0\t X \tNV2\tPIX\t0-3\nGPU1\tNV2\t X \tSYS\t0-3\n\n"
            "Legend:\n\n  X    = Self\n\nNIC Legend:\n\n  NIC0: mlx5_bond_0\n"
        )
        t = parse_topo_matrix(text)
        assert t.nics[0].name == "mlx5_bond_0"
        assert [str(c) for c in t.nics[0].links] == ["PIX", "SYS"]

    def test_crlf_and_trailing_blanks(self) -> None:
        """Windows line ends and trailing blanks are fine."""
        text = GOOD.replace("\n", "   \r\n")
        assert parse_topo_matrix(text).links == parse_topo_matrix(GOOD).links


# --- empty affinity cells (containers, VMs) ----------------------------------------------

_AFFINITY = ("CPU Affinity", "NUMA Affinity")
_BLANKS = (("CPU Affinity", "NUMA Affinity"), ("CPU Affinity",), ("NUMA Affinity",))
_FORMS = ("tab-separated", "tabs expanded", "spaces in place")


def _unexpand(line: str) -> str:
    """``unexpand -a``: spaces that end at a tab stop (every 8 columns) become a tab."""
    out = []
    for k in range(0, len(line), 8):
        chunk = line[k:k + 8]
        if len(chunk) == 8 and chunk.endswith(" ") and line[k + 8:].strip():
            chunk = chunk.rstrip(" ") + "\t"
        out.append(chunk)
    return "".join(out)


def _tab_form(text: str) -> str:
    """The fixture as nvidia-smi wrote it: tab-separated (space-aligned files unexpanded)."""
    return "\n".join(line if "\t" in line else _unexpand(line) for line in text.split("\n"))


def _header_fields(tab_text: str) -> list[str]:
    header = next(line for line in tab_text.split("\n") if "CPU Affinity" in line)
    return [f.strip() for f in header.split("\t")]


def _blanked(text: str, columns: tuple[str, ...], form: str) -> str:
    """Every GPU row with the cells under ``columns`` emptied, as a container prints it."""
    tabbed = _tab_form(text)
    header = _header_fields(tabbed)
    at = [header.index(c) for c in columns]  # a GPU row's cells line up with the header's
    lines = tabbed.split("\n")
    spaced = text.expandtabs(8).split("\n")
    for n, line in enumerate(lines):
        if not line.startswith("GPU") or line.split("\t")[0] not in header:
            continue
        fields = line.split("\t")
        for k in at:  # where the cell starts on the screen, from the row as printed
            start = len(("\t".join(fields[:k]) + "\t").expandtabs(8))
            width = len(fields[k])
            spaced[n] = spaced[n][:start] + " " * width + spaced[n][start + width:]
        for k in at:
            fields[k] = ""
        lines[n] = "\t".join(fields)
    if form == "spaces in place":  # the values' characters replaced by spaces
        return "\n".join(spaced)
    out = "\n".join(lines)
    return out.expandtabs(8) if form == "tabs expanded" else out


def _blank_cases() -> list[tuple[str, tuple[str, ...], str]]:
    cases = []
    for stem in ALL_STEMS:
        columns = _AFFINITY
        if have_fixtures():
            columns = tuple(c for c in _AFFINITY if c in fixture_text(stem))
        cases += [(stem, blank, form) for blank in _BLANKS if set(blank) <= set(columns)
                  for form in _FORMS]
    return cases


class TestEmptyAffinityCells:
    @pytest.mark.parametrize(("stem", "blank", "form"), _blank_cases(),
                             ids=lambda v: "+".join(v) if isinstance(v, tuple) else v)
    def test_blanked_fixture_reads_as_its_header_says(
        self, stem: str, blank: tuple[str, ...], form: str
    ) -> None:
        """A real matrix with its affinity cells emptied: the links and every other cell
        are read as before, the emptied cells are None (GPU NUMA ID stays N/A)."""
        text = fixture_text(stem)
        want = parse_topo_matrix(text)
        blanked = _blanked(text, blank, form)
        assert blanked != text
        got = parse_topo_matrix(blanked)
        assert got.links == want.links
        assert got.nics == want.nics
        has_numa = "NUMA Affinity" in text
        for g, w in zip(got.gpus, want.gpus, strict=True):
            assert g.cpu_affinity == (None if "CPU Affinity" in blank else w.cpu_affinity)
            # Without a NUMA column the node is inferred from CPU Affinity.
            numa_gone = "NUMA Affinity" in blank or (not has_numa and "CPU Affinity" in blank)
            assert g.numa_node == (None if numa_gone else w.numa_node)

    def test_the_blanked_forms_are_the_ones_a_container_prints(self) -> None:
        """The tab form has the empty cells as tabs in a row; the others only spaces."""
        text = fixture_text("pcie_8gpu_nvlink_bridge_pairs_nv12")
        row = "GPU0\t X \tSYS\tNV12\tSYS\tSYS\tSYS\tSYS\tSYS\t\t\t\tN/A"
        assert row in _blanked(text, _AFFINITY, "tab-separated").split("\n")
        assert row.expandtabs(8) in _blanked(text, _AFFINITY, "spaces in place").split("\n")

    def test_each_cell_goes_to_its_column(self) -> None:
        """An empty CPU cell does not shift the NUMA value left, nor an empty NUMA cell
        the GPU NUMA ID: GPU1's node is 1 (from NUMA Affinity), GPU0's none."""
        text = (
            "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
            "GPU0\t X \tNV4\t0-5\t\t\t2\n"
            "GPU1\tNV4\t X \t\t1\t\tN/A\n"
        )
        for form in (text, text.expandtabs(8)):
            t = parse_topo_matrix(form)
            assert [(g.cpu_affinity, g.numa_node) for g in t.gpus] == [("0-5", None), (None, 1)]

    def test_the_last_cell_is_read_as_gpu_numa_id(self) -> None:
        """With CPU and NUMA empty, the one value left is checked as GPU NUMA ID."""
        text = (
            "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
            "GPU0\t X \tNV4\t\t\t\tN/A\n"
            "GPU1\tNV4\t X \t\t\t\tone\n"
        )
        with pytest.raises(TopologyError, match=r"row GPU1, column GPU NUMA ID: .*'one'"):
            parse_topo_matrix(text)

    def test_an_empty_link_cell_is_refused(self) -> None:
        """Only affinity cells may be empty: a link cell missing is a short row."""
        text = (
            "\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\n"
            "GPU0\t X \t\t0-5\t0\t\tN/A\n"
            "GPU1\tNV4\t X \t0-5\t0\t\tN/A\n"
        )
        with pytest.raises(TopologyError, match="row GPU0 has too few cells: expected 5"):
            parse_topo_matrix(text)


# --- fuzz --------------------------------------------------------------------------------

def _seed_texts() -> list[str]:
    """Real matrices to mutate: every fixture when present, and every preset rendered."""
    texts = [GOOD] + [to_matrix_text(p.build()) for p in PRESETS.values()]
    if have_fixtures():
        texts += [fixture_text(stem) for stem in ALL_STEMS]
        texts.append(fixture_text(PARTIAL_STEM))
    return texts


SEEDS = _seed_texts()
_TOKENS = [
    "X", " X ", "NV1", "NV0", "NV999", "SYS", "SOC", "PIX", "QQQ", "N/A", "GPU0", "GPU1",
    "GPU99", "NIC0", "mlx5_0", "CPU Affinity", "NUMA Affinity", "GPU NUMA ID", "Legend:",
    "NIC Legend:", "NIC0: mlx5_9", "\t", "\t\t", "\n", " ", "0-11,24-35", "0", "-1", "\x00",
    "é", "GPU٣",
]


@st.composite
def mutated_matrices(draw: st.DrawFn) -> str:
    """A real matrix with a few random edits: cells replaced, lines dropped or swapped."""
    text = draw(st.sampled_from(SEEDS))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        op = draw(st.sampled_from(["token", "char", "drop", "swap", "cut", "dup"]))
        k = rng.randrange(len(lines))
        if op == "token":
            words = lines[k].split("\t" if "\t" in lines[k] else " ")
            words[rng.randrange(len(words))] = draw(st.sampled_from(_TOKENS))
            lines[k] = ("\t" if "\t" in lines[k] else " ").join(words)
        elif op == "char" and lines[k]:
            at = rng.randrange(len(lines[k]))
            lines[k] = lines[k][:at] + draw(st.text(max_size=3)) + lines[k][at + 1:]
        elif op == "drop":
            del lines[k]
        elif op == "swap":
            m = rng.randrange(len(lines))
            lines[k], lines[m] = lines[m], lines[k]
        elif op == "dup":
            lines.insert(k, lines[k])
        else:
            lines = lines[:k]
        text = "\n".join(lines)
    return text


def _parses_or_topology_error(text: str) -> None:
    try:
        t = parse_topo_matrix(text)
    except TopologyError as e:
        assert str(e)
    else:
        assert t.size >= 1


class TestFuzz:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated_matrices())
    def test_mutated_matrices_only_raise_topology_error(self, text: str) -> None:
        """Any edit of a real matrix parses or raises TopologyError, nothing else."""
        _parses_or_topology_error(text)

    @settings(max_examples=300, deadline=None)
    @given(st.text())
    def test_random_text_only_raises_topology_error(self, text: str) -> None:
        """Arbitrary text parses or raises TopologyError."""
        _parses_or_topology_error(text)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.lists(st.sampled_from(_TOKENS), max_size=12), max_size=10))
    def test_token_soup_only_raises_topology_error(self, rows: list[list[str]]) -> None:
        """Lines made of matrix words in random order parse or raise TopologyError."""
        _parses_or_topology_error("GPU0 GPU1 CPU Affinity\n" + "\n".join(" ".join(r) for r in rows))
