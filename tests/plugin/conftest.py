"""Test doubles that play the kubelet: its Registration and PodResources gRPC servers on
real unix sockets, and the plugin itself running in-process with short intervals."""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from plugin.api import podresources_pb2 as pr
from plugin.api import podresources_pb2_grpc as pr_grpc
from plugin.config import PluginConfig
from plugin.devkubelet import DevKubelet
from plugin.main import PluginApp, Timings
from plugin.nvml import discover, start_nvml
from plugin.podresources import PodResourcesClient
from topology.presets import preset

from .fakes import FaultyNvml, InMemoryCluster

#: Guard against a hung test only; no test asserts how long anything takes.
HANG_GUARD_S = 60.0

FAST = Timings(
    watch=0.05, register_retry=0.05, health_wait_ms=20, reconcile_settle=0.02,
    watch_retry=0.05, publish_retry=0.05,
)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="gt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class FakeKubelet(DevKubelet):
    """``plugin.devkubelet.DevKubelet`` with the tests' hang guard."""

    def next_registration(self, timeout: float | None = HANG_GUARD_S) -> pb.RegisterRequest:
        return super().next_registration(timeout)


@pytest.fixture
def kubelet(short_tmp: Path) -> Iterator[FakeKubelet]:
    k = FakeKubelet(short_tmp)
    k.start()
    try:
        yield k
    finally:
        k.stop()


Holdings = Mapping[tuple[str, str], Mapping[str, list[str]]]


class _Lister(pr_grpc.PodResourcesListerServicer):
    def __init__(self, owner: FakePodResources) -> None:
        self.owner = owner

    def List(self, request: Any, context: Any) -> pr.ListPodResourcesResponse:
        with self.owner.lock:
            holdings = {k: dict(v) for k, v in self.owner.holdings.items()}
        return pr.ListPodResourcesResponse(pod_resources=[
            pr.PodResources(namespace=ns, name=name, containers=[
                pr.ContainerResources(name=c, devices=[
                    pr.ContainerDevices(resource_name=self.owner.resource_name, device_ids=ids),
                    pr.ContainerDevices(resource_name="example.com/other", device_ids=["x"]),
                ])
                for c, ids in containers.items()
            ])
            for (ns, name), containers in holdings.items()
        ])


@dataclass
class FakePodResources:
    """The kubelet's PodResources service: what it says each container holds."""

    socket: Path
    resource_name: str = "nvidia.com/gpu"
    holdings: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pr_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def hold(self, namespace: str, pod: str, container: str, ids: list[str]) -> None:
        with self.lock:
            self.holdings.setdefault((namespace, pod), {})[container] = list(ids)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()


@pytest.fixture
def pod_resources(short_tmp: Path) -> Iterator[FakePodResources]:
    (short_tmp / "pr").mkdir()
    fake = FakePodResources(short_tmp / "pr" / "kubelet.sock")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@dataclass
class RunningPlugin:
    app: PluginApp
    nvml: FaultyNvml
    thread: threading.Thread
    kubelet: FakeKubelet
    cluster: InMemoryCluster | None

    @property
    def endpoint(self) -> str:
        return self.app.runner.endpoint

    def stub(self) -> tuple[grpc.Channel, pb_grpc.DevicePluginStub]:
        return self.kubelet.plugin_stub(self.endpoint)

    def stop(self) -> None:
        self.app.stop.set()
        self.thread.join(timeout=HANG_GUARD_S)


StartPlugin = Callable[..., RunningPlugin]


@pytest.fixture
def start_plugin(kubelet: FakeKubelet, short_tmp: Path) -> Iterator[StartPlugin]:
    """Start the whole plugin in-process against the fake kubelet; stopped at teardown."""
    running: list[RunningPlugin] = []

    def start(
        topology: str = "dgx1-v100",
        *,
        cluster: InMemoryCluster | None = None,
        pod_resources: FakePodResources | None = None,
        **cfg: Any,
    ) -> RunningPlugin:
        nvml = FaultyNvml(preset(topology))
        start_nvml(nvml)
        discovery = discover(nvml, name="node-a")
        config = PluginConfig(
            node_name="node-a", kubelet_dir=kubelet.directory,
            standalone=cluster is None,
            **{"health_interval_seconds": 0.05, "reconcile_interval_seconds": 0.2,
               "publish_interval_seconds": 0.2, **cfg},
        )
        lister = (PodResourcesClient(pod_resources.socket, config.resource_name).list
                  if pod_resources is not None else None)
        app = PluginApp(config, nvml=nvml, discovery=discovery, cluster=cluster,
                        pod_resources=lister, timings=FAST)
        thread = threading.Thread(target=app.run, daemon=True)
        thread.start()
        assert app.runner.ready.wait(HANG_GUARD_S)
        rp = RunningPlugin(app=app, nvml=nvml, thread=thread, kubelet=kubelet, cluster=cluster)
        running.append(rp)
        return rp

    yield start
    for rp in running:
        rp.stop()


def wait_until(condition: Callable[[], bool], *, poll: float = 0.01) -> bool:
    """Poll ``condition`` until true (False only past the hang guard)."""
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def stream_to_queue(stream: Any) -> queue.Queue[Any]:
    """Read a server stream on a thread, so a test can wait with a hang guard."""
    q: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for item in stream:
                q.put(item)
        except grpc.RpcError as e:
            q.put(e)

    threading.Thread(target=pump, daemon=True).start()
    return q
