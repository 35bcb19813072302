"""One contract for every ClusterState source: in memory, a fake API server, a real one.

The real API server is the end-to-end harness's control plane (kube-apiserver built from
the k8s.io/kubernetes module, see tests/conftest.py), or any cluster that
GPUTOPO_TEST_KUBECONFIG names; the suite creates a namespace, the GPUTopology CRD if it
is missing, GPUTopology objects for fake node names and pods bound to them, and deletes
them all at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from extender.cluster import Cluster, ClusterError
from extender.kube import GPUTOPOLOGY_PATH, KubeCluster
from extender.kubeapi import ApiError, KubeApi, load_api
from extender.memory import MemoryCluster
from extender.request import PodRef
from extender.views import summary
from topology.handoff import gputopology_object, stable_gpu_uuid
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .fakekube import FakeKubeApi
from .helpers import gpu_pod
from .helpers import until as until_events


def ids(*indices: int) -> str:
    return json.dumps({"main": [stable_gpu_uuid(i) for i in indices]})


class MemoryDriver:
    """The in-memory source; a "restart" builds a new MemoryCluster from the same pods."""

    name = "memory"

    def __init__(self) -> None:
        self.topologies: dict[str, Any] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.live: list[MemoryCluster] = []
        self.namespace = "default"

    async def add_topology(self, node: str, name: str) -> None:
        self.topologies[node] = preset(name)
        for c in self.live:
            c.set_topology(node, preset(name))

    async def delete_topology(self, node: str) -> None:
        del self.topologies[node]
        for c in self.live:
            c.remove_node(node)

    async def add_pod(self, pod: dict[str, Any]) -> None:
        self.pods[pod["metadata"]["uid"]] = pod
        for c in self.live:
            c.put_pod(pod)

    async def set_phase(self, pod: dict[str, Any], phase: str) -> None:
        pod["status"]["phase"] = phase
        for c in self.live:
            c.set_phase(pod["metadata"]["uid"], phase)

    async def delete_pod(self, pod: dict[str, Any]) -> None:
        del self.pods[pod["metadata"]["uid"]]
        for c in self.live:
            c.delete_pod(pod["metadata"]["uid"])

    async def new_cluster(self) -> Cluster:
        c = MemoryCluster(topologies=dict(self.topologies), pods=list(self.pods.values()))
        await c.start()
        self.live.append(c)
        return c

    async def cleanup(self) -> None:
        for c in self.live:
            await c.stop()


class KubeDriver:
    """Objects in an API server (the fake one, or a real one through a kubeconfig)."""

    def __init__(self, api: KubeApi, name: str, namespace: str) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.live: list[KubeCluster] = []
        self.nodes: list[str] = []
        self.suffix = uuid.uuid4().hex[:6]

    def node(self, node: str) -> str:
        return f"{node}-{self.suffix}"

    async def add_topology(self, node: str, name: str) -> None:
        self.nodes.append(node)
        obj = gputopology_object(self.node(node), preset(name))
        if isinstance(self.api, FakeKubeApi):
            self.api.put_topology(obj)
        else:
            await self.api.request("POST", GPUTOPOLOGY_PATH, body=obj)

    async def delete_topology(self, node: str) -> None:
        if isinstance(self.api, FakeKubeApi):
            self.api.delete_topology(self.node(node))
        else:
            await self.api.request("DELETE", f"{GPUTOPOLOGY_PATH}/{self.node(node)}")

    def _real(self, pod: dict[str, Any]) -> dict[str, Any]:
        p = json.loads(json.dumps(pod))
        p["metadata"]["namespace"] = self.namespace
        if p["spec"].get("nodeName"):
            p["spec"]["nodeName"] = self.node(p["spec"]["nodeName"])
        return p

    async def add_pod(self, pod: dict[str, Any]) -> None:
        p = self._real(pod)
        if isinstance(self.api, FakeKubeApi):
            self.api.put_pod(p)
            return
        p["metadata"].pop("uid")
        p.pop("status", None)
        made = await self.api.request("POST", f"/api/v1/namespaces/{self.namespace}/pods", body=p)
        pod["metadata"]["uid"] = made["metadata"]["uid"]

    async def set_phase(self, pod: dict[str, Any], phase: str) -> None:
        pod["status"]["phase"] = phase
        if isinstance(self.api, FakeKubeApi):
            self.api.put_pod(self._real(pod))
            return
        await self.api.request(
            "PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/status",
            body={"status": {"phase": phase}}, content_type="application/merge-patch+json")

    async def delete_pod(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if isinstance(self.api, FakeKubeApi):
            self.api.delete_pod(self.namespace, name)
            return
        await self.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                         query={"gracePeriodSeconds": "0"})

    async def new_cluster(self) -> Cluster:
        c = KubeCluster(self.api, watch_timeout_s=2, backoff_s=(0.05,))
        await c.start()
        self.live.append(c)
        return c

    async def cleanup(self) -> None:
        for c in self.live:
            await c.stop()
        if isinstance(self.api, FakeKubeApi):
            return
        for node in self.nodes:
            with contextlib.suppress(ApiError):  # already deleted by the test
                await self.api.request("DELETE", f"{GPUTOPOLOGY_PATH}/{self.node(node)}")
        await self.api.request("DELETE", f"/api/v1/namespaces/{self.namespace}")
        await self.api.close()


async def _real_driver(kubeconfig: str) -> KubeDriver:
    api = load_api(kubeconfig=kubeconfig, in_cluster=False)
    namespace = f"gputopo-test-{uuid.uuid4().hex[:6]}"
    await api.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    # Pods need the namespace's default ServiceAccount (the controller-manager makes it).
    await _poll_until(api, f"/api/v1/namespaces/{namespace}/serviceaccounts/default",
                      lambda obj: True)
    try:
        await api.request("GET", GPUTOPOLOGY_PATH)
    except ApiError:
        await api.request("POST", _CRDS, body=_CRD)
        await _wait_established(api)
    return KubeDriver(api, "kubernetes", namespace)


_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


async def _wait_established(api: KubeApi) -> None:
    """Watch the CRD until the API server says it is Established (it serves the kind)."""
    def established(obj: dict[str, Any]) -> bool:
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Established" and c.get("status") == "True"
                   for c in conditions)

    await _poll_until(api, f"{_CRDS}/gputopologies.gputopo.io", established)


async def _poll_until(api: KubeApi, path: str, ready: Callable[[dict[str, Any]], bool],
                      timeout: float = 60) -> None:
    """Read the object at ``path`` until ``ready(object)`` (a set-up step of a real API
    server's controllers, polled: a watch of a quiet kind can stall on etcd 3.4)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(ApiError):
            if ready(await api.request("GET", path)):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path}: not ready after {timeout:g}s")


_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "gputopologies.gputopo.io"},
    "spec": {"group": "gputopo.io", "scope": "Cluster",
             "names": {"plural": "gputopologies", "singular": "gputopology",
                       "kind": "GPUTopology"},
             "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                           "schema": {"openAPIV3Schema": {
                               "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
}

SOURCES = [
    pytest.param("memory", id="memory"),
    pytest.param("fake-api", id="fake-api"),
    # GPUTOPO_TEST_KUBECONFIG, else the end-to-end harness's own control plane.
    pytest.param("kubernetes", id="kubernetes"),
]


@pytest.fixture(params=SOURCES)
async def driver(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        d: Any = MemoryDriver()
    elif request.param == "fake-api":
        d = KubeDriver(FakeKubeApi(), "fake-api", "default")
    else:
        d = await _real_driver(request.getfixturevalue("real_kubeconfig"))
    try:
        yield d
    finally:
        await d.cleanup()


async def until(cluster: Cluster, check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds: the in-memory source applies changes at once, the
    API-backed one after its watch delivers them (waited for as events)."""
    if isinstance(cluster, KubeCluster):
        await until_events(check, waits=lambda: (cluster.wait_applied(cluster.applied),))
    else:
        assert check(), "the in-memory source applies every change at once"


def free(cluster: Cluster, driver: Any, node: str) -> list[int]:
    name = driver.node(node) if isinstance(driver, KubeDriver) else node
    n = cluster.state.nodes.get(name)
    return [] if n is None else [i for i in range(n.topology.size) if n.free_mask >> i & 1]


def has(cluster: Cluster, driver: Any, node: str) -> bool:
    name = driver.node(node) if isinstance(driver, KubeDriver) else node
    return name in cluster.state.nodes


async def seed(driver: Any) -> dict[str, dict[str, Any]]:
    await driver.add_topology("n1", "hgx-h100")
    await driver.add_topology("n2", "dgx1-v100")
    pods = {
        "a": gpu_pod("a", gpus=2, node="n1", uid="uid-a",
                     annotations={ASSIGNED_GPUS_ANNOTATION: ids(0, 1)}),
        # the plugin's record of what the kubelet gave wins over the assignment
        "b": gpu_pod("b", gpus=1, node="n1", uid="uid-b",
                     annotations={ASSIGNED_GPUS_ANNOTATION: ids(2),
                                  ALLOCATED_GPUS_ANNOTATION: ids(3)}),
        # not bound: holds nothing even with an assignment
        "c": gpu_pod("c", gpus=1, uid="uid-c", annotations={ASSIGNED_GPUS_ANNOTATION: ids(7)}),
        "d": gpu_pod("d", gpus=4, node="n2", uid="uid-d",
                     annotations={ASSIGNED_GPUS_ANNOTATION: ids(4, 5, 6, 7)}),
    }
    for p in pods.values():
        await driver.add_pod(p)
    return pods


async def test_sync_reads_what_pods_hold(driver: Any) -> None:
    await seed(driver)
    cluster = await driver.new_cluster()
    await until(cluster, lambda: cluster.readiness()[0])
    assert free(cluster, driver, "n1") == [2, 4, 5, 6, 7]
    assert free(cluster, driver, "n2") == [0, 1, 2, 3]


async def test_changes_are_followed(driver: Any) -> None:
    pods = await seed(driver)
    cluster = await driver.new_cluster()
    await until(cluster, lambda: cluster.readiness()[0])
    e = gpu_pod("e", gpus=2, node="n1", uid="uid-e",
                annotations={ASSIGNED_GPUS_ANNOTATION: ids(6, 7)})
    await driver.add_pod(e)
    await until(cluster, lambda: free(cluster, driver, "n1") == [2, 4, 5])
    await driver.set_phase(pods["a"], "Succeeded")
    await until(cluster, lambda: free(cluster, driver, "n1") == [0, 1, 2, 4, 5])
    await driver.delete_pod(e)
    await until(cluster, lambda: free(cluster, driver, "n1") == [0, 1, 2, 4, 5, 6, 7])
    await driver.delete_topology("n2")
    await until(cluster, lambda: not has(cluster, driver, "n2"))
    await driver.add_topology("n3", "gb200-4gpu")
    await until(cluster, lambda: free(cluster, driver, "n3") == [0, 1, 2, 3])


async def test_a_restart_rebuilds_everything(driver: Any) -> None:
    pods = await seed(driver)
    first = await driver.new_cluster()
    await until(first, lambda: first.readiness()[0])
    await driver.delete_pod(pods["d"])
    await until(first, lambda: free(first, driver, "n2") == list(range(8)))
    second = await driver.new_cluster()
    await until(second, lambda: second.readiness()[0])
    assert summary(second.state) == summary(first.state)
    assert {u: h.ids for u, h in second.state.holdings.items()} == {
        u: h.ids for u, h in first.state.holdings.items()}


async def test_assign_and_bind_write_the_pod(driver: Any) -> None:
    await driver.add_topology("n1", "hgx-h100")
    pod = gpu_pod("w", gpus=2, uid="uid-w")
    await driver.add_pod(pod)
    cluster = await driver.new_cluster()
    await until(cluster, lambda: cluster.readiness()[0])
    ns, uid = driver.namespace, pod["metadata"]["uid"]
    node = driver.node("n1") if isinstance(driver, KubeDriver) else "n1"
    ref = PodRef(namespace=ns, name="w", uid=uid)
    await cluster.bind(ref, node, ids(4, 5))
    got = await cluster.get_pod(ref)
    assert got is not None
    assert got.node == node and got.ref == ref
    assert got.recorded == (("main", tuple(json.loads(ids(4, 5))["main"])),)
    await until(cluster, lambda: free(cluster, driver, "n1") == [0, 1, 2, 3, 6, 7])
    # binding again to the same node is fine (a retry); elsewhere is refused
    await cluster.bind(ref, node, None)
    with pytest.raises(ClusterError):
        await cluster.bind(ref, f"{node}-other", None)
    assert await cluster.get_pod(PodRef(namespace=ns, name="nope", uid="uid-nope")) is None
