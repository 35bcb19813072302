"""GetPreferredAllocation and Allocate decisions, without gRPC (``TopologyResourceManager``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.cluster import PodInfo
from plugin.pods import entry_for
from plugin.resources import (
    AllocateOptions,
    AllocationError,
    KubeletRecord,
    Preferred,
    Refused,
    TopologyResourceManager,
    assigned_candidates,
)
from topology.handoff import encode_gpu_sets, stable_gpu_uuid
from topology.links import Link
from topology.model import Topology
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .reference import preferred_refusal

U = [stable_gpu_uuid(i) for i in range(8)]
DGX1 = preset("dgx1-v100").with_gpus(
    replace(g, uuid=U[g.index]) for g in preset("dgx1-v100").gpus)


def _pod(name: str, assigned: dict[str, list[int]], *, created: str = "2026-01-01T00:00:00Z",
         allocated: dict[str, list[int]] | None = None, phase: str = "Pending",
         deleting: bool = False) -> PodInfo:
    ann = {ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets(
        {c: [U[i] for i in ix] for c, ix in assigned.items()})}
    if allocated is not None:
        ann[ALLOCATED_GPUS_ANNOTATION] = encode_gpu_sets(
            {c: [U[i] for i in ix] for c, ix in allocated.items()})
    return PodInfo(namespace="ns", name=name, node_name="node-a", phase=phase,
                   annotations=ann, created=created, deleting=deleting)


def _rm(pods: Sequence[PodInfo] = (), kubelet: KubeletRecord | None = None,
        **options: object) -> TopologyResourceManager:
    snapshot = MappingProxyType({p.key: entry_for(p) for p in pods})
    record = kubelet or MappingProxyType({})
    return TopologyResourceManager(
        DGX1, pods=lambda: snapshot, kubelet=lambda: record,
        options=AllocateOptions(**options),  # type: ignore[arg-type]
    )


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    pods: tuple[PodInfo, ...] = ()
    kubelet: dict[tuple[str, str], dict[str, tuple[str, ...]]] = field(default_factory=dict)
    available: tuple[int, ...] = tuple(range(8))
    must: tuple[int, ...] = ()
    size: int = 2
    want: frozenset[int] | None = None  # exact set expected
    want_link: str | None = None  # else: the pair's link class
    source: str


CASES = [
    # DGX-1 pairs: NV2 is the best link a pair can have; the allocator picks one.
    Case(name="no pods: allocator NV2 pair", want_link="NV2", source="allocator"),
    # The assigned set is returned even though it is SYS (the extender chose it).
    Case(name="assigned set honoured", pods=(_pod("a", {"main": [0, 5]}),),
         want=frozenset({0, 5}), source="assigned"),
    Case(name="assigned set of another size ignored", pods=(_pod("a", {"main": [0, 5, 6]}),),
         want_link="NV2", source="allocator"),
    Case(name="assigned set outside available ignored", pods=(_pod("a", {"main": [0, 5]}),),
         available=(1, 2, 3, 4, 5, 6, 7), want_link="NV2", source="allocator"),
    Case(name="assigned set without must_include ignored",
         pods=(_pod("a", {"main": [0, 5]}),), must=(1,), want_link="NV2", source="allocator"),
    Case(name="assigned set containing must_include honoured",
         pods=(_pod("a", {"main": [0, 5]}),), must=(5,), want=frozenset({0, 5}),
         source="assigned"),
    Case(name="already allocated per kubelet record skipped",
         pods=(_pod("a", {"main": [0, 5]}),),
         kubelet={("ns", "a"): {"main": (U[0], U[5])}}, want_link="NV2", source="allocator"),
    Case(name="already allocated per annotation skipped",
         pods=(_pod("a", {"main": [0, 5]}, allocated={"main": [0, 5]}),),
         want_link="NV2", source="allocator"),
    Case(name="finished pod skipped", pods=(_pod("a", {"main": [0, 5]}, phase="Succeeded"),),
         want_link="NV2", source="allocator"),
    Case(name="terminating pod skipped", pods=(_pod("a", {"main": [0, 5]}, deleting=True),),
         want_link="NV2", source="allocator"),
    Case(name="oldest pod first", pods=(
        _pod("young", {"main": [6, 7]}, created="2026-01-02T00:00:00Z"),
        _pod("old", {"main": [4, 5]}, created="2026-01-01T00:00:00Z")),
        want=frozenset({4, 5}), source="assigned"),
    Case(name="second container of a pod", pods=(
        _pod("a", {"first": [0, 3], "second": [1, 2]}),),
        kubelet={("ns", "a"): {"first": (U[0], U[3])}},
        available=(1, 2, 4, 5, 6, 7), want=frozenset({1, 2}), source="assigned"),
    # B got A's set (opposite order): B's own assigned set is now free for A.
    Case(name="orphaned set after a swap", pods=(
        _pod("a", {"main": [0, 3]}, created="2026-01-01T00:00:00Z"),
        _pod("b", {"main": [1, 2]}, created="2026-01-01T00:00:01Z")),
        kubelet={("ns", "b"): {"main": (U[0], U[3])}},
        available=(1, 2, 4, 5, 6, 7), want=frozenset({1, 2}), source="assigned"),
    # A 4-GPU pod is promised 4-7; a 2-GPU request without a set stays off them
    # (0-3 still holds NV2 pairs: 0-3 and 1-2).
    Case(name="promised GPUs kept for their pod", pods=(_pod("big", {"main": [4, 5, 6, 7]}),),
         want_link="NV2", source="allocator"),
    Case(name="single GPU", size=1, available=(6,), want=frozenset({6}), source="allocator"),
    Case(name="unknown IDs in available ignored", available=(1, 2), want=frozenset({1, 2}),
         source="allocator"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_preferred(case: Case) -> None:
    rm = _rm(list(case.pods), MappingProxyType(case.kubelet))
    available = [U[i] for i in case.available]
    if case.name.startswith("unknown"):
        available.append("GPU-elsewhere")
    got = rm.preferred(available, [U[i] for i in case.must], case.size)
    assert isinstance(got, Preferred)
    idx = frozenset(U.index(u) for u in got.devices)
    assert got.source == case.source
    assert len(got.devices) == case.size
    assert set(got.devices) <= set(available)  # never outside `available`
    assert {U[i] for i in case.must} <= set(got.devices)
    if case.want is not None:
        assert idx == case.want
    if case.want_link is not None:
        i, j = sorted(idx)
        assert str(DGX1.link(i, j)) == case.want_link
    if case.name == "promised GPUs kept for their pod":
        assert idx.isdisjoint({4, 5, 6, 7})


def test_beyond_the_allocator_the_fallback_is_exact() -> None:
    """17 GPUs (past the allocator's 16): by index, inside available, with must_include."""
    n = 17
    pix = Link.parse("PIX")
    t = Topology.from_matrix([[None if i == j else pix for j in range(n)] for i in range(n)])
    ids = [stable_gpu_uuid(i) for i in range(n)]
    rm = TopologyResourceManager(t.with_gpus(replace(g, uuid=ids[g.index]) for g in t.gpus))
    got = rm.preferred(ids[3:], [ids[16]], 3)
    assert isinstance(got, Preferred) and got.source == "fallback"
    assert got.devices == (ids[16], ids[3], ids[4])


@dataclass(frozen=True, kw_only=True)
class Refusal:
    name: str
    available: tuple[str, ...] = tuple(U)
    must: tuple[str, ...] = ()
    size: int = 2
    field: str
    says: str


REFUSALS = [
    Refusal(name="size 0", size=0, field="allocation_size", says="at least 1, got 0"),
    Refusal(name="negative size", size=-(2**31), field="allocation_size", says="-2147483648"),
    # 2**31 - 1 once answered all 8 GPUs.
    Refusal(name="more than the node", size=2**31 - 1, field="allocation_size",
            says="2147483647 devices asked, but available_deviceIDs holds 8 GPUs"),
    Refusal(name="more than available", available=(U[0], U[1], "GPU-elsewhere"), size=3,
            field="allocation_size", says="holds 2 GPUs of this node (and 1 IDs it does not"),
    # must_include of 4 with size 2 once answered 4.
    Refusal(name="must_include beyond size", must=tuple(U[:4]), field="allocation_size",
            says="2 is fewer than the 4 must_include_deviceIDs"),
    # A must_include ID outside available was once dropped without a word.
    Refusal(name="must_include not available", available=tuple(U[:4]), must=(U[6],),
            field="must_include_deviceIDs", says=f"'{U[6]}' is not in available_deviceIDs"),
    Refusal(name="must_include of another node", available=(*U, "GPU-x"), must=("GPU-x",),
            field="must_include_deviceIDs", says="'GPU-x' is not a GPU of this node"),
    Refusal(name="available twice", available=(U[0], U[1], U[0]),
            field="available_deviceIDs", says=f"'{U[0]}' is listed twice"),
    Refusal(name="must_include twice", must=(U[1], U[1]),
            field="must_include_deviceIDs", says=f"'{U[1]}' is listed twice"),
    Refusal(name="huge ID cut", available=(*U, "G" * 10**6), must=("G" * 10**6,),
            field="must_include_deviceIDs",
            says=f"'{'G' * 64}... (1000000 bytes)' is not a GPU of this node"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.name)
def test_preferred_refuses_naming_the_field(case: Refusal) -> None:
    got = _rm().preferred(list(case.available), list(case.must), case.size)
    assert isinstance(got, Refused)
    assert got.field == case.field
    assert case.says in got.reason
    assert len(got.reason) < 300


IDS = st.sampled_from([*U, "GPU-elsewhere", ""])


@settings(max_examples=300, deadline=None)
@given(available=st.lists(IDS, max_size=11), must=st.lists(IDS, max_size=4),
       size=st.one_of(st.integers(-3, 10), st.sampled_from([-(2**31), 2**31 - 1])),
       assigned=st.lists(st.sets(st.integers(0, 7), min_size=1, max_size=4), max_size=3))
def test_preferred_is_exactly_the_size_asked_or_refused(
    available: list[str], must: list[str], size: int, assigned: list[set[int]]
) -> None:
    """Any request: refused on the field the rules name, or exactly ``size`` distinct GPUs
    of ``available`` holding every ``must_include`` (pods' assigned sets or not)."""
    pods = [_pod(f"p{k}", {"main": sorted(ix)}) for k, ix in enumerate(assigned)]
    got = _rm(pods).preferred(available, must, size)
    field = preferred_refusal(available, must, size, U)
    if field is not None:
        assert isinstance(got, Refused) and got.field == field
        return
    assert isinstance(got, Preferred)
    assert len(got.devices) == size == len(set(got.devices))
    assert set(must) <= set(got.devices) <= set(available) & set(U)


def test_candidates_skip_sets_naming_gpus_of_other_nodes() -> None:
    pods = {p.key: entry_for(p) for p in [PodInfo(namespace="ns", name="x", annotations={
        ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets({"main": ["GPU-elsewhere", U[0]]})})]}
    assert assigned_candidates(pods, {}, U) == []


def test_unreadable_annotation_is_ignored_not_fatal() -> None:
    pod = PodInfo(namespace="ns", name="x", annotations={ASSIGNED_GPUS_ANNOTATION: "{nope"})
    assert entry_for(pod).assigned is None


def test_allocate_refuses_unknown_and_unhealthy_ids_naming_them() -> None:
    rm = _rm()
    with pytest.raises(AllocationError, match="GPU-nope"):
        rm.allocate([U[0], "GPU-nope"])
    with pytest.raises(AllocationError, match=rf"{U[2]} \(GPU2\) is listed twice"):
        rm.allocate([U[2], U[2], U[2]])
    with pytest.raises(AllocationError) as err:
        rm.allocate(["GPU-" + "y" * 2**20])
    assert str(err.value) == (
        f"unknown device '{'GPU-' + 'y' * 60}... ({4 + 2**20} bytes)': not a GPU of this node")
    assert rm.set_health(U[3], False, "XID 79")
    assert not rm.set_health(U[3], False, "XID 79")  # no change, no wake-up
    with pytest.raises(AllocationError, match=f"{U[3]}.*XID 79"):
        rm.allocate([U[3]])
    with pytest.raises(AllocationError, match="no devices"):
        rm.allocate([])


def test_allocate_env_and_existing_device_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia4", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools",
                 "nvidia-modeset"):
        (tmp_path / name).touch()
    rm = _rm(pass_device_specs=True, dev_root=tmp_path)
    got = rm.allocate([U[4], U[0]])
    assert got.envs == {"NVIDIA_VISIBLE_DEVICES": f"{U[4]},{U[0]}"}
    assert [s.container_path for s in got.device_specs] == [
        "/dev/nvidia4", "/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
    assert {s.permissions for s in got.device_specs} == {"rw"}


def test_health_change_tells_every_subscriber_once() -> None:
    rm = _rm()
    told: list[str] = []
    unsubscribe = rm.subscribe(lambda: told.append("a"))
    rm.subscribe(lambda: told.append("b"))
    v = rm.version
    assert rm.set_health(U[0], False, "XID 48")
    assert not rm.set_health(U[0], False, "XID 48")  # no change: nobody is told
    assert told == ["a", "b"] and rm.version == v + 1
    unsubscribe()
    assert rm.set_health(U[0], True)
    assert told == ["a", "b", "b"]
    assert [d.health for d in rm.devices()][:2] == ["Healthy", "Healthy"]


def test_gpus_without_uuid_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="GPU0"):
        TopologyResourceManager(preset("dgx1-v100"))


def _asking(name: str, asks: dict[str, int], *, phase: str = "Pending",
            deleting: bool = False, allocated: dict[str, list[int]] | None = None) -> PodInfo:
    """A pod whose containers ask for GPUs (no assigned set: the extender did not place it)."""
    ann = {} if allocated is None else {ALLOCATED_GPUS_ANNOTATION: encode_gpu_sets(
        {c: [U[i] for i in ix] for c, ix in allocated.items()})}
    return PodInfo(namespace="ns", name=name, node_name="node-a", phase=phase,
                   annotations=ann, deleting=deleting,
                   device_requests={c: {"nvidia.com/gpu": n, "example.com/nic": 1}
                                    for c, n in asks.items()})


def test_known_waiting_counts_containers_holding_nothing_less_unrecorded_allocations() -> None:
    pods = [
        _asking("a", {"main": 2}),                      # waits for 2
        _asking("b", {"init": 2, "main": 4}),           # its init container waits for 2
        _asking("held", {"main": 2}),                   # the kubelet's record: holds GPUs
        _asking("recorded", {"main": 2}, phase="Running", allocated={"main": [6, 7]}),
        _asking("done", {"main": 2}, phase="Succeeded"),
        _asking("leaving", {"main": 2}, deleting=True),
    ]
    snapshot = MappingProxyType({p.key: entry_for(p) for p in pods})
    records: list[KubeletRecord] = [MappingProxyType({("ns", "held"): {"main": (U[4], U[5])}})]
    rm = TopologyResourceManager(DGX1, pods=lambda: snapshot, kubelet=lambda: records[-1])
    # (Each also asks for an example.com/nic: another resource, not counted.)
    assert [rm.known_waiting(n) for n in (1, 2, 3, 4)] == [0, 2, 0, 1]
    # Allocated, but not in the record yet: one of the pods waiting for 2 holds them now.
    rm.allocate([U[0], U[1]])
    assert rm.known_waiting(2) == 1
    # The next record shows it (pod a): a no longer waits, and the allocation is shown.
    records.append(MappingProxyType({**records[-1], ("ns", "a"): {"main": (U[0], U[1])}}))
    assert rm.known_waiting(2) == 1
    # An allocation no record shows (the kubelet gave up on it) counts two records long.
    rm.allocate([U[2], U[3]])
    assert rm.known_waiting(2) == 0
    records.append(MappingProxyType(dict(records[-1])))
    assert rm.known_waiting(2) == 0
    records.append(MappingProxyType(dict(records[-1])))
    assert rm.known_waiting(2) == 1
