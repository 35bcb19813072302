"""JSON round trip for presets, fixtures and random topologies; the fingerprint."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import topologies
from tests.topology.fixtures import PRESET_FIXTURES, fixture_text
from topology.links import Link
from topology.model import Gpu, Topology, TopologyError
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS, preset
from topology.serialize import dump, dumps, load, loads


class TestRoundTrip:
    @pytest.mark.parametrize("name", sorted(PRESETS))
    def test_presets(self, name: str) -> None:
        """load(dump(t)) == t for every preset, also through JSON text."""
        t = preset(name)
        assert load(dump(t)) == t
        assert loads(dumps(t)) == t
        assert loads(dumps(t)).fingerprint == t.fingerprint

    @pytest.mark.parametrize("stem", sorted(PRESET_FIXTURES.values()))
    def test_fixtures(self, stem: str) -> None:
        """load(dump(t)) == t for every parsed fixture (NICs included)."""
        t = parse_topo_matrix(fixture_text(stem), name=stem)
        assert load(dump(t)) == t

    @settings(max_examples=200, deadline=None)
    @given(topologies(min_gpus=1, max_gpus=10))
    def test_random_topologies(self, t: Topology) -> None:
        """load(dump(t)) == t for generated topologies."""
        assert loads(dumps(t)) == t


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=5,
)


class TestLoadRefusals:
    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(["name", "gpus", "links", "nics", "schema", "row", "gpu", "nic"]),
        st.integers(0, 7),
        _JSON,
    )
    def test_damaged_json_only_raises_topology_error(
        self, where: str, k: int, value: object
    ) -> None:
        """A valid dump with one part replaced by any JSON value loads or says why not."""
        data = dump(preset("dgx1-v100"))
        if where == "row":
            data["links"][k] = value
        elif where == "gpu":
            data["gpus"][k] = value
        elif where == "nic":
            data["nics"][0]["links" if k % 2 else "name"] = value
        else:
            data[where] = value
        try:
            load(data)
        except TopologyError as e:
            assert str(e)

    def test_short_row(self) -> None:
        """A short row later in the matrix is a TopologyError, not an IndexError."""
        data = dump(preset("dgx1-v100"))
        data["links"][5] = []
        with pytest.raises(TopologyError, match="row GPU5 has 0 cells"):
            load(data)


class TestStrategy:
    @settings(max_examples=100, deadline=None)
    @given(topologies(min_gpus=3, max_gpus=5))
    def test_sizes_within_bounds(self, t: Topology) -> None:
        """topologies(min_gpus, max_gpus) respects its bounds."""
        assert 3 <= t.size <= 5


class TestFingerprint:
    def test_same_matrix_other_uuids_and_bus_ids(self) -> None:
        """Identical machines share a fingerprint, whatever their UUIDs, bus ids and name."""
        t = preset("dgx1-v100")
        other = t.with_gpus(
            Gpu(
                index=g.index,
                uuid=f"GPU-{g.index:08d}-aaaa",
                pci_bus_id=f"00000000:{g.index + 0x10:02X}:00.0",
                model=g.model,
                memory_mib=g.memory_mib,
                numa_node=g.numa_node,
                cpu_affinity=g.cpu_affinity,
            )
            for g in t.gpus
        )
        assert other != t
        assert other.fingerprint == t.fingerprint

    def test_parsed_fixture_with_preset_details(self) -> None:
        """The parsed real matrix, given the preset's GPU details, is the preset's machine."""
        parsed = parse_topo_matrix(fixture_text(PRESET_FIXTURES["aws-p4d"]))
        assert parsed.with_gpus(preset("aws-p4d").gpus).fingerprint == preset("aws-p4d").fingerprint

    def test_one_link_differs(self) -> None:
        """Changing one pair's link changes the fingerprint."""
        t = preset("dgx1-v100")
        links = [list(row) for row in t.links]
        links[0][5] = links[5][0] = Link.parse("NV1")
        changed = Topology.from_matrix(links, gpus=t.gpus, nics=t.nics, name=t.name)
        assert changed.fingerprint != t.fingerprint

    def test_presets_are_distinct(self) -> None:
        """No two presets collide."""
        prints = [preset(name).fingerprint for name in PRESETS]
        assert len(set(prints)) == len(prints)
