"""``plugin.kube`` pieces that need no API server: model conversion and the
create-or-update logic of the GPUTopology object (the API calls are faked)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from plugin.kube import KubeCluster, pod_info
from plugin.publish import wanted_object
from topology.presets import preset


def test_pod_info_from_a_v1pod() -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(
            namespace="ml", name="p", uid="u1", annotations={"a": "b"},
            creation_timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            deletion_timestamp=datetime(2026, 1, 2, 3, 5, 0, tzinfo=UTC)),
        spec=client.V1PodSpec(node_name="n1", containers=[]),
        status=client.V1PodStatus(phase="Running"),
    )
    info = pod_info(pod)
    assert (info.namespace, info.name, info.uid, info.node_name, info.phase) == (
        "ml", "p", "u1", "n1", "Running")
    assert info.annotations == {"a": "b"}
    assert info.created == "2026-01-02T03:04:05+00:00"
    assert info.deleting


def test_device_requests_of_every_container_limits_first() -> None:
    def container(name: str, limits: dict[str, str] | None = None,
                  requests: dict[str, str] | None = None) -> client.V1Container:
        return client.V1Container(name=name, resources=client.V1ResourceRequirements(
            limits=limits, requests=requests))

    spec = client.V1PodSpec(
        init_containers=[container("init", requests={"nvidia.com/gpu": "1"})],
        containers=[
            container("main", limits={"nvidia.com/gpu": "4", "cpu": "2", "memory": "1Gi"},
                      requests={"nvidia.com/gpu": "4", "cpu": "1"}),
            container("odd", limits={"nvidia.com/gpu": "1k", "example.com/nic": "0"}),
            container("plain", limits={"cpu": "1"}),
            client.V1Container(name="bare"),
        ])
    info = pod_info(client.V1Pod(metadata=client.V1ObjectMeta(namespace="ml", name="p"),
                                 spec=spec))
    # Not whole counts ("1k"), zero, and the standard resources are left out.
    assert info.device_requests == {"init": {"nvidia.com/gpu": 1},
                                    "main": {"nvidia.com/gpu": 4}}


class FakeCustom:
    """Just enough of CustomObjectsApi for one cluster-scoped object."""

    def __init__(self, conflicts: int = 0) -> None:
        self.obj: dict[str, Any] | None = None
        self.version = 0
        self.conflicts = conflicts
        self.calls: list[str] = []

    def get_cluster_custom_object(self, g: str, v: str, p: str, name: str,
                                  **_: Any) -> dict[str, Any]:
        self.calls.append("get")
        if self.obj is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.obj)

    def create_cluster_custom_object(self, g: str, v: str, p: str, body: dict[str, Any],
                                     **_: Any) -> None:
        self.calls.append("create")
        self.version += 1
        self.obj = {**copy.deepcopy(body), "metadata": {
            **body["metadata"], "resourceVersion": str(self.version)}}

    def replace_cluster_custom_object(self, g: str, v: str, p: str, name: str,
                                      body: dict[str, Any], **_: Any) -> None:
        self.calls.append("replace")
        if self.conflicts:
            self.conflicts -= 1
            raise ApiException(status=409, reason="Conflict")
        assert self.obj is not None
        assert body["metadata"]["resourceVersion"] == self.obj["metadata"]["resourceVersion"]
        self.create_cluster_custom_object(g, v, p, body)


@pytest.fixture
def kube() -> tuple[KubeCluster, FakeCustom]:
    k = KubeCluster(client.ApiClient(client.Configuration()))
    fake = FakeCustom(conflicts=1)
    k.custom = fake  # type: ignore[assignment]
    return k, fake


def test_apply_creates_then_leaves_alone_then_replaces_after_a_conflict(
    kube: tuple[KubeCluster, FakeCustom]
) -> None:
    k, fake = kube
    obj = wanted_object("n1", preset("dgx1-v100"), "uid-1")
    assert k.apply_gputopology(obj) == "created"
    assert k.apply_gputopology(obj) == "unchanged"
    changed = wanted_object("n1", preset("dgx-a100"), "uid-1")
    assert k.apply_gputopology(changed) == "updated"  # first replace: 409, read again
    assert fake.calls.count("replace") == 2
    assert fake.obj is not None and fake.obj["spec"] == changed["spec"]
