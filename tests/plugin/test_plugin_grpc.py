"""The plugin as a real gRPC server, a test playing the kubelet over real unix sockets."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from plugin.api import deviceplugin_pb2 as pb
from plugin.cluster import PodInfo
from topology.handoff import encode_gpu_sets, stable_gpu_uuid
from topology.names import ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .conftest import (
    HANG_GUARD_S,
    STREAM_END,
    FakeKubelet,
    StartPlugin,
    stream_to_queue,
)
from .fakes import InMemoryCluster

DGX1 = preset("dgx1-v100")
ALL = [stable_gpu_uuid(i) for i in range(8)]


def _preferred(stub: Any, available: list[str], size: int, must: Sequence[str] = ()) -> list[str]:
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(
            available_deviceIDs=available, must_include_deviceIDs=list(must),
            allocation_size=size)
    ]), timeout=HANG_GUARD_S)
    return list(resp.container_responses[0].deviceIDs)


def _refusal(call: Any, request: Any) -> grpc.RpcError:
    """The error ``call(request)`` answers (the test fails if it answers OK)."""
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=HANG_GUARD_S)
    return err.value


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
    assert plugin.app.runner.wait_registered(1, HANG_GUARD_S)
    kubelet.restart()  # deletes kubelet.sock and our socket, recreates kubelet.sock
    second = kubelet.next_registration()
    assert second == first
    assert plugin.app.runner.wait_registered(2, HANG_GUARD_S)
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
        plugin.wait_xid_ready()
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


def test_fifty_streams_leave_every_unary_call_answered(
    start_plugin: StartPlugin, kubelet: FakeKubelet
) -> None:
    """A ListAndWatch stream holds no worker: with 50 open (the kubelet opens one, and has
    no time-out on its other calls), every unary call is still answered, and a health
    change still reaches every stream."""
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        calls = [stub.ListAndWatch(pb.Empty()) for _ in range(50)]
        try:
            updates = [stream_to_queue(c) for c in calls]
            for q in updates:
                assert [d.ID for d in q.get(timeout=HANG_GUARD_S).devices] == ALL
            opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=HANG_GUARD_S)
            assert opts.get_preferred_allocation_available
            four = _preferred(stub, ALL, 4)
            assert len(set(four)) == 4
            resp = stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=four)]), timeout=HANG_GUARD_S)
            assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(four)
            plugin.wait_xid_ready()
            plugin.nvml.inject_xid(2, 79)
            for q in updates:
                health = {d.ID: d.health for d in q.get(timeout=HANG_GUARD_S).devices}
                assert health[ALL[2]] == "Unhealthy"
        finally:
            for c in calls:
                c.cancel()


def test_stop_ends_every_stream(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    """Shutting down ends the open streams (the kubelet then sees the plugin gone)."""
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        updates = [stream_to_queue(stub.ListAndWatch(pb.Empty())) for _ in range(3)]
        for q in updates:
            q.get(timeout=HANG_GUARD_S)
        plugin.stop()
        for q in updates:
            end = q.get(timeout=HANG_GUARD_S)
            assert end == STREAM_END or isinstance(end, grpc.RpcError)
    assert not plugin.thread.is_alive()


def test_a_huge_device_id_is_refused_as_invalid_not_echoed(
    start_plugin: StartPlugin, kubelet: FakeKubelet
) -> None:
    """A 1 MiB id: INVALID_ARGUMENT with a short message (echoing it whole would overflow
    gRPC's metadata limit and turn the answer into RESOURCE_EXHAUSTED)."""
    plugin = start_plugin()
    kubelet.next_registration()
    huge = "GPU-" + "x" * 2**20
    channel, stub = plugin.stub()
    with channel:
        err = _refusal(stub.Allocate, pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[ALL[0], huge])]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert huge[:64] in err.details()
        assert f"({len(huge)} bytes)" in err.details()
        assert len(err.details()) < 1024
        err = _refusal(stub.GetPreferredAllocation, pb.PreferredAllocationRequest(
            container_requests=[pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=ALL, must_include_deviceIDs=[huge], allocation_size=2)]))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(err.details()) < 1024
        assert len(_preferred(stub, ALL, 2)) == 2  # and it answers afterwards


def test_allocate_refuses_a_device_listed_twice(
    start_plugin: StartPlugin, kubelet: FakeKubelet
) -> None:
    """[GPU0, GPU0, GPU0] would list GPU0 three times in NVIDIA_VISIBLE_DEVICES."""
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        err = _refusal(stub.Allocate, pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[ALL[0], ALL[0], ALL[0]])]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ALL[0] in err.details() and "twice" in err.details()


@dataclass(frozen=True, kw_only=True)
class BadPreferred:
    name: str
    requests: tuple[tuple[tuple[str, ...], tuple[str, ...], int], ...]  # available, must, size
    field: str  # the field the kubelet is told about
    says: str  # and a word of the reason


BAD_PREFERRED = [
    BadPreferred(name="size beyond the node", requests=((tuple(ALL), (), 2**31 - 1),),
                 field="container_requests[0].allocation_size", says="2147483647"),
    BadPreferred(name="must_include more than the size",
                 requests=((tuple(ALL), tuple(ALL[:4]), 2),),
                 field="container_requests[0].allocation_size", says="must_include"),
    BadPreferred(name="must_include not available",
                 requests=((tuple(ALL[:4]), (ALL[5],), 2),),
                 field="container_requests[0].must_include_deviceIDs", says=ALL[5]),
    BadPreferred(name="size zero", requests=((tuple(ALL), (), 0),),
                 field="container_requests[0].allocation_size", says="at least 1"),
    BadPreferred(name="negative size", requests=((tuple(ALL), (), -3),),
                 field="container_requests[0].allocation_size", says="-3"),
    BadPreferred(name="available listed twice", requests=(((ALL[1], ALL[1], ALL[2]), (), 2),),
                 field="container_requests[0].available_deviceIDs", says="twice"),
    BadPreferred(name="second container refused",
                 requests=((tuple(ALL), (), 2), (tuple(ALL[:2]), (), 3)),
                 field="container_requests[1].allocation_size", says="3"),
]


@pytest.mark.parametrize("case", BAD_PREFERRED, ids=lambda c: c.name)
def test_preferred_answers_the_size_asked_or_says_why_not(
    start_plugin: StartPlugin, kubelet: FakeKubelet, case: BadPreferred
) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()
    with channel:
        err = _refusal(stub.GetPreferredAllocation, pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available), must_include_deviceIDs=list(must),
                    allocation_size=size)
                for available, must, size in case.requests]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(case.field + ": ")
    assert case.says in err.details()
