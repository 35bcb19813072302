"""The plugin as a real gRPC server, a test playing the kubelet over real unix sockets."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from plugin.api import deviceplugin_pb2 as pb
from plugin.cluster import PodInfo
from topology.handoff import encode_gpu_sets, stable_gpu_uuid
from topology.names import ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .conftest import HANG_GUARD_S, FakeKubelet, StartPlugin, stream_to_queue, wait_until
from .fakes import InMemoryCluster

DGX1 = preset("dgx1-v100")
ALL = [stable_gpu_uuid(i) for i in range(8)]


def _preferred(stub: Any, available: list[str], size: int, must: Sequence[str] = ()) -> list[str]:
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=list(must),
            allocation_size=size)
    ]))
    return list(resp.container_responses[0].deviceIDs)


def _index(uuid: str) -> int:
    return ALL.index(uuid)


def test_registers_with_the_kubelet_fields(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    req = kubelet.next_registration()
    assert req.version == "v1beta1"
    assert req.endpoint == "gputopo-nvidia.com-gpu.sock"
    assert "/" not in req.endpoint  # relative to the kubelet directory
    assert req.resource_name == "nvidia.com/gpu"
    assert req.options.get_preferred_allocation_available is True
    assert req.options.pre_start_required is False
    sock = kubelet.directory / req.endpoint
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600  # owner-only: the kubelet runs as root
    channel, stub = plugin.stub()
    with channel:
        opts = stub.GetDevicePluginOptions(pb.Empty())
    assert opts.get_preferred_allocation_available


def test_list_and_watch_sends_uuids_with_numa(
    start_plugin: StartPlugin, kubelet: FakeKubelet
) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        first = stream_to_queue(stub.ListAndWatch(pb.Empty())).get(timeout=HANG_GUARD_S)
    assert [d.ID for d in first.devices] == ALL
    assert {d.health for d in first.devices} == {"Healthy"}
    # DGX-1: GPUs 0-3 on NUMA node 0, 4-7 on node 1.
    assert [[n.ID for n in d.topology.nodes] for d in first.devices] == [[g.numa_node]
                                                                         for g in DGX1.gpus]
    assert [n.ID for n in first.devices[5].topology.nodes] == [1]


def test_preferred_pair_on_dgx1_is_nv2(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        pair = _preferred(stub, ALL, 2)
        # With GPU3 and GPU4 gone, the best pair must still be an NV2 pair of what is left.
        rest = [u for u in ALL if _index(u) not in (3, 4)]
        pair2 = _preferred(stub, rest, 2)
        # must_include is honoured, and the answer stays inside `available`.
        with_must = _preferred(stub, ALL[:6], 2, must=[ALL[5]])
    i, j = map(_index, pair)
    assert str(DGX1.link(i, j)) == "NV2"
    i, j = map(_index, pair2)
    assert str(DGX1.link(i, j)) == "NV2" and {i, j}.isdisjoint({3, 4})
    assert ALL[5] in with_must and set(with_must) <= set(ALL[:6])
    assert str(DGX1.link(*map(_index, with_must))) == "NV2"  # GPU5's NV2 peer is GPU1


def test_preferred_honours_the_assigned_set(
    start_plugin: StartPlugin, kubelet: FakeKubelet
) -> None:
    cluster = InMemoryCluster()
    cluster.add_node("node-a")
    # An odd set (GPU0 + GPU5: SYS) that the allocator would never pick by itself.
    assigned = [ALL[0], ALL[5]]
    cluster.put_pod(PodInfo(
        namespace="ml", name="train-0", node_name="node-a", phase="Pending",
        annotations={ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets({"main": assigned})},
        created="2026-01-01T00:00:00+00:00"))
    plugin = start_plugin(cluster=cluster)
    kubelet.next_registration()
    assert plugin.app.pods.synced.wait(HANG_GUARD_S)
    channel, stub = plugin.stub()
    with channel:
        assert _preferred(stub, ALL, 2) == assigned
        # Not of the requested size -> allocator; not inside available -> allocator.
        three = _preferred(stub, ALL, 3)
        without0 = _preferred(stub, ALL[1:], 2)
    assert set(three) != set(assigned) and len(three) == 3
    assert ALL[0] not in without0 and str(DGX1.link(*map(_index, without0))) == "NV2"


def test_allocate_env_and_device_specs(start_plugin: StartPlugin, kubelet: FakeKubelet,
                                       short_tmp) -> None:
    dev = short_tmp / "dev"
    dev.mkdir()
    for name in ("nvidia1", "nvidia2", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    plugin = start_plugin(pass_device_specs=True, dev_root=dev)
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        resp = stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[ALL[1], ALL[2]])]))
    c = resp.container_responses[0]
    assert c.envs["NVIDIA_VISIBLE_DEVICES"] == f"{ALL[1]},{ALL[2]}"
    assert [(d.container_path, d.host_path, d.permissions) for d in c.devices] == [
        ("/dev/nvidia1", "/dev/nvidia1", "rw"),
        ("/dev/nvidia2", "/dev/nvidia2", "rw"),
        ("/dev/nvidiactl", "/dev/nvidiactl", "rw"),
        ("/dev/nvidia-uvm", "/dev/nvidia-uvm", "rw"),
    ]  # nvidia-uvm-tools and nvidia-modeset do not exist here: not passed


def test_allocate_without_device_specs_sets_only_env(start_plugin: StartPlugin,
                                                     kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        resp = stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[ALL[7]])]))
    assert dict(resp.container_responses[0].envs) == {"NVIDIA_VISIBLE_DEVICES": ALL[7]}
    assert list(resp.container_responses[0].devices) == []


def test_unknown_id_is_refused_naming_it(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[ALL[0], "GPU-not-here"])]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GPU-not-here" in err.value.details()


def test_kubelet_restart_leads_to_a_second_registration(start_plugin: StartPlugin,
                                                        kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    first = kubelet.next_registration()
    # Let the plugin see its Register answered first (a restart cancels calls in flight).
    assert wait_until(lambda: plugin.app.runner.registrations == 1)
    kubelet.restart()  # deletes kubelet.sock and our socket, recreates kubelet.sock
    second = kubelet.next_registration()
    assert second == first
    assert wait_until(lambda: plugin.app.runner.registrations == 2)
    channel, stub = plugin.stub()  # the plugin serves again on a fresh socket
    with channel:
        assert len(_preferred(stub, ALL, 4)) == 4


def test_xid_marks_unhealthy_app_xid_ignored_recovery_heals(start_plugin: StartPlugin,
                                                            kubelet: FakeKubelet) -> None:
    plugin = start_plugin(xid_recovery_seconds=0.3)
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        updates = stream_to_queue(stub.ListAndWatch(pb.Empty()))
        assert {d.health for d in updates.get(timeout=HANG_GUARD_S).devices} == {"Healthy"}
        plugin.nvml.inject_xid(3, 13)  # application error: ignored, nothing is sent
        plugin.nvml.inject_xid(2, 79)  # GPU fallen off the bus
        update = updates.get(timeout=HANG_GUARD_S)
        health = {d.ID: d.health for d in update.devices}
        assert health[ALL[2]] == "Unhealthy"
        assert health[ALL[3]] == "Healthy"
        assert plugin.app.health.state[ALL[3]].healthy
        # An unhealthy GPU is refused by Allocate, naming it.
        with pytest.raises(grpc.RpcError) as err:
            stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=[ALL[2]])]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert ALL[2] in err.value.details() and "XID 79" in err.value.details()
        # Quiet for xid_recovery seconds and NVML still answers: Healthy again.
        healed = updates.get(timeout=HANG_GUARD_S)
        assert {d.health for d in healed.devices} == {"Healthy"}


def test_lost_gpu_is_unhealthy_until_it_answers_again(start_plugin: StartPlugin,
                                                      kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        updates = stream_to_queue(stub.ListAndWatch(pb.Empty()))
        updates.get(timeout=HANG_GUARD_S)
        plugin.nvml.fail_device(6)
        update = updates.get(timeout=HANG_GUARD_S)
        assert {d.ID for d in update.devices if d.health == "Unhealthy"} == {ALL[6]}
        plugin.nvml.restore_device(6)
        assert {d.health for d in updates.get(timeout=HANG_GUARD_S).devices} == {"Healthy"}


def test_stop_removes_the_socket(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    req = kubelet.next_registration()
    sock = kubelet.directory / req.endpoint
    assert sock.exists()
    plugin.stop()
    assert not plugin.thread.is_alive()
    assert not sock.exists()
