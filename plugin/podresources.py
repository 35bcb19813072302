"""Client of the kubelet's PodResources API: its own record of who holds which device."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from types import MappingProxyType
from typing import Final

import grpc

from plugin.api import podresources_pb2, podresources_pb2_grpc
from plugin.resources import KubeletRecord
from plugin.server import KUBELET_CHANNEL_OPTIONS

__all__ = ["DEFAULT_POD_RESOURCES_SOCKET", "PodResourcesClient", "record_from_response"]

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


class PodResourcesClient:
    """``List`` over the kubelet's PodResources unix socket (a background-thread call)."""

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

    def close(self) -> None:
        self._channel.close()
