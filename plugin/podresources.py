"""Client of the kubelet's PodResources API: its own record of who holds which device,
and which pods it has (``listed_pods``, awaited on the gRPC server's event loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import grpc

from plugin.api import podresources_pb2, podresources_pb2_grpc
from plugin.cluster import PodKey
from plugin.resources import KubeletRecord
from plugin.server import KUBELET_CHANNEL_OPTIONS

__all__ = [
    "DEFAULT_POD_RESOURCES_SOCKET",
    "PodResourcesClient",
    "pods_listed",
    "record_from_response",
]

DEFAULT_POD_RESOURCES_SOCKET: Final = Path("/var/lib/kubelet/pod-resources/kubelet.sock")


def record_from_response(
    response: podresources_pb2.ListPodResourcesResponse, resource_name: str
) -> KubeletRecord:
    """Pods and containers holding devices of ``resource_name`` (others left out)."""
    record: dict[tuple[str, str], dict[str, tuple[str, ...]]] = defaultdict(dict)
    for pod in response.pod_resources:
        for container in pod.containers:
            ids = [
                device_id
                for devices in container.devices
                if devices.resource_name == resource_name
                for device_id in devices.device_ids
            ]
            if ids:
                record[(pod.namespace, pod.name)][container.name] = tuple(sorted(set(ids)))
    return MappingProxyType({k: MappingProxyType(v) for k, v in record.items()})


def pods_listed(response: podresources_pb2.ListPodResourcesResponse) -> frozenset[PodKey]:
    """Every pod the kubelet lists, holding devices or not (the one being admitted too)."""
    return frozenset((pod.namespace, pod.name) for pod in response.pod_resources)


def _settle(done: asyncio.Future[Any], call: grpc.Future) -> None:
    """On the loop: hand the finished gRPC call's outcome to the awaiting coroutine."""
    if done.done():  # the awaiting call was cancelled meanwhile
        return
    try:
        done.set_result(call.result())
    except grpc.FutureCancelledError:
        done.cancel()
    except Exception as e:  # grpc.RpcError: the kubelet is away, or it timed out
        done.set_exception(e)


class PodResourcesClient:
    """``List`` over the kubelet's PodResources unix socket.

    ``list`` blocks (the reconciler's thread calls it); ``listed_pods`` is awaited on an
    event loop: the call runs on gRPC's own threads and only its outcome comes back to
    the loop, so the loop serves other calls meanwhile.
    """

    def __init__(self, socket_path: Path, resource_name: str, *, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.resource_name = resource_name
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            f"unix:{socket_path}", options=KUBELET_CHANNEL_OPTIONS)
        self._stub = podresources_pb2_grpc.PodResourcesListerStub(self._channel)

    def list(self) -> KubeletRecord:
        response = self._stub.List(podresources_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        return record_from_response(response, self.resource_name)

    async def listed_pods(self, timeout: float) -> frozenset[PodKey]:
        """The pods the kubelet has now (raises ``grpc.RpcError`` when it does not answer
        within ``timeout`` seconds)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[podresources_pb2.ListPodResourcesResponse] = loop.create_future()
        call = self._stub.List.future(podresources_pb2.ListPodResourcesRequest(),
                                      timeout=timeout)

        def finished(f: grpc.Future) -> None:  # on a gRPC thread (or here, if done already)
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, done, f)

        call.add_done_callback(finished)
        try:
            response = await done
        except asyncio.CancelledError:
            call.cancel()
            raise
        return pods_listed(response)

    def close(self) -> None:
        self._channel.close()
