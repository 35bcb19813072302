"""NVML discovery through the fake NVML equals what the parser makes of ``topo -m``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from plugin.fakenvml import FakeNvml
from plugin.nvml import NvmlUnavailable, cpu_list, discover, normalize_bus_id, start_nvml
from topology.handoff import stable_gpu_uuid
from topology.links import Link
from topology.model import Topology
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS, preset

from .fakes import FaultyNvml

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
FIXTURES = SHARED / "fixtures" / "topologies"
FIXTURE_FILES = sorted(FIXTURES.glob("*.txt")) if FIXTURES.is_dir() else []
NO_FIXTURES = f"shared fixtures not found at {FIXTURES} (../shared beside the repository)"
COMPLETE = [p for p in FIXTURE_FILES if not p.name.startswith("PARTIAL")] or [
    pytest.param(None, marks=pytest.mark.skip(reason=NO_FIXTURES))]


def _discovered(t: Topology) -> tuple[Topology, FakeNvml]:
    nvml = FakeNvml(t)
    start_nvml(nvml)
    return discover(nvml, name=t.name).topology, nvml


def _as_discovered(t: Topology, found: Topology) -> Topology:
    """``t`` with what NVML adds (UUIDs, bus ids) and without what it cannot see (NICs)."""
    gpus = tuple(dataclasses.replace(g, uuid=found.gpus[g.index].uuid,
                                     pci_bus_id=found.gpus[g.index].pci_bus_id)
                 for g in t.gpus)
    return dataclasses.replace(t, gpus=gpus, nics=())


@pytest.mark.parametrize("path", COMPLETE, ids=lambda p: p.stem if p else "no-fixtures")
def test_discovery_equals_the_parsed_matrix(path: Path) -> None:
    parsed = parse_topo_matrix(path.read_text(), name=path.stem)
    found, _ = _discovered(parsed)
    assert found == _as_discovered(parsed, found)
    assert found.fingerprint == parsed.fingerprint
    assert [g.uuid for g in found.gpus] == [stable_gpu_uuid(i) for i in range(parsed.size)]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_discovery_equals_every_preset(name: str) -> None:
    t = preset(name)
    found, _ = _discovered(t)
    assert found == _as_discovered(t, found)


@pytest.mark.skipif(not FIXTURE_FILES, reason=NO_FIXTURES)
@pytest.mark.parametrize("stem", [
    "dgx_a100_8gpu_nv12_10nics", "hgx_h100_class_8gpu_nv18_13nics", "aws_p4d_24xlarge",
    "gb200_4gpu_nv18",
])
def test_nvswitch_machines_are_seen_through_their_switches(stem: str) -> None:
    parsed = parse_topo_matrix((FIXTURES / f"{stem}.txt").read_text())
    nvml = FakeNvml(parsed)
    start_nvml(nvml)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    kinds = {nvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, k)
             for k in range(parsed.link(0, 1).nvlinks)}
    # NVML shows no GPU peer on any link: every link ends in an NVSwitch...
    assert kinds == {nvml.NVML_NVLINK_DEVICE_TYPE_SWITCH}
    found = discover(nvml).topology
    # ...and still every pair is NVLink at the link count (NV12 on A100, NV18 on H100).
    assert {str(c) for row in found.links for c in row if c} == {str(parsed.link(0, 1))}


def test_two_gpu_nvlink_bridge_is_a_direct_link() -> None:
    t = preset("workstation-2gpu-nvlink")
    nvml = FakeNvml(t)
    start_nvml(nvml)
    h = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, 0) == nvml.NVML_NVLINK_DEVICE_TYPE_GPU
    assert discover(nvml).topology.links == t.links


def test_fake_constants_match_pynvml() -> None:
    pynvml = pytest.importorskip("pynvml")
    fake = FakeNvml(preset("dgx1-v100"))
    for name in dir(FakeNvml):
        if name.startswith(("NVML_", "nvmlEventType")) and name != "NVML_NVLINK_MAX_LINKS":
            assert getattr(fake, name) == getattr(pynvml, name), name
    assert fake.NVML_NVLINK_MAX_LINKS >= pynvml.NVML_NVLINK_MAX_LINKS
    assert fake.nvmlEventTypeXidCriticalError == pynvml.nvmlEventTypeXidCriticalError


def test_fake_nvml_implements_the_calls_discovery_uses() -> None:
    import inspect

    import plugin.health
    import plugin.nvml

    pynvml = pytest.importorskip("pynvml")
    names: set[str] = set()
    for module in (plugin.nvml, plugin.health):
        src = inspect.getsource(module)
        names |= {n for n in dir(pynvml) if n.startswith("nvml") and n in src}
    missing = sorted(n for n in names if not hasattr(FakeNvml, n))
    assert not missing


def test_bus_ids_and_cpu_lists() -> None:
    assert normalize_bus_id("00000000:3b:00.0") == normalize_bus_id(b"0000:3B:00.0\x00")
    assert cpu_list([0b1011]) == "0-1,3"
    assert cpu_list([0, 1]) == "64"
    assert cpu_list([]) is None


def test_nvml_failing_at_start_is_one_clear_error() -> None:
    nvml = FaultyNvml(preset("dgx1-v100"))
    nvml.fail_init(nvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(NvmlUnavailable, match="Driver Not Loaded"):
        start_nvml(nvml)


def test_a_gpu_that_cannot_be_read_fails_discovery_clearly() -> None:
    nvml = FaultyNvml(preset("dgx1-v100"))
    start_nvml(nvml)
    nvml.fail_device(3)
    with pytest.raises(NvmlUnavailable, match="GPU is lost"):
        discover(nvml)


def test_unsupported_optional_fields_are_left_empty() -> None:
    bare = Topology.from_matrix([[None, Link.parse("PIX")], [Link.parse("PIX"), None]])
    found, _ = _discovered(bare)
    assert found.links == bare.links
    assert [(g.model, g.memory_mib, g.numa_node, g.cpu_affinity) for g in found.gpus] == [
        (None, None, None, None)] * 2


def test_numa_falls_back_to_sysfs(tmp_path: Path) -> None:
    bare = Topology.from_matrix([[None, Link.parse("SYS")], [Link.parse("SYS"), None]])
    nvml = FakeNvml(bare)
    start_nvml(nvml)
    for i, node in ((0, "1"), (1, "-1")):
        d = tmp_path / "bus/pci/devices" / f"0000:{0x10 + i:02x}:00.0"
        d.mkdir(parents=True)
        (d / "numa_node").write_text(node + "\n")
    found = discover(nvml, sysfs=tmp_path).topology
    assert [g.numa_node for g in found.gpus] == [1, None]


@pytest.mark.skipif(not FIXTURE_FILES, reason=NO_FIXTURES)
def test_partial_fixture_is_refused_by_the_parser() -> None:
    from topology.model import TopologyError

    for path in FIXTURE_FILES:
        if path.name.startswith("PARTIAL"):
            with pytest.raises(TopologyError):
                parse_topo_matrix(path.read_text())
