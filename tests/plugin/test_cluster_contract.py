"""One contract for every ``NodeCluster``: the in-memory one always, the Kubernetes one
against a real API server when ``GPUTOPO_TEST_KUBECONFIG`` names a kubeconfig.

The Kubernetes run creates a Node object that no kubelet serves (so the pods bound to it
stay Pending and nothing runs), a namespace, pods bound to that node, and installs the
GPUTopology CRD from manifests/ if it is missing; it deletes what it created.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from plugin.cluster import ClusterError, NodeCluster, PodEvent, PodInfo
from plugin.publish import node_labels, wanted_object
from topology.handoff import topology_from_gputopology
from topology.names import ASSIGNED_GPUS_ANNOTATION, LABEL_GPU_COUNT
from topology.presets import preset

from .conftest import HANG_GUARD_S
from .fakes import InMemoryCluster

ROOT = Path(__file__).resolve().parents[2]


class Harness(Protocol):
    @property
    def cluster(self) -> NodeCluster: ...
    @property
    def namespace(self) -> str: ...

    def make_node(self, name: str) -> str: ...
    def make_pod(self, namespace: str, name: str, node: str,
                 annotations: dict[str, str] | None = None) -> None: ...
    def delete_pod(self, namespace: str, name: str) -> None: ...
    def cleanup(self) -> None: ...


class MemoryHarness:
    def __init__(self) -> None:
        self.cluster = InMemoryCluster()
        self.namespace = "contract"

    def make_node(self, name: str) -> str:
        return self.cluster.add_node(name)

    def make_pod(self, namespace: str, name: str, node: str,
                 annotations: dict[str, str] | None = None) -> None:
        self.cluster.put_pod(PodInfo(namespace=namespace, name=name, node_name=node,
                                     phase="Pending", annotations=annotations or {}))

    def delete_pod(self, namespace: str, name: str) -> None:
        self.cluster.delete_pod(namespace, name)

    def cleanup(self) -> None:
        pass


class KubeHarness:
    def __init__(self, kubeconfig: str) -> None:
        import yaml
        from kubernetes import client

        from plugin.kube import KubeCluster, api_client

        self.api = api_client(kubeconfig)
        self.cluster = KubeCluster(self.api)
        self.core = client.CoreV1Api(self.api)
        self.client = client
        suffix = uuid.uuid4().hex[:6]
        self.namespace = f"gputopo-contract-{suffix}"
        self.nodes: list[str] = []
        self.topologies: list[str] = []
        self.core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace)))
        ext = client.ApiextensionsV1Api(self.api)
        crd = yaml.safe_load((ROOT / "manifests" / "crd-gputopology.yaml").read_text())
        try:
            ext.read_custom_resource_definition(crd["metadata"]["name"])
        except client.ApiException as e:
            if e.status != 404:
                raise
            ext.create_custom_resource_definition(crd)
            self._wait_established(ext, crd["metadata"]["name"])

    def _wait_established(self, ext: Any, name: str) -> None:
        """Watch the CRD until the API server serves it (no polling)."""
        from kubernetes import watch

        w = watch.Watch()
        for event in w.stream(ext.list_custom_resource_definition,
                              field_selector=f"metadata.name={name}",
                              timeout_seconds=int(HANG_GUARD_S)):
            status = event["object"].status
            if status and any(c.type == "Established" and c.status == "True"
                              for c in (status.conditions or [])):
                w.stop()
                return
        raise AssertionError(f"CRD {name} not established within the hang guard")

    def make_node(self, name: str) -> str:
        c = self.client
        node = self.core.create_node(c.V1Node(metadata=c.V1ObjectMeta(name=name)))
        self.nodes.append(name)
        assert node.metadata is not None
        return str(node.metadata.uid)

    def make_pod(self, namespace: str, name: str, node: str,
                 annotations: dict[str, str] | None = None) -> None:
        c = self.client
        self.core.create_namespaced_pod(namespace, c.V1Pod(
            metadata=c.V1ObjectMeta(name=name, annotations=annotations or {}),
            spec=c.V1PodSpec(node_name=node, containers=[
                c.V1Container(name="main", image="registry.k8s.io/pause:3.10")]),
        ))

    def delete_pod(self, namespace: str, name: str) -> None:
        self.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def cleanup(self) -> None:
        from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_PLURAL, GPUTOPOLOGY_VERSION

        custom = self.client.CustomObjectsApi(self.api)
        for name in self.nodes:
            with contextlib.suppress(self.client.ApiException):
                custom.delete_cluster_custom_object(
                    GPUTOPOLOGY_GROUP, GPUTOPOLOGY_VERSION, GPUTOPOLOGY_PLURAL, name)
            with contextlib.suppress(self.client.ApiException):
                self.core.delete_node(name)
        with contextlib.suppress(self.client.ApiException):
            self.core.delete_namespace(self.namespace)


@pytest.fixture(params=["memory", "kubernetes"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "kubernetes":
        # GPUTOPO_TEST_KUBECONFIG, else the end-to-end harness's own control plane.
        h: Harness = KubeHarness(request.getfixturevalue("real_kubeconfig"))
    else:
        h = MemoryHarness()
    try:
        yield h
    finally:
        h.cleanup()


def _node_name() -> str:
    return f"gputopo-contract-{uuid.uuid4().hex[:8]}"


class _Watch:
    def __init__(self, cluster: NodeCluster, node: str) -> None:
        self.stop = threading.Event()
        self.events: queue.Queue[PodEvent] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(cluster, node), daemon=True)
        self._thread.start()

    def _pump(self, cluster: NodeCluster, node: str) -> None:
        for event in cluster.watch_pods(node, self.stop):
            self.events.put(event)

    def next_matching(self, kind: str, name: str | None = None) -> PodEvent:
        while True:
            e = self.events.get(timeout=HANG_GUARD_S)
            if e.type == kind and (name is None or (e.pod is not None and e.pod.name == name)):
                return e

    def close(self) -> None:
        self.stop.set()


def test_watch_lists_then_follows_the_pods_of_one_node(harness: Harness) -> None:
    ns = harness.namespace
    node, other = _node_name(), _node_name()
    harness.make_node(node)
    harness.make_node(other)
    harness.make_pod(ns, "here", node, {ASSIGNED_GPUS_ANNOTATION: '{"main":["GPU-a"]}'})
    harness.make_pod(ns, "elsewhere", other)
    watch = _Watch(harness.cluster, node)
    try:
        assert watch.next_matching("RELIST").pod is None
        listed: list[str] = []
        while True:
            e = watch.events.get(timeout=HANG_GUARD_S)
            if e.type == "SYNCED":
                break
            assert e.type == "ADDED" and e.pod is not None
            listed.append(e.pod.name)
        assert listed == ["here"]
        harness.make_pod(ns, "later", node)
        added = watch.next_matching("ADDED", "later").pod
        assert added is not None and added.node_name == node and added.uid
        harness.cluster.patch_pod_annotations(ns, "later", {"gputopo.io/test": "1"})
        modified = watch.next_matching("MODIFIED", "later").pod
        while modified is not None and modified.annotations.get("gputopo.io/test") != "1":
            modified = watch.next_matching("MODIFIED", "later").pod
        harness.delete_pod(ns, "later")
        watch.next_matching("DELETED", "later")
    finally:
        watch.close()


def test_patch_annotations_merges_and_removes(harness: Harness) -> None:
    ns = harness.namespace
    node = _node_name()
    harness.make_node(node)
    harness.make_pod(ns, "p", node, {"keep": "yes", "drop": "me"})
    harness.cluster.patch_pod_annotations(ns, "p", {"gputopo.io/x": "1", "drop": None})
    pod = harness.cluster.get_pod(ns, "p")
    assert pod is not None
    assert pod.annotations.get("keep") == "yes"
    assert pod.annotations.get("gputopo.io/x") == "1"
    assert "drop" not in pod.annotations
    assert harness.cluster.get_pod(ns, "absent") is None
    with pytest.raises(ClusterError) as err:
        harness.cluster.patch_pod_annotations(ns, "absent", {"a": "b"})
    assert err.value.not_found


def test_node_uid_and_labels(harness: Harness) -> None:
    node = _node_name()
    uid = harness.make_node(node)
    assert harness.cluster.node_uid(node) == uid
    harness.cluster.label_node(node, {LABEL_GPU_COUNT: "8"})
    assert harness.cluster.node_labels(node)[LABEL_GPU_COUNT] == "8"
    with pytest.raises(ClusterError) as err:
        harness.cluster.node_uid(_node_name())
    assert err.value.not_found


def test_gputopology_created_unchanged_updated(harness: Harness) -> None:
    node = _node_name()
    uid = harness.make_node(node)
    t = preset("dgx1-v100")
    obj: dict[str, Any] = wanted_object(node, t, uid)
    assert harness.cluster.get_gputopology(node) is None
    assert harness.cluster.apply_gputopology(obj) == "created"
    assert harness.cluster.apply_gputopology(obj) == "unchanged"
    stored = harness.cluster.get_gputopology(node)
    assert stored is not None
    assert stored["metadata"]["ownerReferences"][0]["uid"] == uid
    assert topology_from_gputopology(stored) == (node, t)
    changed = wanted_object(node, preset("dgx-a100"), uid)
    assert harness.cluster.apply_gputopology(changed) == "updated"
    stored = harness.cluster.get_gputopology(node)
    assert stored is not None and topology_from_gputopology(stored)[1] == preset("dgx-a100")
    assert node_labels(t)[LABEL_GPU_COUNT] == "8"
