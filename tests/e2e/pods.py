"""Pods and records for the end-to-end tests: what the suite creates and what it reads back.

The three records of which GPUs a container holds:

* ``assigned``: the extender's choice (``gputopo.io/assigned-gpus``, written at bind);
* ``allocated``: what the plugin recorded from the kubelet (``gputopo.io/allocated-gpus``);
* the kubelet's own (PodResources on each node's socket): the truth.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections import Counter
from typing import Any

from plugin.podresources import PodResourcesClient
from tests.e2e.harness import ApiStatus, LocalCluster, wait_for
from topology.names import (
    ALLOCATED_GPUS_ANNOTATION,
    ASSIGNED_GPUS_ANNOTATION,
    DEFAULT_RESOURCE_NAME,
    LINK_POLICY_ANNOTATION,
    MIN_LINK_ANNOTATION,
)

SCHEDULER = "gputopo-scheduler"
GpuSets = dict[str, frozenset[str]]


def gpu_pod(
    name: str, gpus: int | dict[str, int], *, min_link: str | None = None,
    required: bool = False, node_selector: dict[str, str] | None = None,
    node_name: str | None = None, annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod asking for GPUs (one container ``main``, or one per entry of ``gpus``)."""
    per = {"main": gpus} if isinstance(gpus, int) else gpus
    ann = dict(annotations or {})
    if min_link:
        ann[MIN_LINK_ANNOTATION] = min_link
        ann[LINK_POLICY_ANNOTATION] = "required" if required else "preferred"
    spec: dict[str, Any] = {
        "schedulerName": SCHEDULER,
        "terminationGracePeriodSeconds": 0,
        "containers": [{
            "name": c, "image": "registry.invalid/gputopo-e2e:1",
            "resources": {"limits": {DEFAULT_RESOURCE_NAME: str(n)}},
        } for c, n in per.items()],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": ann}, "spec": spec}


def create(cluster: LocalCluster, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    return dict(cluster.api("POST", f"/api/v1/namespaces/{namespace}/pods", pod))


def sets_of(pod: dict[str, Any], key: str) -> GpuSets | None:
    raw = (pod["metadata"].get("annotations") or {}).get(key)
    if raw is None:
        return None
    return {c: frozenset(ids) for c, ids in json.loads(raw).items()}


def assigned(pod: dict[str, Any]) -> GpuSets | None:
    return sets_of(pod, ASSIGNED_GPUS_ANNOTATION)


def allocated(pod: dict[str, Any]) -> GpuSets | None:
    return sets_of(pod, ALLOCATED_GPUS_ANNOTATION)


def wait_bound(cluster: LocalCluster, namespace: str, name: str,
               timeout: float = 60.0) -> dict[str, Any]:
    def bound() -> dict[str, Any] | None:
        pod = cluster.pod(namespace, name)
        return pod if pod["spec"].get("nodeName") else None

    return wait_for(f"pod {namespace}/{name} bound", bound, timeout=timeout,
                    on_timeout=lambda: describe(cluster, namespace, name))


def wait_allocated(cluster: LocalCluster, namespace: str, name: str,
                   timeout: float = 90.0) -> dict[str, Any]:
    """The pod once the plugin has written what the kubelet gave it."""
    def recorded() -> dict[str, Any] | None:
        pod = cluster.pod(namespace, name)
        return pod if allocated(pod) is not None else None

    return wait_for(f"allocated-gpus on pod {namespace}/{name}", recorded, timeout=timeout,
                    on_timeout=lambda: describe(cluster, namespace, name))


def kubelet_record(cluster: LocalCluster, node: str) -> dict[tuple[str, str], GpuSets]:
    """The kubelet's own record of the node's GPU holders: (namespace, pod) -> sets."""
    client = PodResourcesClient(cluster.nodes[node].pod_resources_socket, DEFAULT_RESOURCE_NAME)
    try:
        record = client.list()
    finally:
        client.close()
    return {key: {c: frozenset(ids) for c, ids in containers.items()}
            for key, containers in record.items()}


def assert_no_gpu_twice(cluster: LocalCluster) -> dict[str, dict[tuple[str, str], GpuSets]]:
    """Every node's kubelet record, after checking no GPU is held by two containers."""
    records = {}
    for node in cluster.nodes:
        record = kubelet_record(cluster, node)
        counts = Counter(i for sets in record.values() for ids in sets.values() for i in ids)
        twice = {gpu: n for gpu, n in counts.items() if n > 1}
        assert not twice, f"node {node}: GPUs held twice by the kubelet's record: {twice}"
        records[node] = record
    return records


def describe(cluster: LocalCluster, namespace: str, name: str) -> str:
    try:
        pod = cluster.pod(namespace, name)
    except ApiStatus as e:
        return f"pod {namespace}/{name}: {e}"
    events = [f"  {e.get('reason')}: {e.get('message')}"
              for e in cluster.events_for(namespace, name)]
    return (f"pod {namespace}/{name}: node={pod['spec'].get('nodeName')} "
            f"phase={pod['status'].get('phase')} "
            f"annotations={pod['metadata'].get('annotations')}\nevents:\n" + "\n".join(events)
            + "\n" + cluster.diagnostics(15))


def delete_all(cluster: LocalCluster, namespace: str, timeout: float = 90.0) -> None:
    """Delete the namespace's pods and wait until the API and the extender forget them."""
    for pod in cluster.pods(namespace):
        name = pod["metadata"]["name"]
        try:
            cluster.api("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}",
                        {"gracePeriodSeconds": 0})
        except ApiStatus as e:
            if e.status != 404:
                raise
    wait_for(f"pods of {namespace} gone", lambda: not cluster.pods(namespace),
             timeout=timeout, on_timeout=cluster.diagnostics)
    if cluster.spec.extender and cluster.extender.alive():
        wait_for(f"the extender to release the GPUs of {namespace}",
                 lambda: not extender_holders(cluster, namespace), timeout=timeout,
                 on_timeout=cluster.diagnostics)


def extender_view(cluster: LocalCluster) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"{cluster.extender_url}/topology", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def extender_holders(cluster: LocalCluster, namespace: str | None = None
                     ) -> dict[tuple[str, str], GpuSets]:
    """What the extender believes each pod holds: (namespace, pod) -> sets."""
    out: dict[tuple[str, str], GpuSets] = {}
    for node in extender_view(cluster)["nodes"]:
        for held in node["pods"] + node.get("binding", []):
            ns, _, name = str(held["pod"]).partition("/")
            if namespace is None or ns == namespace:
                out[(ns, name)] = {c: frozenset(ids) for c, ids in held["containers"].items()}
    return out


def failed_scheduling_messages(cluster: LocalCluster, namespace: str, name: str) -> list[str]:
    return [str(e.get("message", "")) for e in cluster.events_for(namespace, name)
            if e.get("reason") == "FailedScheduling"]


def metric(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    want = labels or {}
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in want.items()):
            total += float(m.group(3))
    return total


def quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")
