"""A storm of malformed kubelet calls against the real server on a real unix socket.

Hypothesis builds GetPreferredAllocation and Allocate requests with sizes anywhere in
int32, repeated, unknown, empty and huge IDs, and several containers at once. Every
answer must be OK (and right) or INVALID_ARGUMENT (naming the field, short enough for a
gRPC trailer): never another status, never a crash, and the server answers afterwards.
One plugin serves every example of a storm, as one would serve a misbehaving client.
"""

from __future__ import annotations

from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin.api import deviceplugin_pb2 as pb
from plugin.server import MAX_DETAILS
from topology.handoff import stable_gpu_uuid

from .conftest import HANG_GUARD_S, FakeKubelet, StartPlugin, stream_to_queue
from .reference import allocate_ok, preferred_refusal

ALL = [stable_gpu_uuid(i) for i in range(8)]
HUGE = "GPU-" + "h" * 2**20
ODD = ["", "GPU-elsewhere", "GPU-" + "l" * 16_384, "\x00", "é" * 100, "GPU-0 ", ALL[0].lower()]
IDS = st.one_of(st.sampled_from(ALL), st.sampled_from(ODD), st.text(max_size=12))
ID_LISTS = st.lists(IDS, max_size=12)
#: Where the one 1 MiB ID of a request goes (list number; beyond them: nowhere). One
#: at most: past gRPC's 4 MiB message limit, gRPC itself answers RESOURCE_EXHAUSTED
#: before any code of ours runs. Placed by the test, so Hypothesis never prints it.
HUGE_AT = st.integers(0, 12)
SIZES = st.one_of(st.integers(-2, 10), st.integers(-(2**31), 2**31 - 1))
STORM = settings(max_examples=300, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _call(method: Any, request: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, method(request, timeout=HANG_GUARD_S)
    except grpc.RpcError as e:
        return e.code(), e


def _still_answers(stub: Any) -> None:
    assert stub.GetDevicePluginOptions(pb.Empty(), timeout=HANG_GUARD_S)
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=ALL, allocation_size=2)]),
        timeout=HANG_GUARD_S)
    assert len(resp.container_responses[0].deviceIDs) == 2


def test_preferred_allocation_storm(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()

    @STORM
    @given(st.lists(st.tuples(ID_LISTS, st.lists(IDS, max_size=4), SIZES), max_size=4),
           HUGE_AT)
    def storm(containers: list[tuple[list[str], list[str], int]], huge_at: int) -> None:
        if huge_at < 2 * len(containers):
            available, must, size = containers[huge_at // 2]
            containers[huge_at // 2] = ((available, [*must, HUGE], size) if huge_at % 2
                                        else ([*available, HUGE], must, size))
        code, answer = _call(stub.GetPreferredAllocation, pb.PreferredAllocationRequest(
            container_requests=[pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, must_include_deviceIDs=must,
                allocation_size=size) for available, must, size in containers]))
        refusals = [(k, preferred_refusal(a, m, n, ALL)) for k, (a, m, n) in enumerate(containers)]
        first = next(((k, f) for k, f in refusals if f is not None), None)
        if first is None:
            assert code == grpc.StatusCode.OK, answer
            for (available, must, size), got in zip(containers, answer.container_responses,
                                                    strict=True):
                ids = list(got.deviceIDs)
                assert len(ids) == size == len(set(ids))
                assert set(must) <= set(ids) <= set(available) & set(ALL)
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, code
            assert answer.details().startswith(f"container_requests[{first[0]}].{first[1]}: ")
            assert len(answer.details()) <= MAX_DETAILS

    with channel:
        stream = stream_to_queue(stub.ListAndWatch(pb.Empty()))
        assert len(stream.get(timeout=HANG_GUARD_S).devices) == 8
        storm()
        _still_answers(stub)
        plugin.wait_xid_ready()
        plugin.nvml.inject_xid(1, 79)  # the stream opened before the storm still streams
        health = {d.ID: d.health for d in stream.get(timeout=HANG_GUARD_S).devices}
        assert health[ALL[1]] == "Unhealthy"


def test_allocate_storm(start_plugin: StartPlugin, kubelet: FakeKubelet) -> None:
    plugin = start_plugin()
    kubelet.next_registration()
    channel, stub = plugin.stub()

    @STORM
    @given(st.lists(ID_LISTS, max_size=3), HUGE_AT)
    def storm(containers: list[list[str]], huge_at: int) -> None:
        if huge_at < len(containers):
            containers[huge_at] = [*containers[huge_at], HUGE]
        code, answer = _call(stub.Allocate, pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=ids) for ids in containers]))
        if all(allocate_ok(ids, ALL) for ids in containers):
            assert code == grpc.StatusCode.OK, answer
            got = [dict(c.envs) for c in answer.container_responses]
            assert got == [{"NVIDIA_VISIBLE_DEVICES": ",".join(ids)} for ids in containers]
        else:
            assert code == grpc.StatusCode.INVALID_ARGUMENT, code
            assert 0 < len(answer.details()) <= MAX_DETAILS

    with channel:
        storm()
        _still_answers(stub)
