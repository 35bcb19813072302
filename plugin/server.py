"""The gRPC side: the DevicePlugin servicer (translation only), its unix-socket server,
and the Register call to the kubelet.

Decisions live in ``plugin.resources``; this module turns protobuf requests into calls
on a ``ResourceManager`` and the answers back into protobuf, and maps a refused request
to INVALID_ARGUMENT in one place.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import grpc

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from plugin.log import fields
from plugin.metrics import PluginMetrics
from plugin.resources import AllocationError, DeviceState, ResourceManager

__all__ = [
    "API_VERSION",
    "KUBELET_CHANNEL_OPTIONS",
    "KUBELET_SOCKET",
    "DevicePluginServicer",
    "PluginServer",
    "device_list",
    "register",
    "socket_name",
]

log = logging.getLogger(__name__)

API_VERSION: Final = "v1beta1"
KUBELET_SOCKET: Final = "kubelet.sock"
#: How often a ListAndWatch stream checks that its client is still there.
_STREAM_POLL_S: Final = 1.0

#: Options for channels to the kubelet's sockets. A restarting kubelet recreates its
#: socket: without a private subchannel pool a new channel inherits the old one's
#: reconnect back-off (up to 120 s) and every Register in that window fails at once.
KUBELET_CHANNEL_OPTIONS: Final = (
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def socket_name(resource_name: str) -> str:
    """The plugin's socket file name in the kubelet directory (the Register endpoint).

    >>> socket_name("nvidia.com/gpu")
    'gputopo-nvidia.com-gpu.sock'
    """
    return "gputopo-" + resource_name.replace("/", "-") + ".sock"


def device_list(devices: Sequence[DeviceState]) -> pb.ListAndWatchResponse:
    return pb.ListAndWatchResponse(devices=[
        pb.Device(
            ID=d.uuid,
            health=d.health,
            topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=d.numa_node)])
            if d.numa_node is not None else None,
        )
        for d in devices
    ])


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    def __init__(
        self,
        rm: ResourceManager,
        *,
        stop: threading.Event,
        on_allocate: Callable[[Sequence[str]], None] = lambda ids: None,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.rm = rm
        self.stop = stop
        self.on_allocate = on_allocate
        self.metrics = metrics or PluginMetrics()

    @contextmanager
    def _timed(self, method: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)

    def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]:
        version = -1
        sent: tuple[DeviceState, ...] | None = None
        while not self.stop.is_set() and context.is_active():
            devices = self.rm.devices()
            if devices != sent:
                sent = devices
                self._count_health(devices)
                log.info("list and watch: sending devices", extra=fields(
                    devices=len(devices),
                    unhealthy=[d.uuid for d in devices if not d.healthy] or None))
                yield device_list(devices)
            version = self.rm.wait_for_change(version, _STREAM_POLL_S)

    def _count_health(self, devices: Sequence[DeviceState]) -> None:
        healthy = sum(d.healthy for d in devices)
        self.metrics.devices.labels("Healthy").set(healthy)
        self.metrics.devices.labels("Unhealthy").set(len(devices) - healthy)

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        with self._timed("GetPreferredAllocation"):
            responses = []
            for creq in request.container_requests:
                choice = self.rm.preferred(
                    list(creq.available_deviceIDs), list(creq.must_include_deviceIDs),
                    int(creq.allocation_size),
                )
                self.metrics.preferred.labels(choice.source).inc()
                log.info("preferred allocation", extra=fields(
                    source=choice.source, pod=choice.pod, container=choice.container,
                    size=creq.allocation_size, gpus=choice.devices,
                    indices=[self.rm.index_of(u) for u in choice.devices],
                    available=len(creq.available_deviceIDs),
                    must_include=list(creq.must_include_deviceIDs) or None,
                    detail=choice.detail or None))
                responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=choice.devices))
            return pb.PreferredAllocationResponse(container_responses=responses)

    def Allocate(
        self, request: pb.AllocateRequest, context: grpc.ServicerContext
    ) -> pb.AllocateResponse:
        with self._timed("Allocate"):
            responses = []
            allocated: list[str] = []
            for creq in request.container_requests:
                try:
                    alloc = self.rm.allocate(list(creq.devices_ids))
                except AllocationError as e:
                    self.metrics.allocations.labels("refused").inc()
                    log.warning("allocate refused", extra=fields(
                        gpus=list(creq.devices_ids), error=str(e)))
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                self.metrics.allocations.labels("ok").inc()
                log.info("allocate", extra=fields(
                    gpus=[d.uuid for d in alloc.devices],
                    indices=[d.index for d in alloc.devices],
                    devices=[s.host_path for s in alloc.device_specs] or None))
                allocated += [d.uuid for d in alloc.devices]
                responses.append(pb.ContainerAllocateResponse(
                    envs=dict(alloc.envs),
                    devices=[
                        pb.DeviceSpec(container_path=s.container_path, host_path=s.host_path,
                                      permissions=s.permissions)
                        for s in alloc.device_specs
                    ],
                ))
            self.on_allocate(allocated)
            return pb.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


class PluginServer:
    """The servicer on a unix socket, created owner-only (the kubelet runs as root)."""

    def __init__(self, servicer: DevicePluginServicer, socket_path: Path, *, workers: int = 16):
        self.servicer = servicer
        self.socket_path = socket_path
        self.workers = workers
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="deviceplugin-rpc"))
        pb_grpc.add_DevicePluginServicer_to_server(self.servicer, server)
        # The socket is bound here: a umask makes it 0600 from the first instant.
        with _umask(0o177):
            server.add_insecure_port(f"unix:{self.socket_path}")
            server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server
        log.info("device plugin serving", extra=fields(socket=str(self.socket_path)))

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Dial our own socket: the kubelet must find it answering when we register."""
        with grpc.insecure_channel(
            f"unix:{self.socket_path}", options=KUBELET_CHANNEL_OPTIONS
        ) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    @property
    def serving(self) -> bool:
        return self._server is not None


def register(
    kubelet_socket: Path, *, endpoint: str, resource_name: str, timeout: float = 5.0
) -> None:
    """Register with the kubelet (raises ``grpc.RpcError`` when it refuses or is away)."""
    with grpc.insecure_channel(
        f"unix:{kubelet_socket}", options=KUBELET_CHANNEL_OPTIONS
    ) as channel:
        pb_grpc.RegistrationStub(channel).Register(
            pb.RegisterRequest(
                version=API_VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=pb.DevicePluginOptions(
                    pre_start_required=False, get_preferred_allocation_available=True),
            ),
            timeout=timeout,
        )
