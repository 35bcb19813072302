"""Test doubles that play the kubelet: its Registration and PodResources gRPC servers on
real unix sockets, and the plugin itself running in-process with short intervals."""

from __future__ import annotations

import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from plugin.config import PluginConfig
from plugin.devkubelet import DevKubelet
from plugin.main import PluginApp, Timings
from plugin.nvml import discover, start_nvml
from plugin.podresources import PodResourcesClient
from topology.presets import preset

from .fakes import HANG_GUARD_S as HANG_GUARD_S  # re-exported: the tests import it from here
from .fakes import FakePodResources as FakePodResources  # the tests import it from here
from .fakes import FaultyNvml, InMemoryCluster

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


class _RefusingRegistration(pb_grpc.RegistrationServicer):
    def __init__(self, owner: RefusingKubelet) -> None:
        self.owner = owner

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        with self.owner.lock:
            refuse = self.owner.refusals > 0
            self.owner.refusals -= refuse
        if refuse:
            self.owner.refused.set()
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is not ready (test)")
        self.owner.requests.put(request)
        return pb.Empty()


class RefusingKubelet(FakeKubelet):
    """A kubelet whose Registration refuses the first ``refusals`` calls."""

    def __init__(self, directory: Path, refusals: int = 1) -> None:
        super().__init__(directory)
        self.lock = threading.Lock()
        self.refusals = refusals
        self.refused = threading.Event()

    def registration_servicer(self) -> pb_grpc.RegistrationServicer:
        return _RefusingRegistration(self)


@pytest.fixture
def kubelet(short_tmp: Path) -> Iterator[FakeKubelet]:
    k = FakeKubelet(short_tmp)
    k.start()
    try:
        yield k
    finally:
        k.stop()


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

    def wait_xid_ready(self) -> None:
        """Until the health loop listens for XIDs on every GPU (an XID before is lost)."""
        gpus = self.nvml.topology.size
        assert self.nvml.changes.wait_for(lambda: len(self.nvml.registered_for_events) == gpus)

    def stop(self) -> None:
        self.app.stop.set()
        self.thread.join(timeout=HANG_GUARD_S)


StartPlugin = Callable[..., RunningPlugin]


def run_plugin(
    kubelet: FakeKubelet,
    topology: str = "dgx1-v100",
    *,
    cluster: InMemoryCluster | None = None,
    pod_resources: FakePodResources | None = None,
    timings: Timings = FAST,
    ready: bool = True,
    **cfg: Any,
) -> RunningPlugin:
    """The whole plugin in-process against ``kubelet`` (``ready``: wait until it serves)."""
    nvml = FaultyNvml(preset(topology))
    start_nvml(nvml)
    discovery = discover(nvml, name="node-a")
    config = PluginConfig(
        node_name="node-a", kubelet_dir=kubelet.directory,
        standalone=cluster is None,
        **{"health_interval_seconds": 0.05, "reconcile_interval_seconds": 0.2,
           "publish_interval_seconds": 0.2, **cfg},
    )
    client = (PodResourcesClient(pod_resources.socket, config.resource_name)
              if pod_resources is not None else None)
    app = PluginApp(config, nvml=nvml, discovery=discovery, cluster=cluster,
                    pod_resources=client.list if client is not None else None,
                    kubelet_pods=client.listed_pods if client is not None else None,
                    timings=timings)
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    if ready:
        assert app.runner.ready.wait(HANG_GUARD_S)
    return RunningPlugin(app=app, nvml=nvml, thread=thread, kubelet=kubelet, cluster=cluster)


@pytest.fixture
def start_plugin(kubelet: FakeKubelet, short_tmp: Path) -> Iterator[StartPlugin]:
    """Start the whole plugin in-process against the fake kubelet; stopped at teardown."""
    running: list[RunningPlugin] = []

    def start(topology: str = "dgx1-v100", **kw: Any) -> RunningPlugin:
        rp = run_plugin(kubelet, topology, **kw)
        running.append(rp)
        return rp

    yield start
    for rp in running:
        rp.stop()


#: Put on a ``stream_to_queue`` queue when the server ends the stream.
STREAM_END = "end of stream"


def stream_to_queue(stream: Any) -> queue.Queue[Any]:
    """Read a server stream on a thread, so a test can wait with a hang guard.

    Each response is put on the queue, then ``STREAM_END`` (or the ``grpc.RpcError``).
    """
    q: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for item in stream:
                q.put(item)
        except grpc.RpcError as e:
            q.put(e)
        else:
            q.put(STREAM_END)

    threading.Thread(target=pump, daemon=True).start()
    return q
