"""load_topology: preset names, topo -m files, JSON files, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.topology.fixtures import PRESET_FIXTURES, fixture_path
from topology.model import TopologyError
from topology.presets import PRESETS, preset
from topology.render import to_matrix_text
from topology.serialize import dumps
from topology.sources import load_topology


class TestLoadTopology:
    def test_preset_name(self) -> None:
        """A preset name gives the preset."""
        assert load_topology("dgx1-v100") == preset("dgx1-v100")

    def test_topo_text_file(self, tmp_path: Path) -> None:
        """A topo -m file is parsed and named after the file."""
        path = tmp_path / "node-a.txt"
        path.write_text(to_matrix_text(preset("dgx1-v100")))
        t = load_topology(str(path))
        assert t.name == "node-a"
        assert t.links == preset("dgx1-v100").links

    def test_fixture_file(self) -> None:
        """A real fixture file loads by path."""
        path = fixture_path(PRESET_FIXTURES["dgx-a100"])
        assert load_topology(str(path)).links == preset("dgx-a100").links

    def test_json_file_detected_by_content(self, tmp_path: Path) -> None:
        """A file starting with '{' (after blanks) is the JSON form, whatever its name."""
        t = preset("hgx-h100")
        path = tmp_path / "topology.txt"
        path.write_text("\n  " + dumps(t))
        assert load_topology(str(path)) == t

    def test_unknown_name_lists_presets(self) -> None:
        with pytest.raises(TopologyError) as e:
            load_topology("dgx-9000")
        assert "'dgx-9000' is neither a preset nor a file" in str(e.value)
        assert all(name in str(e.value) for name in PRESETS)

    @pytest.mark.parametrize(
        ("content", "message"),
        [
            ("", "empty input"),
            ("{not json", "topology JSON is not valid JSON"),
            ('{"schema": "other"}', "unsupported topology schema"),
            ("GPU0 GPU1\nGPU0 X NV1\n", "matrix cut short"),
        ],
    )
    def test_bad_file_names_the_file(self, tmp_path: Path, content: str, message: str) -> None:
        """Errors name the file and say what is wrong with it."""
        path = tmp_path / "bad.txt"
        path.write_text(content)
        with pytest.raises(TopologyError) as e:
            load_topology(str(path))
        assert str(e.value).startswith(f"{path}: ")
        assert message in str(e.value)

    def test_empty_spec(self) -> None:
        """An empty string is not the current directory."""
        with pytest.raises(TopologyError, match="neither a preset nor a file"):
            load_topology("")

    def test_name_too_long(self) -> None:
        """A name the OS refuses to look up is still a TopologyError."""
        with pytest.raises(TopologyError):
            load_topology("x" * 5000)

    def test_byte_order_mark(self, tmp_path: Path) -> None:
        """A UTF-8 BOM before the JSON does not hide it."""
        path = tmp_path / "t.json"
        path.write_bytes(b"\xef\xbb\xbf" + dumps(preset("aws-p4d")).encode())
        assert load_topology(str(path)) == preset("aws-p4d")

    def test_directory(self, tmp_path: Path) -> None:
        with pytest.raises(TopologyError, match="not a regular file"):
            load_topology(str(tmp_path))

    def test_binary_file(self, tmp_path: Path) -> None:
        path = tmp_path / "blob.bin"
        path.write_bytes(b"\xff\xfe\x00GPU0")
        with pytest.raises(TopologyError, match="not UTF-8 text"):
            load_topology(str(path))
