"""The kubelet asks before the plugin's pod cache has the pod: the assigned set still wins.

The kubelet calls GetPreferredAllocation milliseconds after it sees a pod; the plugin's
own watch may deliver that pod later. The real gRPC server answers over a unix socket
here, with a real pod cache fed by a watch of an in-memory API server, and a stand-in
for the kubelet's PodResources on a real unix socket. The cache's lag is made, not
waited for: the API server gets the pod only when the kubelet's ``List`` is called, so
the pod reaches the cache after the call has started. Whether a call waited is read
from the plugin's metrics, never from a clock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from plugin.catchup import PodCacheCatchUp
from plugin.cluster import PodInfo
from plugin.config import PluginConfig
from plugin.main import PluginApp
from plugin.metrics import PluginMetrics
from plugin.nvml import discover, start_nvml
from plugin.podresources import PodResourcesClient
from plugin.pods import PodCache
from plugin.resources import Preferred, TopologyResourceManager
from plugin.server import KUBELET_CHANNEL_OPTIONS, DevicePluginServicer, PluginServer
from topology.handoff import encode_gpu_sets, stable_gpu_uuid
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .conftest import HANG_GUARD_S, FakePodResources, stream_to_queue
from .fakes import Changes, FaultyNvml, InMemoryCluster

U = [stable_gpu_uuid(i) for i in range(8)]
DGX1 = preset("dgx1-v100").with_gpus(
    replace(g, uuid=U[g.index]) for g in preset("dgx1-v100").gpus)
NODE = "node-a"


def _pod(name: str, assigned: Sequence[str] | int, *, allocated: bool = False,
         namespace: str = "ml") -> PodInfo:
    """A pod asking for GPUs in container ``main``: the extender's set, or a count (a pod
    the extender did not place)."""
    annotations: dict[str, str] = {}
    if not isinstance(assigned, int):
        annotations[ASSIGNED_GPUS_ANNOTATION] = encode_gpu_sets({"main": list(assigned)})
        if allocated:
            annotations[ALLOCATED_GPUS_ANNOTATION] = annotations[ASSIGNED_GPUS_ANNOTATION]
    size = assigned if isinstance(assigned, int) else len(assigned)
    return PodInfo(namespace=namespace, name=name, node_name=NODE,
                   phase="Running" if allocated else "Pending", annotations=annotations,
                   created="2026-01-01T00:00:00+00:00",
                   device_requests={"main": {"nvidia.com/gpu": size}})


def _request(available: Sequence[str], size: int) -> pb.PreferredAllocationRequest:
    return pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=list(available),
                                               allocation_size=size)])


@dataclass
class Served:
    """The plugin's gRPC server with its pod cache, catch-up and metrics."""

    cluster: InMemoryCluster
    cache: PodCache
    rm: TopologyResourceManager
    metrics: PluginMetrics
    socket: Path

    def stub(self) -> tuple[grpc.Channel, pb_grpc.DevicePluginStub]:
        channel = grpc.insecure_channel(f"unix:{self.socket}", options=KUBELET_CHANNEL_OPTIONS)
        return channel, pb_grpc.DevicePluginStub(channel)

    def preferred(self, available: Sequence[str], size: int) -> list[str]:
        channel, stub = self.stub()
        with channel:
            resp = stub.GetPreferredAllocation(_request(available, size), timeout=HANG_GUARD_S)
        return list(resp.container_responses[0].deviceIDs)

    def checks(self, result: str) -> float:
        return self.metrics.registry.get_sample_value(
            "gputopo_plugin_pod_cache_checks_total", {"result": result}) or 0.0

    def waits(self) -> float:
        """Calls that waited for the cache (delivered or timed out)."""
        return self.metrics.registry.get_sample_value(
            "gputopo_plugin_pod_cache_wait_seconds_count") or 0.0

    def allocator_choice(self, available: Sequence[str], size: int) -> list[str]:
        """What the allocator alone answers with the cache as it is now."""
        choice = self.rm.preferred(list(available), [], size)
        assert isinstance(choice, Preferred) and choice.source == "allocator", choice
        return list(choice.devices)


Serve = Callable[..., Served]


@pytest.fixture
def serve(short_tmp: Path, pod_resources: FakePodResources) -> Iterator[Serve]:
    """Start the server: pods already known to the API server, the longest wait (the
    hang guard: a call that waits in vain fails the test on its answer, not on time)."""
    stops: list[Callable[[], None]] = []

    def start(*pods: PodInfo, max_wait: float = HANG_GUARD_S) -> Served:
        cluster = InMemoryCluster()
        cluster.add_node(NODE)
        for p in pods:
            cluster.put_pod(p)
        cache = PodCache(NODE)
        stop = threading.Event()
        watch = threading.Thread(target=cache.run, args=(cluster, stop),
                                 kwargs={"retry_seconds": 0.05}, daemon=True)
        watch.start()
        assert cache.synced.wait(HANG_GUARD_S)
        metrics = PluginMetrics()
        rm = TopologyResourceManager(DGX1, pods=cache.snapshot)
        client = PodResourcesClient(pod_resources.socket, pod_resources.resource_name)
        catch_up = PodCacheCatchUp(cache, client.listed_pods, max_wait=max_wait,
                                   metrics=metrics)
        server = PluginServer(DevicePluginServicer(rm, metrics=metrics, catch_up=catch_up),
                              short_tmp / "plugin.sock")
        server.start()

        def end() -> None:
            server.stop(grace=0)
            stop.set()
            watch.join(HANG_GUARD_S)
            client.close()

        stops.append(end)
        return Served(cluster=cluster, cache=cache, rm=rm, metrics=metrics,
                      socket=server.socket_path)

    yield start
    for end in stops:
        end()


def test_a_pod_the_kubelet_has_before_the_cache_gets_its_assigned_set(
    serve: Serve, pod_resources: FakePodResources, caplog: pytest.LogCaptureFixture
) -> None:
    """Failed before: the plugin answered at once with the allocator's pair."""
    served = serve()
    # GPU0 + GPU5 (SYS): a set the allocator would never pick by itself.
    train = _pod("train-0", [U[0], U[5]])
    pod_resources.admit("ml", "train-0")  # the kubelet admits the pod now
    # ... and the plugin's watch delivers it only once the call has started.
    pod_resources.next_list(lambda: served.cluster.put_pod(train))
    with caplog.at_level(logging.INFO, logger="plugin.catchup"):
        assert served.preferred(U, 2) == [U[0], U[5]]
    assert served.checks("delivered") == 1
    assert served.waits() == 1
    [line] = [r for r in caplog.records if r.getMessage() == "pod cache caught up with the kubelet"]
    assert line.levelno == logging.INFO
    assert line.fields["pods"] == ("ml/train-0",)  # type: ignore[attr-defined]
    assert line.fields["waited_ms"] >= 0  # type: ignore[attr-defined]


def test_nothing_new_at_the_kubelet_answers_at_once_with_the_allocators_set(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    # The kubelet's pods are all in the cache: one running on GPU0 + GPU3.
    served = serve(_pod("running", [U[0], U[3]], allocated=True))
    pod_resources.hold("ml", "running", "main", [U[0], U[3]])
    free = [u for u in U if u not in (U[0], U[3])]
    lists = pod_resources.lists
    assert served.preferred(free, 2) == served.allocator_choice(free, 2)
    assert pod_resources.lists == lists + 1  # it asked the kubelet once
    assert served.checks("in_sync") == 1
    assert served.waits() == 0  # and did not wait


def test_a_known_pod_waiting_for_that_many_gpus_is_answered_without_asking_the_kubelet(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    """A pod the extender did not place waits for 2 GPUs: the kubelet is admitting it (or
    one like it), and the allocator's set is the answer."""
    served = serve(_pod("batch", 2))
    lists = pod_resources.lists
    assert served.preferred(U, 2) == served.allocator_choice(U, 2)
    assert pod_resources.lists == lists
    assert served.checks("known") == 1
    # Nobody known waits for 3: the kubelet may be admitting a pod the cache lacks.
    served.preferred(U, 3)
    assert pod_resources.lists == lists + 1
    assert served.checks("in_sync") == 1


def test_the_next_pod_is_waited_for_while_the_kubelets_record_lags(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    """Two pods of one size admitted back to back (the e2e suite's case). The first was
    just allocated, its record not read yet: it still looks like a waiting pod, but the
    Allocate since accounts for it, so the second, which the cache lacks, is waited for."""
    served = serve(_pod("first", [U[4], U[5]]))
    channel, stub = served.stub()
    with channel:
        resp = stub.GetPreferredAllocation(_request(U, 2), timeout=HANG_GUARD_S)
        first = list(resp.container_responses[0].deviceIDs)
        assert first == [U[4], U[5]]
        stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=first)]), timeout=HANG_GUARD_S)
    second = _pod("second", [U[6], U[7]])
    pod_resources.admit("ml", "second")
    pod_resources.next_list(lambda: served.cluster.put_pod(second))
    assert served.preferred([u for u in U if u not in first], 2) == [U[6], U[7]]
    assert served.checks("delivered") == 1


def test_an_assigned_set_that_fits_is_answered_without_asking_the_kubelet(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    served = serve(_pod("train-0", [U[0], U[5]]))
    lists = pod_resources.lists
    assert served.preferred(U, 2) == [U[0], U[5]]
    assert pod_resources.lists == lists
    assert served.metrics.registry.get_sample_value(
        "gputopo_plugin_pod_cache_checks_total", {"result": "in_sync"}) is None


def test_api_server_down_answers_at_once_without_asking_the_kubelet(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    served = serve()
    served.cluster.go_down()
    assert served.cluster.changes.wait_for(lambda: not served.cache.live)
    # The kubelet has a pod the cache lacks, but no watch can bring it now.
    pod_resources.admit("ml", "new")
    lists = pod_resources.lists
    assert served.preferred(U, 2) == served.allocator_choice(U, 2)
    assert pod_resources.lists == lists
    assert served.checks("watch_down") == 1
    assert served.waits() == 0


def test_pod_resources_unreachable_answers_at_once(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    served = serve()
    pod_resources.stop()  # a kubelet restarting: its PodResources socket is not there
    assert served.preferred(U, 2) == served.allocator_choice(U, 2)
    assert served.checks("kubelet_unreachable") == 1
    assert served.waits() == 0


def test_a_pod_waited_for_in_vain_is_not_waited_for_again(
    serve: Serve, pod_resources: FakePodResources, caplog: pytest.LogCaptureFixture
) -> None:
    """A static pod without a mirror pod: the kubelet lists it, no watch ever will."""
    served = serve(max_wait=0.05)
    pod_resources.admit("kube-system", "static-0")
    with caplog.at_level(logging.WARNING, logger="plugin.catchup"):
        first = served.preferred(U, 2)
    assert served.checks("timed_out") == 1
    assert any(r.getMessage() == "pod cache behind the kubelet; answering without it"
               for r in caplog.records)
    second = served.preferred(U, 2)
    assert served.checks("in_sync") == 1  # asked again, but did not wait again
    assert served.waits() == 1
    assert first == second == served.allocator_choice(U, 2)
    # Once the cache has had it, it is forgotten: a later absence is waited for again.
    cached = Changes()
    served.cache.on_change(cached.notify)
    key = ("kube-system", "static-0")
    served.cluster.put_pod(_pod("static-0", [U[6], U[7]], namespace="kube-system",
                                allocated=True))
    assert cached.wait_for(lambda: key in served.cache.snapshot())
    served.preferred(U, 2)
    assert served.checks("in_sync") == 2
    served.cluster.delete_pod(*key)
    assert cached.wait_for(lambda: key not in served.cache.snapshot())
    served.preferred(U, 2)
    assert served.checks("timed_out") == 2


def test_a_call_waiting_for_the_cache_holds_up_no_other_call(
    serve: Serve, pod_resources: FakePodResources
) -> None:
    """The wait is awaited on the server's loop: while two calls wait for their pods,
    every other call is answered, and each waiting call ends when its own pod arrives."""
    served = serve()
    a, b = _pod("a", [U[0], U[5]]), _pod("b", [U[1], U[2], U[6], U[7]])
    channel, stub = served.stub()
    with channel:
        pod_resources.admit("ml", "a")
        call_a = stub.GetPreferredAllocation.future(_request(U, 2), timeout=HANG_GUARD_S)
        assert pod_resources.changes.wait_for(lambda: pod_resources.lists == 1)
        pod_resources.admit("ml", "b")
        call_b = stub.GetPreferredAllocation.future(_request(U, 4), timeout=HANG_GUARD_S)
        assert pod_resources.changes.wait_for(lambda: pod_resources.lists == 2)
        # Both wait. Everything else is served meanwhile.
        opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=HANG_GUARD_S)
        assert opts.get_preferred_allocation_available
        alloc = stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[U[3]])]), timeout=HANG_GUARD_S)
        assert alloc.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == U[3]
        watch = stub.ListAndWatch(pb.Empty())
        try:
            first = stream_to_queue(watch).get(timeout=HANG_GUARD_S)
            assert [d.ID for d in first.devices] == U
        finally:
            watch.cancel()
        # B arrives: B's call ends with B's set; A's call still waits for A.
        served.cluster.put_pod(b)
        assert list(call_b.result(timeout=HANG_GUARD_S).container_responses[0].deviceIDs) \
            == [U[1], U[2], U[6], U[7]]
        assert not call_a.done()
        served.cluster.put_pod(a)
        assert list(call_a.result(timeout=HANG_GUARD_S).container_responses[0].deviceIDs) \
            == [U[0], U[5]]
    assert served.checks("delivered") == 2


def _app(short_tmp: Path, **cfg: Any) -> PluginApp:
    nvml = FaultyNvml(preset("dgx1-v100"))
    start_nvml(nvml)
    config = PluginConfig(node_name=NODE, kubelet_dir=short_tmp, **cfg)
    client = PodResourcesClient(short_tmp / "absent.sock", config.resource_name)
    return PluginApp(config, nvml=nvml, discovery=discover(nvml, name=NODE),
                     cluster=None if config.standalone else InMemoryCluster(),
                     pod_resources=client.list, kubelet_pods=client.listed_pods)


def test_the_app_checks_the_cache_only_with_an_api_server_and_a_wait(short_tmp: Path) -> None:
    app = _app(short_tmp)
    assert app.catch_up is not None and app.catch_up.max_wait == 0.5
    # Not started: its pod watch does not deliver yet, and the gauge says so.
    assert app.metrics.registry.get_sample_value("gputopo_plugin_pod_watch_live") == 0
    assert app.servicer.catch_up is app.catch_up and app.catch_up.cache is app.pods
    assert _app(short_tmp, pod_cache_wait_seconds=0).catch_up is None
    assert _app(short_tmp, standalone=True).catch_up is None
