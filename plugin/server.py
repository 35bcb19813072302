"""The gRPC side: the DevicePlugin servicer (translation only), its unix-socket server,
and the Register call to the kubelet.

Decisions live in ``plugin.resources``; this module turns protobuf requests into calls
on a ``ResourceManager`` and the answers back into protobuf, and maps a refused request
to INVALID_ARGUMENT in one place.

The server is ``grpc.aio`` on an event loop of its own thread. A ListAndWatch stream is
a coroutine parked on an ``asyncio.Event`` between changes, so it holds no worker: with
a thread pool, each open stream held one of its threads, and 16 streams left the
kubelet's unary calls (which it makes without a time-out) waiting forever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, NoReturn

import grpc
import grpc.aio

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from plugin.catchup import PodCacheCatchUp, preferred
from plugin.log import clip_all, fields
from plugin.metrics import PluginMetrics
from plugin.resources import AllocationError, DeviceState, Refused, ResourceManager

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
#: Longest status message sent back: it travels in a trailer (gRPC's metadata limit).
MAX_DETAILS: Final = 1024
#: How long a start or stop of the server may take before it is called failed.
_LIFECYCLE_TIMEOUT_S: Final = 30.0

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


async def _abort(context: grpc.aio.ServicerContext[Any, Any], message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message[:MAX_DETAILS])
    raise AssertionError("abort returned")  # it raises; this tells mypy


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    """The kubelet's DevicePlugin service, as coroutines on the server's event loop.

    Every answer is decided from memory. The one await on a unary call's path is a
    GetPreferredAllocation that found no assigned set while the pod cache may be behind
    the kubelet (``catch_up``, see ``plugin.catchup``): it asks the kubelet's
    PodResources and may wait, bounded, for the cache; other calls are served meanwhile.
    A ListAndWatch stream waits on an event that a device change sets from whatever
    thread made it.
    """

    def __init__(
        self,
        rm: ResourceManager,
        *,
        on_allocate: Callable[[Sequence[str]], None] = lambda ids: None,
        metrics: PluginMetrics | None = None,
        catch_up: PodCacheCatchUp | None = None,
    ) -> None:
        self.rm = rm
        self.on_allocate = on_allocate
        self.metrics = metrics or PluginMetrics()
        self.catch_up = catch_up
        self._changed: asyncio.Event | None = None
        self._ending = False
        self._unsubscribe: Callable[[], None] = lambda: None

    # --- the serving loop ----------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on ``loop`` (its thread): device changes wake the streams there."""
        self._changed = asyncio.Event()
        self._ending = False

        def changed() -> None:  # on the thread that changed the devices
            loop.call_soon_threadsafe(self._wake)

        self._unsubscribe = self.rm.subscribe(changed)

    def end_streams(self) -> None:
        """On the loop: every stream ends (the server is stopping)."""
        self._ending = True
        self._unsubscribe()
        self._wake()

    def _wake(self) -> None:
        changed = self._changed
        self._changed = asyncio.Event()
        if changed is not None:
            changed.set()

    @contextmanager
    def _timed(self, method: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.rpc_seconds.labels(method).observe(time.perf_counter() - start)

    # --- the RPCs ------------------------------------------------------------------------

    async def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: pb.Empty, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ListAndWatchResponse]:
        sent: tuple[DeviceState, ...] | None = None
        while not self._ending and self._changed is not None:
            # Taken before reading: a change after the read sets this very event.
            changed = self._changed
            devices = self.rm.devices()
            if devices != sent:
                sent = devices
                self._count_health(devices)
                log.info("list and watch: sending devices", extra=fields(
                    devices=len(devices),
                    unhealthy=[d.uuid for d in devices if not d.healthy] or None))
                yield device_list(devices)
            await changed.wait()

    def _count_health(self, devices: Sequence[DeviceState]) -> None:
        healthy = sum(d.healthy for d in devices)
        self.metrics.devices.labels("Healthy").set(healthy)
        self.metrics.devices.labels("Unhealthy").set(len(devices) - healthy)

    async def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PreferredAllocationResponse:
        with self._timed("GetPreferredAllocation"):
            responses = []
            catch_up = self.catch_up  # checked once per call at most
            for k, creq in enumerate(request.container_requests):
                available = list(creq.available_deviceIDs)
                must = list(creq.must_include_deviceIDs)
                choice, check = await preferred(self.rm, available, must,
                                                int(creq.allocation_size), catch_up=catch_up)
                if check is not None:
                    catch_up = None
                if isinstance(choice, Refused):
                    self.metrics.preferred.labels("refused").inc()
                    log.warning("preferred allocation refused", extra=fields(
                        field=choice.field, error=choice.reason, size=creq.allocation_size,
                        available=len(available), must_include=clip_all(must) or None))
                    await _abort(context, f"container_requests[{k}].{choice.field}: "
                                          f"{choice.reason}")
                self.metrics.preferred.labels(choice.source).inc()
                log.info("preferred allocation", extra=fields(
                    source=choice.source, pod=choice.pod, container=choice.container,
                    size=creq.allocation_size, gpus=choice.devices,
                    indices=[self.rm.index_of(u) for u in choice.devices],
                    available=len(available), must_include=clip_all(must) or None,
                    cache=check.result if check is not None else None,
                    cache_wait_ms=round(check.waited_s * 1000, 1)
                    if check is not None and check.waited else None,
                    detail=choice.detail or None))
                responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=choice.devices))
            return pb.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(
        self, request: pb.AllocateRequest, context: grpc.aio.ServicerContext[Any, Any]
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
                        gpus=clip_all(creq.devices_ids), error=str(e)))
                    await _abort(context, str(e))
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

    async def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.aio.ServicerContext[Any, Any]
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
    """The servicer on a unix socket, created owner-only (the kubelet runs as root).

    ``start`` and ``stop`` are called from the runner's thread; each start runs a fresh
    event loop on a thread of its own, and ``stop`` ends the streams, the server, the
    loop and the thread, so a restart (kubelet restarted, SIGHUP) begins from nothing.
    """

    def __init__(self, servicer: DevicePluginServicer, socket_path: Path) -> None:
        self.servicer = servicer
        self.socket_path = socket_path
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="deviceplugin-grpc",
                                  daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(_LIFECYCLE_TIMEOUT_S)
        except BaseException:
            self.stop(grace=0)
            raise
        log.info("device plugin serving", extra=fields(socket=str(self.socket_path)))

    async def _start(self) -> None:
        server = grpc.aio.server()
        pb_grpc.add_DevicePluginServicer_to_server(self.servicer, server)
        self.servicer.attach(asyncio.get_running_loop())  # before the first stream can come
        # The socket is bound here: a umask makes it 0600 from the first instant.
        with _umask(0o177):
            server.add_insecure_port(f"unix:{self.socket_path}")
            await server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server

    async def _stop(self, grace: float) -> None:
        self.servicer.end_streams()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Dial our own socket: the kubelet must find it answering when we register."""
        with grpc.insecure_channel(
            f"unix:{self.socket_path}", options=KUBELET_CHANNEL_OPTIONS
        ) as channel:
            grpc.channel_ready_future(channel).result(timeout=timeout)

    def stop(self, grace: float = 1.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._stop(grace), loop).result(
                    _LIFECYCLE_TIMEOUT_S)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(_LIFECYCLE_TIMEOUT_S)
                if not thread.is_alive():
                    loop.close()
                self._loop = self._thread = None
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
