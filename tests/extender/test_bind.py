"""bind: the set chosen on fresh state, written, then bound; never a GPU for two pods."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from typing import Any

from extender import filter as filter_verb
from extender.bind import Binder, BindRefused, BindResult, Bound
from extender.cluster import ClusterError
from extender.config import ExtenderConfig
from extender.metrics import Metrics
from extender.request import GpuRequest
from extender.wire import BindArgs
from topology.handoff import decode_gpu_sets
from topology.names import ASSIGNED_GPUS_ANNOTATION

from .faults import FaultyCluster
from .helpers import gpu_pod, memory_cluster

NODES: list[dict[str, Any]] = [
    {"name": "a", "topology": "hgx-h100"},
    {"name": "b", "topology": "dgx1-v100"},
    {"name": "c", "topology": "gb200-4gpu", "used": [0]},
]


async def setup(pods: list[dict], *, timeout_s: float = 5.0) -> tuple[FaultyCluster, Binder]:
    cluster = memory_cluster(NODES, pods)
    await cluster.start()
    cfg = ExtenderConfig(bind_timeout_s=timeout_s)
    return cluster, Binder(cluster, cluster.state, cfg, Metrics(cluster.state))


def args(pod: dict, node: str) -> BindArgs:
    m = pod["metadata"]
    return BindArgs(pod_name=m["name"], pod_namespace=m["namespace"], pod_uid=m["uid"],
                    node=node)


def assigned(cluster: FaultyCluster, uid: str) -> dict[str, tuple[str, ...]]:
    """The assigned-gpus value the bind wrote for the pod."""
    values = [w[3] for w in cluster.writes if w[3] is not None
              and cluster.state.holdings.get(uid) is not None
              and w[1] == str(cluster.state.holdings[uid].pod)]
    assert values, f"no set written for {uid}"
    return decode_gpu_sets(ASSIGNED_GPUS_ANNOTATION, values[-1])


def refused(result: BindResult) -> str:
    assert isinstance(result, BindRefused), result
    return result.reason


async def test_bind_writes_the_set_then_binds_and_holds_it() -> None:
    p = gpu_pod("train", gpus=4)
    cluster, binder = await setup([p])
    result = await binder.bind(args(p, "a"))
    assert isinstance(result, Bound) and result.node == "a" and not result.retry
    sets = assigned(cluster, p["metadata"]["uid"])
    assert list(sets) == ["main"] and len(sets["main"]) == 4
    assert [w[:3] for w in cluster.writes] == [("bind", "default/train", "a")]
    held = cluster.state.holdings[p["metadata"]["uid"]]
    assert held == result.holding
    assert held.node == "a" and held.ids == frozenset(sets["main"])
    assert cluster.state.nodes["a"].free_mask.bit_count() == 4
    assert not cluster.state.reservations


async def test_retry_of_a_pod_already_bound_there_succeeds_without_writing() -> None:
    p = gpu_pod("train", gpus=2)
    cluster, binder = await setup([p])
    assert isinstance(await binder.bind(args(p, "a")), Bound)
    writes = len(cluster.writes)
    again = await binder.bind(args(p, "a"))
    assert isinstance(again, Bound) and again.retry
    assert len(cluster.writes) == writes
    assert "already holds GPUs on a" in refused(await binder.bind(args(p, "b")))


async def test_retry_after_a_restart_reads_the_binding_from_the_pod() -> None:
    # The scheduler timed out but the bind happened; a fresh extender sees spec.nodeName.
    ids = ["GPU-00000000-0000-0000-0000-000000000006", "GPU-00000000-0000-0000-0000-000000000007"]
    p = gpu_pod("train", gpus=2, node="a",
                annotations={ASSIGNED_GPUS_ANNOTATION: json.dumps({"main": ids})})
    cluster, binder = await setup([p])
    assert isinstance(await binder.bind(args(p, "a")), Bound)
    assert cluster.writes == []
    assert cluster.state.holdings[p["metadata"]["uid"]].ids == frozenset(ids)
    assert "already holds GPUs on a" in refused(await binder.bind(args(p, "b")))
    # bound elsewhere without any annotation: refused with the node it is on
    q = gpu_pod("other", gpus=1, node="b")
    cluster.put_pod(q)
    assert "already bound to b" in refused(await binder.bind(args(q, "a")))


async def test_failed_write_releases_the_reservation_and_a_retry_works() -> None:
    p = gpu_pod("train", gpus=8)
    cluster, binder = await setup([p])
    cluster.faults.append(ClusterError("etcd is sad"))
    error = refused(await binder.bind(args(p, "a")))
    assert "etcd is sad" in error and p["metadata"]["name"] in error
    assert cluster.state.nodes["a"].free_mask == 0xFF and not cluster.state.reservations
    assert isinstance(await binder.bind(args(p, "a")), Bound)


async def test_a_conflicting_write_is_counted() -> None:
    p = gpu_pod("train", gpus=8)
    cluster, binder = await setup([p])
    cluster.faults.append(ClusterError("conflict", conflict=True))
    assert "conflict" in refused(await binder.bind(args(p, "a")))
    assert cluster.state.nodes["a"].free_mask == 0xFF
    assert binder.metrics.bind_conflicts._value.get() == 1


async def test_timeout_releases_the_reservation() -> None:
    p = gpu_pod("train", gpus=8)
    cluster, binder = await setup([p], timeout_s=0.05)
    cluster.hold_writes()  # the write never finishes
    assert "timed out" in refused(await binder.bind(args(p, "a")))
    assert cluster.state.nodes["a"].free_mask == 0xFF and not cluster.state.reservations


async def test_pod_problems_are_answered_as_errors() -> None:
    bad = gpu_pod("bad", gpus=2, annotations={"gputopo.io/min-link": "warp"})
    good = gpu_pod("good", gpus=2)
    _, binder = await setup([bad, good])
    assert "gputopo.io/min-link" in refused(await binder.bind(args(bad, "a")))
    assert "not found" in refused(await binder.bind(args(gpu_pod("ghost"), "a")))
    assert "no GPU topology" in refused(await binder.bind(args(good, "zzz")))


async def test_pod_without_gpus_is_bound_without_an_annotation() -> None:
    p = gpu_pod("cpu", gpus=0)
    cluster, binder = await setup([p])
    result = await binder.bind(args(p, "b"))
    assert isinstance(result, Bound) and result.holding is None
    assert cluster.writes == [("bind", "default/cpu", "b", None)]


async def test_bind_in_flight_is_seen_by_filter() -> None:
    first, second = gpu_pod("first", gpus=8), gpu_pod("second", gpus=1)
    cluster, binder = await setup([first, second])
    cluster.hold_writes()
    task = asyncio.create_task(binder.bind(args(first, "a")))
    await cluster.settled([task])  # the set is chosen and reserved; the write waits
    assert cluster.state.reservations
    out = filter_verb.decide(cluster.state, GpuRequest.from_pod(second), ["a"])
    assert out.passed == [] and "no free GPUs" in out.failed["a"]
    cluster.release_writes()
    assert isinstance(await task, Bound)
    assert not cluster.state.reservations and cluster.state.nodes["a"].free_mask == 0


async def test_duplicate_concurrent_binds_of_one_pod_write_once() -> None:
    p = gpu_pod("train", gpus=4)
    cluster, binder = await setup([p])
    cluster.hold_writes()
    tasks = [asyncio.create_task(binder.bind(args(p, "a"))) for _ in range(5)]
    await cluster.settled(tasks[:1])
    cluster.release_writes()
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r, Bound) for r in results)
    assert [w[0] for w in cluster.writes] == ["bind"]


async def test_concurrent_binds_to_one_node_never_share_a_gpu() -> None:
    # 12 one-GPU pods race for 8 GPUs; every write waits until all binds have chosen.
    pods = [gpu_pod(f"p{i}", gpus=1) for i in range(12)]
    cluster, binder = await setup(pods)
    cluster.hold_writes()
    tasks = [asyncio.create_task(binder.bind(args(p, "a"))) for p in pods]
    await cluster.settled(tasks)
    assert cluster.waiting == 8 and len(cluster.state.reservations) == 8
    cluster.release_writes()
    results = await asyncio.gather(*tasks)
    ok = [p for p, r in zip(pods, results, strict=True) if isinstance(r, Bound)]
    assert len(ok) == 8
    assert all("can no longer take the pod" in r.reason for r in results
               if isinstance(r, BindRefused))
    gpus = [g for p in ok for g in assigned(cluster, p["metadata"]["uid"])["main"]]
    assert len(gpus) == len(set(gpus)) == 8
    assert cluster.state.nodes["a"].free_mask == 0


async def test_many_concurrent_binds_across_nodes_never_share_a_gpu() -> None:
    rng = random.Random(4)
    pods = [gpu_pod(f"p{i}", gpus=rng.choice([1, 1, 2, 2, 3, 4]),
                    annotations=rng.choice([{}, {"gputopo.io/min-link": "nvlink"}]))
            for i in range(60)]
    cluster, binder = await setup(pods)
    cluster.hold_writes()
    targets = [rng.choice("abc") for _ in pods]
    tasks = [asyncio.create_task(binder.bind(args(p, n)))
             for p, n in zip(pods, targets, strict=True)]
    await cluster.settled(tasks)  # every bind has chosen and reserved (or was refused)
    cluster.release_writes()
    results = await asyncio.gather(*tasks)
    per_node: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for p, node, r in zip(pods, targets, results, strict=True):
        if isinstance(r, Bound):
            per_node[node] += assigned(cluster, p["metadata"]["uid"])["main"]
    for node, gpus in per_node.items():
        assert len(gpus) == len(set(gpus)), node
    # node c has GPU 0 taken by the cluster file: never handed out
    assert "GPU-00000000-0000-0000-0000-000000000000" not in per_node["c"]
    # the state agrees with what was written
    for node, gpus in per_node.items():
        n = cluster.state.nodes[node]
        assert n.free_mask.bit_count() == n.topology.size - len(gpus) - (node == "c")
    assert not cluster.state.reservations
    # and every GPU held is held once
    held = [(h.node, g) for h in cluster.state.holdings.values() for g in h.ids]
    assert len(held) == len(set(held))


async def test_interleaved_filter_and_bind_keep_the_books_straight() -> None:
    # Scheduler-like loop: filter a pod, bind it to the first passing node, while earlier
    # binds are still in flight (their writes wait); at the end the masks match the sets.
    pods = [gpu_pod(f"p{i}", gpus=n) for i, n in zip(range(30), itertools.cycle([1, 2, 4]))]
    cluster, binder = await setup(pods)
    cluster.hold_writes()
    tasks = []
    for p in pods:
        out = filter_verb.decide(cluster.state, GpuRequest.from_pod(p), ["a", "b", "c"])
        if out.passed:
            tasks.append(asyncio.create_task(binder.bind(args(p, out.passed[0]))))
            await cluster.settled(tasks)
    cluster.release_writes()
    results = await asyncio.gather(*tasks)
    assert all(isinstance(r, Bound) for r in results)
    ids = [(h.node, g) for h in cluster.state.holdings.values() for g in h.ids]
    assert len(ids) == len(set(ids))
