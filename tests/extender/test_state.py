"""ClusterState and the placement rule: holdings, reservations, resync, containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from extender import statefile
from extender.memory import MemoryCluster
from extender.plan import Plan, Rejection, place
from extender.pods import decode_pod
from extender.request import GpuRequest, PodRef
from extender.state import BIND_GRACE_S, ClusterState, Holding
from extender.views import users
from topology.allocate import allocator_for
from topology.gpuids import indices_of, mask_of
from topology.handoff import gpu_ids, stable_gpu_uuid
from topology.presets import preset

from .helpers import gpu_pod


def holding(uid: str, node: str, indices: list[int], container: str = "main") -> Holding:
    return Holding(pod=PodRef(namespace="ns", name=uid, uid=uid), node=node,
                   sets=((container, tuple(stable_gpu_uuid(i) for i in indices)),),
                   source="assigned")


def state_with(name: str = "n1", topo: str = "dgx1-v100") -> ClusterState:
    s = ClusterState()
    s.set_topology(name, preset(topo))
    return s


def test_fake_ids_match_the_plugins_fake_nvml() -> None:
    # plugin/fakenvml.py: GPU-00000000-0000-0000-0000-0000000000NN
    assert stable_gpu_uuid(7) == "GPU-00000000-0000-0000-0000-000000000007"
    assert gpu_ids(preset("gb200-4gpu"))[3] == "GPU-00000000-0000-0000-0000-000000000003"


def test_hold_release_reserve_commit_update_the_free_mask() -> None:
    s = state_with()
    n = s.nodes["n1"]
    assert n.free_mask == 0xFF
    s.hold(holding("a", "n1", [0, 1]))
    assert indices_of(n.free_mask) == (2, 3, 4, 5, 6, 7)
    s.reserve(holding("b", "n1", [2, 3]))
    assert indices_of(n.free_mask) == (4, 5, 6, 7)
    assert users(s, "n1")[2] == "ns/b (binding)"
    s.commit("b", "bind")
    assert "b" in s.holdings and "b" not in s.reservations
    assert indices_of(n.free_mask) == (4, 5, 6, 7)
    s.release("a")
    assert indices_of(n.free_mask) == (0, 1, 4, 5, 6, 7)
    s.unreserve("nobody")  # harmless
    assert s.node_keys["n1"] == n.key


def test_holding_before_its_node_is_known_counts_once_the_node_appears() -> None:
    s = ClusterState()
    s.hold(holding("a", "late", [5]))
    s.set_topology("late", preset("hgx-h100"))
    assert indices_of(s.nodes["late"].free_mask) == (0, 1, 2, 3, 4, 6, 7)


def test_unknown_gpu_ids_are_ignored() -> None:
    s = state_with()
    s.hold(Holding(pod=PodRef(namespace="ns", name="x", uid="x"), node="n1",
                   sets=(("main", ("GPU-not-here",)),), source="allocated"))
    assert s.nodes["n1"].free_mask == 0xFF


def test_replace_keeps_reservations_and_fresh_binds_but_drops_the_rest() -> None:
    s = state_with()
    s.hold(holding("old", "n1", [0]))
    s.reserve(holding("inflight", "n1", [1]))
    s.commit("inflight", "bind")
    s.reserve(holding("binding", "n1", [2]))
    s.replace({"n1": preset("dgx1-v100")}, [holding("listed", "n1", [3])])
    # "old" is gone (not in the list), "inflight" was bound a moment ago (kept),
    # "binding" is still reserved, "listed" is new.
    assert set(s.holdings) == {"inflight", "listed"}
    assert indices_of(s.nodes["n1"].free_mask) == (0, 4, 5, 6, 7)
    # Long after the bind the list is believed.
    s.replace({"n1": preset("dgx1-v100")}, [], now=10**9 + BIND_GRACE_S)
    assert set(s.holdings) == set()


def test_replace_topologies_removes_vanished_nodes() -> None:
    s = state_with("a")
    s.set_topology("b", preset("hgx-h100"))
    s.replace_topologies({"b": preset("hgx-h100")})
    assert set(s.nodes) == {"b"} and set(s.node_keys) == {"b"}


def req(**kw: object) -> GpuRequest:
    return GpuRequest.from_pod(gpu_pod(**kw))  # type: ignore[arg-type]


def test_place_single_container_uses_the_allocator() -> None:
    a = allocator_for(preset("dgx1-v100"))
    v = place(a, 0xFF, req(gpus=4))
    assert isinstance(v, Plan)
    assert v.sets[0][0] == "main" and len(v.sets[0][1]) == 4
    assert v.meets_min_link and v.ring_link is not None and v.ring_link.is_nvlink


def test_place_app_containers_are_disjoint_and_init_overlaps() -> None:
    a = allocator_for(preset("dgx1-v100"))
    v = place(a, 0xFF, req(gpus={"a": 2, "b": 2}, init={"setup": 3}))
    assert isinstance(v, Plan)
    sets = dict(v.sets)
    assert not set(sets["a"]) & set(sets["b"])
    # the init container's 3 GPUs lie inside the 4 of the app containers
    assert set(sets["setup"]) <= set(sets["a"]) | set(sets["b"])
    assert bin(v.mask).count("1") == 4


def test_place_larger_init_container_wraps_the_app_containers() -> None:
    a = allocator_for(preset("dgx1-v100"))
    v = place(a, 0xFF, req(gpus=2, init={"setup": 4}))
    assert isinstance(v, Plan)
    sets = dict(v.sets)
    assert set(sets["main"]) <= set(sets["setup"])
    assert bin(v.mask).count("1") == 4


def test_required_constraint_rejects_and_says_if_an_empty_node_would_do() -> None:
    a = allocator_for(preset("dgx1-v100"))
    nv = {"gputopo.io/min-link": "nvlink", "gputopo.io/link-policy": "required"}
    # GPUs 0,1,5,6 are free: no NVLink ring of 4 among them (DGX-1 cube mesh)
    free = mask_of([0, 2, 5, 7])
    v = place(a, free, req(gpus=4, annotations=nv))
    assert isinstance(v, Rejection) and not v.unresolvable
    assert "no NVLink ring of 4" in v.reason
    # An all-SYS machine can never give an NVLink pair: unresolvable.
    sys_alloc = allocator_for(preset("pcie-8gpu-sys"))
    v = place(sys_alloc, 0xFF, req(gpus=2, annotations=nv))
    assert isinstance(v, Rejection) and v.unresolvable


def test_preferred_constraint_relaxes_and_marks_the_plan() -> None:
    sys_alloc = allocator_for(preset("pcie-8gpu-sys"))
    v = place(sys_alloc, 0xFF, req(gpus=2, annotations={"gputopo.io/min-link": "nvlink"}))
    assert isinstance(v, Plan) and not v.meets_min_link


def test_too_many_gpus_is_unresolvable_on_any_free_mask() -> None:
    a = allocator_for(preset("gb200-4gpu"))
    v = place(a, 0b0011, req(gpus=8))
    assert isinstance(v, Rejection) and v.unresolvable
    v = place(a, 0b0011, req(gpus={"a": 2, "b": 2, "c": 1}))
    assert isinstance(v, Rejection) and v.unresolvable
    assert v.reason == "2 free GPUs (0,1): 5 requested (a=2, b=2, c=1)"
    # enough GPUs in total, but no NVLink pair for the second container: names it
    nv = {"gputopo.io/min-link": "nvlink", "gputopo.io/link-policy": "required"}
    dgx1 = allocator_for(preset("dgx1-v100"))
    v = place(dgx1, mask_of([0, 5, 6, 7]), req(gpus={"a": 2, "b": 2}, annotations=nv))
    assert isinstance(v, Rejection) and v.reason.startswith("container ")


def test_two_containers_get_a_joint_placement_when_greedy_would_fail() -> None:
    # Free 0,1,5,7 on a DGX-1: the best pair is 1-5 (NV2), which leaves 0,7 (SYS) for the
    # second container. The search finds 0-1 (NV1) + 5-7 (NV1), both NVLink.
    nv = {"gputopo.io/min-link": "nvlink", "gputopo.io/link-policy": "required"}
    dgx1 = allocator_for(preset("dgx1-v100"))
    v = place(dgx1, mask_of([0, 1, 5, 7]), req(gpus={"a": 2, "b": 2}, annotations=nv))
    assert isinstance(v, Plan)
    assert sorted(sorted(s) for _, s in v.sets) == [[0, 1], [5, 7]]


def test_pods_seen_in_filter_are_remembered_within_bounds() -> None:
    c = MemoryCluster(remembered_pods=3)
    for i in range(5):
        c.note_pod(decode_pod(gpu_pod(f"p{i}")))
    assert c.seen("uid-p0") is None and c.seen("uid-p4") is not None
    # and within bytes: a pod of many containers counts for more
    c = MemoryCluster(remembered_bytes=20_000)
    c.note_pod(decode_pod(gpu_pod("small")))
    c.note_pod(decode_pod(gpu_pod("wide", gpus={f"c{i}": 1 for i in range(200)})))
    assert c.seen("uid-small") is None and c.seen("uid-wide") is None


def test_commit_keeps_what_the_watch_already_delivered() -> None:
    # The Binding's watch event can arrive before the bind call returns.
    s = state_with()
    s.reserve(holding("p", "n1", [0, 1]))
    seen = Holding(pod=PodRef(namespace="ns", name="p", uid="p"), node="n1",
                   sets=(("main", (stable_gpu_uuid(0), stable_gpu_uuid(1))),), source="allocated")
    s.hold(seen)
    assert s.commit("p", "bind") is seen
    assert s.holdings["p"].source == "allocated" and not s.reservations
    assert indices_of(s.nodes["n1"].free_mask) == (2, 3, 4, 5, 6, 7)


# -- the cluster-file mode's state file ----------------------------------------------------
def test_state_file_round_trip_and_atomic_replace(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "cluster.state.json"
    assert statefile.load(path) == []  # not written yet
    first = [holding("a", "n1", [0, 1])]
    statefile.save(path, first)
    assert [(h.pod, h.node, h.sets) for h in statefile.load(path)] == [
        (h.pod, h.node, h.sets) for h in first]

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile.os, "replace", broken_replace)
    with pytest.raises(OSError):
        statefile.save(path, [*first, holding("b", "n1", [2])])
    # the old holdings are intact, and no temporary file is left behind
    assert [h.pod.uid for h in statefile.load(path)] == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.state.json"]


def test_unreadable_state_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('{"schema": "something else"}')
    with pytest.raises(statefile.StateFileError, match="not a state file"):
        statefile.load(path)
    path.write_text('{"schema": "gputopo.io/extender-state/v1", "holdings": [{"uid": 1}]}')
    with pytest.raises(statefile.StateFileError, match=r"holdings\[0\]"):
        statefile.load(path)


async def test_a_bind_whose_holding_cannot_be_written_is_refused(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from extender.bind import Binder, BindRefused
    from extender.config import ExtenderConfig
    from extender.metrics import Metrics
    from extender.wire import BindArgs

    cluster = MemoryCluster(topologies={"n1": preset("hgx-h100")}, mode="file",
                            state_file=tmp_path / "s.json")
    await cluster.start()
    pod = decode_pod(gpu_pod("p", gpus=2))
    cluster.note_pod(pod)

    def full_disk(path: Path, holdings: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(statefile, "save", full_disk)
    binder = Binder(cluster, cluster.state, ExtenderConfig(), Metrics(cluster.state))
    result = await binder.bind(BindArgs(pod_name="p", pod_namespace="default",
                                        pod_uid="uid-p", node="n1"))
    assert isinstance(result, BindRefused) and "No space left on device" in result.reason
    assert cluster.state.nodes["n1"].free_mask == 0xFF and not cluster.state.holdings
    assert cluster.pods == {}
