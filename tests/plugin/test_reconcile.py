"""Two pods of one size admitted in the opposite order: good sets, true records.

The kubelet's GetPreferredAllocation carries no pod identity (volcano#2579,
gpushare-device-plugin#26 hand out the wrong devices here). We answer with an assigned
set and let the reconciler write what the kubelet's PodResources says each pod holds.
"""

from __future__ import annotations

from typing import Any

from plugin.api import deviceplugin_pb2 as pb
from plugin.cluster import PodInfo
from plugin.pods import entry_for
from plugin.reconcile import plan
from topology.handoff import decode_gpu_sets, encode_gpu_sets, stable_gpu_uuid
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .conftest import HANG_GUARD_S, FakeKubelet, FakePodResources, StartPlugin
from .fakes import Changes, InMemoryCluster

DGX1 = preset("dgx1-v100")
U = [stable_gpu_uuid(i) for i in range(8)]


def _pod(name: str, created: str, gpus: list[str]) -> PodInfo:
    return PodInfo(
        namespace="ml", name=name, node_name="node-a", phase="Pending", created=created,
        annotations={ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets({"main": gpus})},
    )


def _allocated(cluster: InMemoryCluster, name: str) -> dict[str, tuple[str, ...]] | None:
    pod = cluster.get_pod("ml", name)
    raw = pod.annotations.get(ALLOCATED_GPUS_ANNOTATION) if pod else None
    return decode_gpu_sets(ALLOCATED_GPUS_ANNOTATION, raw) if raw else None


def _admit(stub: Any, available: list[str]) -> list[str]:
    """What the kubelet does for one container: ask, then allocate what it was told."""
    resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
        pb.ContainerPreferredAllocationRequest(available_deviceIDs=available,
                                               allocation_size=2)]))
    chosen = list(resp.container_responses[0].deviceIDs)
    stub.Allocate(pb.AllocateRequest(container_requests=[
        pb.ContainerAllocateRequest(devices_ids=chosen)]))
    return chosen


def test_two_pods_admitted_in_opposite_order_end_with_good_sets_and_true_records(
    start_plugin: StartPlugin, kubelet: FakeKubelet, pod_resources: FakePodResources
) -> None:
    cluster = InMemoryCluster()
    cluster.add_node("node-a")
    # The extender bound A first (GPU0+GPU3, NV2), then B (GPU1+GPU2, NV2).
    cluster.put_pod(_pod("a", "2026-01-01T00:00:00+00:00", [U[0], U[3]]))
    cluster.put_pod(_pod("b", "2026-01-01T00:00:01+00:00", [U[1], U[2]]))
    plugin = start_plugin(cluster=cluster, pod_resources=pod_resources)
    kubelet.next_registration()
    assert plugin.app.pods.synced.wait(HANG_GUARD_S)
    pods_changed = Changes()
    plugin.app.pods.on_change(pods_changed.notify)
    channel, stub = plugin.stub()
    with channel:
        # The kubelet admits B first. No pod identity: it gets A's set.
        got_b = _admit(stub, U)
        pod_resources.hold("ml", "b", "main", got_b)
        assert cluster.changes.wait_for(
            lambda: _allocated(cluster, "b") == {"main": tuple(sorted(got_b))})
        assert pods_changed.wait_for(lambda: (plugin.app.pods.snapshot()[("ml", "b")].allocated
                                              or {}).get("main") == tuple(sorted(got_b)))
        # Then A, among what is left: it gets the set B was assigned.
        got_a = _admit(stub, [u for u in U if u not in got_b])
        pod_resources.hold("ml", "a", "main", got_a)
        assert cluster.changes.wait_for(
            lambda: _allocated(cluster, "a") == {"main": tuple(sorted(got_a))})

    assert set(got_b) == {U[0], U[3]}
    assert set(got_a) == {U[1], U[2]}
    for got in (got_a, got_b):  # both are good sets: NV2 pairs
        assert str(DGX1.link(U.index(got[0]), U.index(got[1]))) == "NV2"
    # The records say what the kubelet really did, not what was assigned.
    assert _allocated(cluster, "a") == {"main": (U[1], U[2])}
    assert _allocated(cluster, "b") == {"main": (U[0], U[3])}
    assert set(got_a).isdisjoint(got_b)


def test_periodic_reconcile_repairs_a_wrong_record(
    start_plugin: StartPlugin, kubelet: FakeKubelet, pod_resources: FakePodResources
) -> None:
    cluster = InMemoryCluster()
    cluster.add_node("node-a")
    cluster.put_pod(_pod("c", "2026-01-01T00:00:00+00:00", [U[4], U[7]]))
    # A record that lies (written by hand, or by an older plugin).
    cluster.patch_pod_annotations(
        "ml", "c", {ALLOCATED_GPUS_ANNOTATION: encode_gpu_sets({"main": [U[0]]})})
    pod_resources.hold("ml", "c", "main", [U[4], U[7]])
    start_plugin(cluster=cluster, pod_resources=pod_resources)
    kubelet.next_registration()
    # No Allocate happened: the periodic pass alone finds and fixes the wrong record.
    assert cluster.changes.wait_for(lambda: _allocated(cluster, "c") == {"main": (U[4], U[7])})


def test_plan_writes_only_missing_or_different_records() -> None:
    same = entry_for(PodInfo(namespace="ns", name="same", annotations={
        ALLOCATED_GPUS_ANNOTATION: encode_gpu_sets({"main": [U[1], U[0]]})}))
    wrong = entry_for(PodInfo(namespace="ns", name="wrong", annotations={
        ALLOCATED_GPUS_ANNOTATION: encode_gpu_sets({"main": [U[2]]})}))
    missing = entry_for(PodInfo(namespace="ns", name="missing"))
    pods = {e.pod.key: e for e in (same, wrong, missing)}
    record: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
        ("ns", "same"): {"main": (U[0], U[1])},
        ("ns", "wrong"): {"main": (U[3],)},
        ("ns", "missing"): {"main": (U[4],), "side": (U[5],)},
        ("ns", "not-cached"): {"main": (U[6],)},  # the cache will catch up; next round
    }
    patches = {p.pod: p for p in plan(record, pods)}
    assert set(patches) == {("ns", "wrong"), ("ns", "missing")}
    assert patches[("ns", "missing")].value == encode_gpu_sets(
        {"main": [U[4]], "side": [U[5]]})
    assert patches[("ns", "wrong")].previous == encode_gpu_sets({"main": [U[2]]})
