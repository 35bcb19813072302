"""The committed gRPC stubs are exactly what ``plugin/api/generate.py`` makes of the protos."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

import pytest

from plugin.api import deviceplugin_pb2 as dp
from plugin.api import podresources_pb2 as pr
from plugin.api.generate import API_DIR, generate

# Lines that carry the generator's own version, not the API.
_STAMPS = (
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.MULTILINE),
    re.compile(r"^# Protobuf Python Version: .*$", re.MULTILINE),
    re.compile(r"_runtime_version\.Domain\.PUBLIC,\n(?:\s+\d+,\n){3}", re.MULTILINE),
)


def _committed_tools_version() -> str:
    text = (API_DIR / "deviceplugin_pb2_grpc.py").read_text()
    m = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'", text, re.MULTILINE)
    assert m, "committed stub has no GRPC_GENERATED_VERSION"
    return m.group(1)


def _unstamped(text: str) -> str:
    for pattern in _STAMPS:
        text = pattern.sub("<version>", text)
    return text


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev dependency) not installed")
    written = generate(tmp_path)
    assert {p.name for p in written} == {
        f"{stem}{suffix}" for stem in ("deviceplugin", "podresources")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    }
    # Same generator: byte for byte. Another grpcio-tools: everything but its version stamps.
    same_tools = importlib.metadata.version("grpcio-tools") == _committed_tools_version()
    for fresh in written:
        committed = API_DIR / fresh.name
        assert committed.exists(), f"{committed} is missing: run python -m plugin.api.generate"
        want, have = fresh.read_text(), committed.read_text()
        if not same_tools:
            want, have = _unstamped(want), _unstamped(have)
        assert have == want, (
            f"{committed} differs from what {committed.parent}/*.proto generate: "
            "run python -m plugin.api.generate"
        )


def test_grpc_stubs_import_their_messages_relatively() -> None:
    for name in ("deviceplugin_pb2_grpc.py", "podresources_pb2_grpc.py"):
        text = (API_DIR / name).read_text()
        assert re.search(r"^from \. import \w+_pb2 as", text, re.MULTILINE)
        assert not re.search(r"^import \w+_pb2\b", text, re.MULTILINE)


def _fields(message: Any) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}


def test_wire_field_names_and_numbers_are_the_references() -> None:
    assert dp.DESCRIPTOR.package == "v1beta1" and pr.DESCRIPTOR.package == "v1"
    assert _fields(dp.DevicePluginOptions) == {
        "pre_start_required": 1, "get_preferred_allocation_available": 2}
    assert _fields(dp.RegisterRequest) == {
        "version": 1, "endpoint": 2, "resource_name": 3, "options": 4}
    assert _fields(dp.Device) == {"ID": 1, "health": 2, "topology": 3}
    assert _fields(dp.NUMANode) == {"ID": 1}
    assert _fields(dp.ContainerPreferredAllocationRequest) == {
        "available_deviceIDs": 1, "must_include_deviceIDs": 2, "allocation_size": 3}
    assert _fields(dp.ContainerPreferredAllocationResponse) == {"deviceIDs": 1}
    assert _fields(dp.ContainerAllocateRequest) == {"devices_ids": 1}
    assert _fields(dp.ContainerAllocateResponse) == {
        "envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5}
    assert _fields(dp.Mount) == {"container_path": 1, "host_path": 2, "read_only": 3}
    assert _fields(dp.DeviceSpec) == {"container_path": 1, "host_path": 2, "permissions": 3}
    assert _fields(dp.PreStartContainerRequest) == {"devices_ids": 1}
    assert [m.name for m in dp.DESCRIPTOR.services_by_name["DevicePlugin"].methods] == [
        "GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation", "Allocate",
        "PreStartContainer"]
    assert _fields(pr.ContainerResources) == {
        "name": 1, "devices": 2, "cpu_ids": 3, "memory": 4, "dynamic_resources": 5}
    assert _fields(pr.ContainerDevices) == {"resource_name": 1, "device_ids": 2, "topology": 3}
    assert _fields(pr.PodResources) == {"name": 1, "namespace": 2, "containers": 3}
    assert _fields(pr.DynamicResource) == {
        "claim_name": 2, "claim_namespace": 3, "claim_resources": 4}
    assert _fields(pr.ClaimResource) == {
        "cdi_devices": 1, "driver_name": 2, "pool_name": 3, "device_name": 4, "share_id": 5}
    assert _fields(pr.GetPodResourcesRequest) == {"pod_name": 1, "pod_namespace": 2}
    assert [m.name for m in pr.DESCRIPTOR.services_by_name["PodResourcesLister"].methods] == [
        "List", "GetAllocatableResources", "Get"]
