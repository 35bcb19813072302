"""``gputopo``: the command shapes scripts depend on, and its exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from topology.cli import main
from topology.serialize import loads

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURES = SHARED / "fixtures" / "topologies"
needs_shared = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"../shared fixtures not found at {FIXTURES}"
)


def run(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out, stdin=io.StringIO(stdin))
    return code, out.getvalue()


class TestAllocate:
    def test_json_shape(self) -> None:
        code, out = run("allocate", "--topology", "dgx1-v100", "--size", "2", "--json")
        obj = json.loads(out)
        assert code == 0
        assert obj["devices"] == [0, 3] and obj["ring_link"] == "NV2" and obj["reason"] is None

    def test_free_and_min_link(self) -> None:
        # 1-5 and 5-6 are both NV2; 5-6 is on one NUMA node and leaves the NV1 pair 0-1.
        code, out = run("allocate", "--topology", "dgx1-v100", "--size", "2", "--free", "0,1,5,6",
                        "--min-link", "NV2", "--json")
        assert code == 0 and json.loads(out)["devices"] == [5, 6]

    def test_must_include(self) -> None:
        code, out = run("allocate", "--topology", "dgx1-v100", "--size", "2",
                        "--must-include", "4", "--json")
        assert code == 0 and 4 in json.loads(out)["devices"]

    def test_no_fit_exits_1_with_reason(self) -> None:
        code, out = run("allocate", "--topology", "dgx1-v100", "--size", "4",
                        "--free", "0,1,5,6", "--min-link", "nvlink", "--json")
        obj = json.loads(out)
        assert code == 1
        assert obj["devices"] == []
        assert obj["reason"] == "4 free GPUs (0,1,5,6): no NVLink ring of 4"

    def test_plain_text(self) -> None:
        code, out = run("allocate", "--topology", "hgx-h100", "--size", "4")
        assert code == 0 and out.splitlines()[0] == "0,1,2,3"

    @pytest.mark.parametrize("argv", [
        ["--size", "2", "--min-link", "nvlinkz"],
        ["--size", "2", "--free", "0,a"],
        ["--size", "2", "--free", "0,9"],
        ["--size", "x"],
        [],
    ])
    def test_bad_input_exits_2(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as e:
            code, _ = run("allocate", "--topology", "dgx1-v100", *argv)
            raise SystemExit(code)
        assert e.value.code == 2
        assert "Traceback" not in capsys.readouterr().err

    def test_batch_one_result_per_line_in_order(self) -> None:
        lines = [
            {"size": 2},
            {"size": 4, "free": [0, 1, 5, 6], "min_link": "nvlink"},
            {"size": 2, "free": [0, 3, 4], "must_include": [4]},
        ]
        code, out = run("allocate", "--topology", "dgx1-v100", "--batch", "-",
                        stdin="\n".join(json.dumps(x) for x in lines) + "\n")
        results = [json.loads(x) for x in out.splitlines()]
        assert code == 0 and len(results) == 3
        assert results[0]["devices"] == [0, 3]
        assert results[1]["devices"] == [] and "no NVLink ring of 4" in results[1]["reason"]
        assert 4 in results[2]["devices"]

    def test_batch_bad_line_is_reported_in_place(self) -> None:
        code, out = run("allocate", "--topology", "dgx1-v100", "--batch", "-",
                        stdin='{"size": 1}\nnot json\n{"size": 1, "free": [2]}\n')
        results = [json.loads(x) for x in out.splitlines()]
        assert code == 2 and len(results) == 3
        assert results[1]["reason"].startswith("line 2: not JSON")
        assert results[2]["devices"] == [2]


class TestShowParsePresets:
    def test_presets_one_line_each(self) -> None:
        code, out = run("presets")
        names = [line.split()[0] for line in out.splitlines()]
        assert code == 0
        for name in ["dgx1-v100", "dgx-a100", "hgx-h100", "aws-p4d", "pcie-8gpu-nvlink-pairs",
                     "pcie-8gpu-sys", "workstation-2gpu-nvlink", "gb200-4gpu", "nvswitch-16gpu",
                     "pcie-16gpu-tree"]:
            assert name in names

    def test_show_json_round_trips(self) -> None:
        code, out = run("show", "dgx-a100", "--format", "json")
        assert code == 0 and loads(out).size == 8

    def test_show_svg_is_xml(self) -> None:
        code, out = run("show", "dgx1-v100", "--format", "svg")
        assert code == 0 and ET.fromstring(out).tag.endswith("svg")

    def test_show_unknown_name_exits_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _ = run("show", "no-such-machine")
        assert code == 2 and "dgx1-v100" in capsys.readouterr().err

    @needs_shared
    def test_parse_fixture_from_stdin(self) -> None:
        text = (FIXTURES / "dgx1_v100_hybrid_cube_mesh_1nic.txt").read_text()
        code, out = run("parse", "-", stdin=text)
        t = loads(out)
        assert code == 0 and str(t.link(0, 3)) == "NV2" and str(t.link(0, 5)) == "SYS"

    @needs_shared
    def test_parse_partial_file_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, _ = run("parse", str(FIXTURES / "PARTIAL_dgx2_16gpu_nvswitch_nv6_10nics.txt"))
        err = capsys.readouterr().err
        assert code == 2 and "GPU4" in err and "Traceback" not in err

    @needs_shared
    def test_allocate_on_a_fixture_file(self) -> None:
        code, out = run("allocate", "--topology",
                        str(FIXTURES / "pcie_8gpu_nvlink_bridge_pairs_nv12.txt"),
                        "--size", "2", "--json")
        assert code == 0 and json.loads(out)["ring_link"] == "NV12"


def test_console_script_exit_codes() -> None:
    """The installed entry point, as a user runs it."""
    exe = Path(sys.executable).parent / "gputopo"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "topology.cli"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ok = subprocess.run([*cmd, "allocate", "--topology", "dgx1-v100", "--size", "8", "--json"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout)["devices"] == list(range(8))
    bad = subprocess.run([*cmd, "allocate", "--topology", "dgx1-v100", "--size", "2",
                          "--min-link", "fast"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "allowed: nvlink" in bad.stderr
    assert "Traceback" not in bad.stderr
