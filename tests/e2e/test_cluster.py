"""The extender, the device plugin and the handoff between them, on real Kubernetes.

One cluster for the module (see conftest): kube-apiserver, kube-controller-manager,
kube-scheduler with the project's configuration, three real kubelets over a fake CRI
runtime, each with the real ``gputopo-device-plugin``, and the real ``gputopo-extender``.
The truth about who holds which GPU is the kubelet's own record (PodResources).

The tests that restart components run last, in file order.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from tests.e2e.harness import LocalCluster, wait_for
from tests.e2e.pods import (
    allocated,
    assert_no_gpu_twice,
    assigned,
    create,
    delete_all,
    describe,
    extender_holders,
    failed_scheduling_messages,
    gpu_pod,
    kubelet_record,
    metric,
    wait_allocated,
    wait_bound,
)
from topology.allocate import Allocation, allocator_for
from topology.gpuids import stable_gpu_uuid
from topology.handoff import encode_gpu_sets
from topology.names import ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

pytestmark = pytest.mark.e2e

_names = itertools.count()


@pytest.fixture
def ns(cluster: LocalCluster) -> Iterator[str]:
    name = f"e2e-{next(_names)}"
    cluster.ensure_namespace(name)
    yield name
    delete_all(cluster, name)


def gpu(i: int) -> str:
    return stable_gpu_uuid(i)


def test_required_nvlink_pod_lands_on_the_only_node_with_an_nvlink_set(
        cluster: LocalCluster, ns: str) -> None:
    create(cluster, ns, gpu_pod("train", 4, min_link="nvlink", required=True))
    pod = wait_allocated(cluster, ns, "train")
    assert pod["spec"]["nodeName"] == "gpu-a"
    sets = assigned(pod)
    assert sets is not None and len(sets["main"]) == 4
    record = kubelet_record(cluster, "gpu-a")[(ns, "train")]
    # The kubelet's own record is the extender's choice, and the plugin wrote it back.
    assert record == sets
    assert allocated(pod) == record
    # Every hop of the best ring through the set is NVLink.
    t = preset("dgx1-v100")
    idx = sorted(int(u.rsplit("-", 1)[1]) for u in record["main"])
    found = allocator_for(t).best(4, sum(1 << i for i in idx))
    assert isinstance(found, Allocation) and found.ring_link is not None
    assert found.ring_link.is_nvlink, (idx, found)


def _plugin_metrics(cluster: LocalCluster, node: str) -> str:
    """The plugin's metrics ("" while it is not serving them yet)."""
    port = cluster.nodes[node].plugin_metrics_port
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def test_same_sized_pods_admitted_in_the_opposite_order_keep_true_records(
        cluster: LocalCluster, ns: str) -> None:
    """Created bound, with their sets already assigned, the later pod first: the kubelet
    admits them in its own order, and each pod's allocated record is what it really got.

    Created bound, each pod reaches the kubelet and the plugin's pod watch at once, and
    the kubelet asks GetPreferredAllocation milliseconds later: often before the plugin's
    cache has the pod (the plugin then waits for it, bounded). The sets are SYS pairs,
    which the allocator never picks with NVLink pairs free: the kubelet ends with them
    only if the plugin answered the assigned sets."""
    sets = {"p-first": [gpu(0), gpu(5)], "p-second": [gpu(1), gpu(6)]}
    # The plugin serves the kubelet and its pod watch delivers (this test may run first).
    wait_for("gpu-a capacity 8", lambda: cluster.gpu_capacity("gpu-a") == 8, timeout=90,
             on_timeout=cluster.diagnostics)
    before = wait_for("the pod watch of gpu-a's plugin", lambda: (
        text if metric(text := _plugin_metrics(cluster, "gpu-a"),
                       "gputopo_plugin_pod_watch_live") == 1 else None),
        timeout=60, on_timeout=cluster.diagnostics)
    for name in ("p-second", "p-first"):
        pod = gpu_pod(name, 2, node_name="gpu-a", annotations={
            ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets({"main": sets[name]})})
        create(cluster, ns, pod)
    pods = {n: wait_allocated(cluster, ns, n) for n in sets}
    record = kubelet_record(cluster, "gpu-a")
    given = {n: record[(ns, n)]["main"] for n in sets}
    after = _plugin_metrics(cluster, "gpu-a")

    def delta(name: str, labels: dict[str, str]) -> float:
        return metric(after, name, labels) - metric(before, name, labels)

    answers = {source: delta("gputopo_plugin_preferred_allocations_total", {"source": source})
               for source in ("assigned", "allocator", "fallback")}
    # How the plugin's pod cache kept up (for the failure message): delivered when the
    # kubelet asked before the cache had the pod.
    checks = {result: delta("gputopo_plugin_pod_cache_checks_total", {"result": result})
              for result in ("known", "in_sync", "delivered", "timed_out", "watch_down",
                             "kubelet_unreachable")}
    for n in sets:
        assert allocated(pods[n]) == {"main": given[n]}, describe(cluster, ns, n)
    # Both assigned sets were used, whichever pod got which.
    assert set(given.values()) == {frozenset(s) for s in sets.values()}, (given, answers, checks)
    assert answers == {"assigned": 2, "allocator": 0, "fallback": 0}, (answers, checks)
    assert_no_gpu_twice(cluster)


def test_one_gpu_pod_takes_an_orphan_gpu_not_half_an_nvlink_pair(
        cluster: LocalCluster, ns: str) -> None:
    create(cluster, ns, gpu_pod("single", 1,
                                node_selector={"kubernetes.io/hostname": "gpu-c"}))
    pod = wait_allocated(cluster, ns, "single")
    record = kubelet_record(cluster, "gpu-c")[(ns, "single")]["main"]
    assert record == assigned(pod)["main"]  # type: ignore[index]
    # gpu-c: GPUs 0-1 are an NVLink pair; 2 and 3 are not.
    assert record <= {gpu(2), gpu(3)}, record


def test_impossible_pod_stays_pending_with_the_extenders_reason(
        cluster: LocalCluster, ns: str) -> None:
    # No node has an NV2-or-better ring of 4 (DGX-1 has NV2 rings of 8 only).
    create(cluster, ns, gpu_pod("impossible", 4, min_link="NV2", required=True))
    messages = wait_for(
        "a FailedScheduling event", lambda: failed_scheduling_messages(
            cluster, ns, "impossible") or None, timeout=60,
        on_timeout=lambda: describe(cluster, ns, "impossible"))
    assert any("no NV2-or-better ring of 4" in m for m in messages), messages
    pod = cluster.pod(ns, "impossible")
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"


def test_burst_of_mixed_sizes_never_gives_a_gpu_twice(cluster: LocalCluster, ns: str) -> None:
    rng = random.Random(7)
    sizes = [rng.choice([1, 1, 2, 2, 4]) for _ in range(20)]
    for i, k in enumerate(sizes):
        create(cluster, ns, gpu_pod(f"burst-{i}", k))
    capacity = 8 + 8 + 4

    def settled() -> bool:
        pods = cluster.pods(ns)
        bound = [p for p in pods if p["spec"].get("nodeName")]
        held = sum(int(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                   for p in bound)
        pending = [p for p in pods if not p["spec"].get("nodeName")]
        # Done when every pod is bound, or the pending ones cannot fit what is left.
        left = capacity - held
        return all(allocated(p) is not None for p in bound) and all(
            int(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) > left
            or failed_scheduling_messages(cluster, ns, p["metadata"]["name"])
            for p in pending)

    wait_for("the burst to settle", settled, timeout=180, on_timeout=cluster.diagnostics)
    records = assert_no_gpu_twice(cluster)
    for p in cluster.pods(ns):
        node = p["spec"].get("nodeName")
        if not node:
            continue
        truth = records[node][(ns, p["metadata"]["name"])]
        assert allocated(p) == truth, describe(cluster, ns, p["metadata"]["name"])
    assert sum(1 for p in cluster.pods(ns) if p["spec"].get("nodeName")) >= 10


def _extender_post(cluster: LocalCluster, verb: str, body: dict[str, object]) -> dict:
    req = urllib.request.Request(f"{cluster.extender_url}/{verb}",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def _unscheduled(cluster: LocalCluster, ns: str, name: str) -> dict:
    """A GPU pod no scheduler serves: this test plays kube-scheduler's part itself."""
    pod = gpu_pod(name, 2)
    pod["spec"]["schedulerName"] = "e2e-played-by-the-test"
    return create(cluster, ns, pod)


def test_bind_is_one_write_of_node_and_set(cluster: LocalCluster, ns: str) -> None:
    """The Binding carries the assigned set: no version of the pod has one without the
    other (kube-apiserver merges the Binding's annotations as it sets nodeName)."""
    pod = _unscheduled(cluster, ns, "atomic")
    uid, rv = pod["metadata"]["uid"], pod["metadata"]["resourceVersion"]
    args = {"Pod": pod, "Nodes": None, "NodeNames": ["gpu-a"]}
    assert _extender_post(cluster, "filter", args)["NodeNames"] == ["gpu-a"]
    answer = _extender_post(cluster, "bind", {"PodName": "atomic", "PodNamespace": ns,
                                              "PodUID": uid, "Node": "gpu-a"})
    assert answer == {"Error": ""}
    # Every version of the pod since its creation, from the API server's own watch.
    versions = cluster.api("GET", f"/api/v1/namespaces/{ns}/pods?watch=1&resourceVersion={rv}"
                           f"&fieldSelector=metadata.name%3Datomic&timeoutSeconds=2", raw=True)
    seen = [json.loads(line)["object"] for line in versions.splitlines() if line.strip()]
    assert seen, "no pod versions after the bind"
    for v in seen:
        has_node = bool(v["spec"].get("nodeName"))
        has_set = assigned(v) is not None
        assert has_node == has_set, (v["metadata"]["resourceVersion"], has_node, has_set)
    final = wait_allocated(cluster, ns, "atomic")
    assert final["spec"]["nodeName"] == "gpu-a"
    assert allocated(final) == assigned(final)


def test_bind_of_a_recreated_pod_is_refused(cluster: LocalCluster, ns: str) -> None:
    """Deleted and recreated under the same name between filter and bind: the Binding's
    UID precondition refuses it, and neither pod is left holding GPUs."""
    old = _unscheduled(cluster, ns, "again")
    args = {"Pod": old, "Nodes": None, "NodeNames": ["gpu-a"]}
    assert _extender_post(cluster, "filter", args)["NodeNames"] == ["gpu-a"]
    cluster.api("DELETE", f"/api/v1/namespaces/{ns}/pods/again", {"gracePeriodSeconds": 0})
    new = _unscheduled(cluster, ns, "again")
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    answer = _extender_post(cluster, "bind", {
        "PodName": "again", "PodNamespace": ns, "PodUID": old["metadata"]["uid"],
        "Node": "gpu-a"})
    assert "recreated" in answer["Error"], answer
    now = cluster.pod(ns, "again")
    assert now["metadata"]["uid"] == new["metadata"]["uid"]
    assert not now["spec"].get("nodeName") and assigned(now) is None
    assert (ns, "again") not in extender_holders(cluster, ns)


# -- restarts (last) ----------------------------------------------------------------------
def test_kubelet_restart_the_plugin_registers_again_and_capacity_returns(
        cluster: LocalCluster, ns: str) -> None:
    node = cluster.nodes["gpu-b"]
    metrics_url = f"http://127.0.0.1:{node.plugin_metrics_port}/metrics"

    def registrations() -> float:
        with urllib.request.urlopen(metrics_url, timeout=5) as resp:
            return metric(resp.read().decode(), "gputopo_plugin_registrations_total",
                          {"result": "ok"})

    before = wait_for("plugin metrics", lambda: registrations() or None, timeout=30)
    cluster.restart_kubelet("gpu-b")
    wait_for("a new registration with the restarted kubelet",
             lambda: registrations() > before, timeout=60, on_timeout=cluster.diagnostics)
    # Capacity reads 0 for a while after a kubelet restart; wait for it to return.
    wait_for("gpu-b capacity back to 8", lambda: cluster.gpu_capacity("gpu-b") == 8,
             timeout=90, on_timeout=cluster.diagnostics)
    cluster.wait_node_ready("gpu-b")
    create(cluster, ns, gpu_pod("after-restart", 2,
                                node_selector={"kubernetes.io/hostname": "gpu-b"}))
    pod = wait_allocated(cluster, ns, "after-restart")
    assert allocated(pod) == kubelet_record(cluster, "gpu-b")[(ns, "after-restart")]


def test_extender_killed_in_a_burst_rebuilds_its_view_from_the_pods(
        cluster: LocalCluster, ns: str) -> None:
    names = [f"k-{i}" for i in range(12)]
    for i, name in enumerate(names):
        create(cluster, ns, gpu_pod(name, 1 + i % 2))
    wait_for("the first binds", lambda: sum(
        1 for p in cluster.pods(ns) if p["spec"].get("nodeName")) >= 3, timeout=60,
        on_timeout=cluster.diagnostics)
    cluster.extender.kill()
    cluster.extender.start()
    cluster.wait_extender_ready()
    pods = {n: wait_allocated(cluster, ns, n, timeout=120) for n in names}
    records = assert_no_gpu_twice(cluster)
    view = extender_holders(cluster, ns)
    for n, p in pods.items():
        node = p["spec"]["nodeName"]
        truth = records[node][(ns, n)]
        assert allocated(p) == truth
        # Nothing lost, nothing doubled: the restarted extender holds exactly the record.
        assert view.get((ns, n)) == truth, (n, view.get((ns, n)), truth)
    assert set(view) == {(ns, n) for n in names}


def _preferred(cluster: LocalCluster, node: str, size: int) -> tuple[list[str], float]:
    n = cluster.nodes[node]
    with grpc.insecure_channel(f"unix:{n.plugin_socket}") as ch:
        stub = pb_grpc.DevicePluginStub(ch)
        req = pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=[gpu(i) for i in range(8)], allocation_size=size)])
        start = time.perf_counter()
        resp = stub.GetPreferredAllocation(req, timeout=5)
        took = time.perf_counter() - start
    return list(resp.container_responses[0].deviceIDs), took


def _extender_metrics(cluster: LocalCluster) -> str:
    with urllib.request.urlopen(f"{cluster.extender_url}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def _extender_nodes(cluster: LocalCluster) -> int:
    with urllib.request.urlopen(f"{cluster.extender_url}/readyz", timeout=10) as resp:
        return int(json.loads(resp.read()).get("nodes", 0))


def test_filter_top_scored_without_prioritize_still_places_on_the_best_set(
        cluster: LocalCluster, ns: str) -> None:
    # kube-scheduler with no prioritizeVerb, the extender with --filter-top-scored.
    cluster.restart_extender("--filter-top-scored")
    cluster.restart_scheduler(with_extender=True, prioritize=False)
    try:
        # Every node counted by the scheduler and known to the extender, or the test
        # would only show which nodes had reported yet.
        gpus = {"gpu-a": 8, "gpu-b": 8, "gpu-c": 4}
        wait_for("every node's GPU capacity", lambda: all(
            cluster.gpu_capacity(n) == k for n, k in gpus.items()), timeout=90,
            on_timeout=cluster.diagnostics)
        wait_for("the extender to know every node", lambda: _extender_nodes(cluster) == 3,
                 timeout=60, on_timeout=cluster.diagnostics)
        # NVLink preferred, not required: gpu-b (SYS) and gpu-c (one NVLink pair) pass
        # the plain filter, and nothing but the narrowing keeps them from the scheduler,
        # whose own scoring spreads pods over nodes (there is no prioritize to weigh in).
        for name in ("top-1", "top-2"):
            create(cluster, ns, gpu_pod(name, 4, min_link="nvlink"))
            pod = wait_allocated(cluster, ns, name, timeout=120)
            assert pod["spec"]["nodeName"] == "gpu-a", describe(cluster, ns, name)
            record = kubelet_record(cluster, "gpu-a")[(ns, name)]
            assert record == assigned(pod) == allocated(pod)
            idx = sorted(int(u.rsplit("-", 1)[1]) for u in record["main"])
            found = allocator_for(preset("dgx1-v100")).best(4, sum(1 << i for i in idx))
            assert isinstance(found, Allocation) and found.ring_link is not None
            assert found.ring_link.is_nvlink, (idx, found)
        text = _extender_metrics(cluster)
        assert metric(text, "gputopo_extender_requests_total", {"verb": "prioritize"}) == 0
        assert metric(text, "gputopo_extender_node_decisions_total",
                      {"result": "outscored"}) >= 2
    finally:
        delete_all(cluster, ns)
        cluster.restart_extender()
        cluster.restart_scheduler(with_extender=True)


def test_api_server_down_for_30s_plugin_still_answers_and_both_resync(
        cluster: LocalCluster, ns: str) -> None:
    _preferred(cluster, "gpu-b", 2)  # the channel and the plugin are warm
    cluster.apiserver.stop()
    answered = []
    end = time.monotonic() + 30.0  # the outage itself, filled with calls
    while time.monotonic() < end:
        ids, took = _preferred(cluster, "gpu-b", 2)
        assert len(ids) == 2
        answered.append(took)
        time.sleep(0.5)
    answered.sort()
    # Milliseconds, not the API client's time-outs: nothing on the call path waits on it.
    assert answered[len(answered) // 2] < 0.5, answered
    cluster.apiserver.start()
    cluster.wait_apiserver()
    cluster.wait_extender_ready(timeout=90)
    for node in cluster.nodes:
        cluster.wait_node_ready(node)
    create(cluster, ns, gpu_pod("after-outage", 2, min_link="nvlink", required=True))
    pod = wait_allocated(cluster, ns, "after-outage", timeout=120)
    node = pod["spec"]["nodeName"]
    assert allocated(pod) == kubelet_record(cluster, node)[(ns, "after-outage")]
    assert extender_holders(cluster, ns)[(ns, "after-outage")] == allocated(pod)
    wait_bound(cluster, ns, "after-outage")
