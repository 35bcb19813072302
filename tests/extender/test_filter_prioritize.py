"""filter.decide and prioritize.scores: table tests over known machines, and filter
against a brute-force search on random machines (the allocator's strategy)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from extender import filter as filter_verb
from extender import prioritize
from extender.decisions import Decisions
from extender.request import GpuRequest
from extender.state import ClusterState
from extender.wire import decode_extender_args
from tests.allocator.reference import best_key
from tests.strategies import Request, requests
from topology.handoff import stable_gpu_uuid
from topology.links import parse_min_link
from topology.presets import preset

from .helpers import gpu_pod

NV_REQUIRED = {"gputopo.io/min-link": "nvlink", "gputopo.io/link-policy": "required"}
NV_PREFERRED = {"gputopo.io/min-link": "nvlink"}


def cluster(nodes: dict[str, tuple[str, list[int]]]) -> ClusterState:
    from extender.filesource import parse_cluster

    f = parse_cluster({"nodes": [{"name": n, "topology": t, "used": u}
                                 for n, (t, u) in nodes.items()]})
    s = ClusterState()
    s.replace(f.topologies, f.holdings)
    return s


@dataclass(frozen=True, kw_only=True)
class Case:
    name: str
    nodes: dict[str, tuple[str, list[int]]]
    gpus: int | dict[str, int] = 4
    annotations: dict[str, str] = field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    passed: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)


CASES = [
    Case(name="empty nodes pass", nodes={"a": ("dgx1-v100", []), "b": ("hgx-h100", [])},
         passed=("a", "b")),
    # 3 GPUs left on b: a count problem, preemption could help
    Case(name="too few free GPUs is a plain failure",
         nodes={"a": ("dgx1-v100", []), "b": ("hgx-h100", [0, 1, 2, 3, 4])},
         passed=("a",), failed={"b": "3 free GPUs (5,6,7): 4 requested"}),
    # DGX-1 with GPUs 1,3,4,6 used: free 0,2,5,7 hold no NVLink ring of 4
    Case(name="required NVLink ring fails where only broken quads are free",
         nodes={"a": ("dgx1-v100", [1, 3, 4, 6]), "b": ("dgx-a100", [0, 1, 2, 3])},
         annotations=NV_REQUIRED, passed=("b",),
         failed={"a": "4 free GPUs (0,2,5,7): no NVLink ring of 4"}),
    # an all-SYS machine never has NVLink: preemption cannot help
    Case(name="required NVLink on a PCIe-only node is unresolvable",
         nodes={"a": ("pcie-8gpu-sys", []), "b": ("hgx-h100", [])},
         annotations=NV_REQUIRED, passed=("b",),
         unresolvable={"a": "8 free GPUs (0,1,2,3,4,5,6,7): no NVLink ring of 4"}),
    Case(name="preferred NVLink only scores", nodes={"a": ("pcie-8gpu-sys", [])},
         annotations=NV_PREFERRED, passed=("a",)),
    Case(name="a pod larger than any node is unresolvable",
         nodes={"a": ("gb200-4gpu", [])}, gpus=8,
         unresolvable={"a": "requested 8 GPUs; the node has 4"}),
    Case(name="unknown nodes fail alone", nodes={"a": ("dgx1-v100", [])},
         candidates=("a", "ghost"), passed=("a",),
         failed={"ghost": filter_verb.UNKNOWN_NODE}),
    Case(name="no GPU request passes everything, even unknown nodes",
         nodes={"a": ("dgx1-v100", list(range(8)))}, gpus=0, candidates=("a", "ghost"),
         passed=("a", "ghost")),
    Case(name="two containers need two disjoint sets",
         nodes={"a": ("hgx-h100", [0, 1, 2, 3, 4]), "b": ("hgx-h100", [0, 1])},
         gpus={"x": 2, "y": 2}, passed=("b",),
         failed={"a": "3 free GPUs (5,6,7): 4 requested (x=2, y=2)"}),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_filter_decide(case: Case) -> None:
    s = cluster(case.nodes)
    r = GpuRequest.from_pod(gpu_pod(gpus=case.gpus, annotations=case.annotations))
    names = list(case.candidates or case.nodes)
    out = filter_verb.decide(s, r, names)
    assert tuple(out.passed) == case.passed
    assert out.failed.keys() == case.failed.keys()
    for node, message in case.failed.items():
        assert message in out.failed[node]
    assert out.unresolvable.keys() == case.unresolvable.keys()
    for node, message in case.unresolvable.items():
        assert message in out.unresolvable[node]


def test_filter_answers_a_node_list_with_the_same_node_objects() -> None:
    s = cluster({"a": ("dgx1-v100", []), "b": ("hgx-h100", list(range(8)))})
    nodes: dict[str, Any] = {
        "apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "9"},
        "items": [{"metadata": {"name": "a", "labels": {"x": "1"}}, "status": {}},
                       {"metadata": {"name": "b"}}]}
    args = decode_extender_args({"Pod": gpu_pod(), "Nodes": nodes, "NodeNames": None})
    out = filter_verb.decide(s, GpuRequest.from_pod(args.pod), args.names)
    result = filter_verb.encode(args, out)
    assert result["NodeNames"] is None
    assert result["Nodes"] == {**nodes, "items": [nodes["items"][0]]}
    assert set(result["FailedNodes"]) == {"b"}


@dataclass(frozen=True, kw_only=True)
class ScoreCase:
    name: str
    nodes: dict[str, tuple[str, list[int]]]
    gpus: int = 4
    annotations: dict[str, str] = field(default_factory=dict)
    scores: dict[str, int]


# L = 0.75 * (1 - rank(best link cut) / rank(best free link)) + 0.25 * (bandwidth share
# kept). An empty 8-GPU NVSwitch node, 4-GPU pod: the pod cuts NV18 (= the best link) -> 0;
# 6 pairs left of the 28 - 6 the pod does not use -> 6/22; L = 0.068, 0.15 * L = 0.010.
# An empty all-SYS node: only SYS to cut -> 1; L = 0.75 + 0.25 * 6/22 = 0.818 -> 0.123.
SCORE_CASES = [
    # H100 NV18 ring = 450 GB/s, A100 NV12 = 300 GB/s. a: M=1, R=A=300/450=0.667
    # -> 10*(0.4+0.2+0.1+0.010) = 7.1 -> 7; b: R=A=1 -> 10*(0.4+0.3+0.15+0.010) = 8.6 -> 9.
    ScoreCase(name="faster NVLink scores higher",
              nodes={"a": ("dgx-a100", []), "b": ("hgx-h100", [])},
              scores={"a": 7, "b": 9}),
    # PCIe SYS ring = 6 GB/s vs 450: R = A = 0.013, M=1 (no min-link asked)
    # -> 10*(0.4+0.004+0.002+0.123) = 5.3 -> 5
    ScoreCase(name="all-SYS node ranks low", nodes={"a": ("pcie-8gpu-sys", []),
                                                     "b": ("hgx-h100", [])},
              scores={"a": 5, "b": 9}),
    # Preferred NVLink not met on a: M=0 -> 10*(0+0.004+0.002+0.123) = 1.3 -> 1
    ScoreCase(name="unmet preference drops below every node that meets it",
              nodes={"a": ("pcie-8gpu-sys", []), "b": ("hgx-h100", [])},
              annotations=NV_PREFERRED, scores={"a": 1, "b": 9}),
    ScoreCase(name="nodes that fail score 0, unknown too",
              nodes={"a": ("hgx-h100", list(range(6))), "b": ("hgx-h100", [])},
              scores={"a": 0, "b": 9, "ghost": 0}),
    # a has exactly 4 GPUs free: nothing left to cut, L=1 -> 10; b (empty) keeps 9: the
    # pod packs onto the broken node and leaves the whole machine for a whole-machine job.
    ScoreCase(name="an exact fit beats an empty node",
              nodes={"a": ("hgx-h100", [0, 1, 2, 3]), "b": ("hgx-h100", [])},
              scores={"a": 10, "b": 9}),
    # 1-GPU pod: R and A carry nothing, score = 10*(0.4 + 0.6*L).
    # ws: its last GPU loses its NV4 partner (the best link): L=0 -> 4.
    # pairs (NV pairs 0-2,1-3,4-5,6-7; GPU1 used): GPU3 is an orphan, only SYS links are cut
    # (class term 1), 36 of 1008 GB/s -> L = 0.75 + 0.25*0.964 = 0.991 -> 9.95 -> 10.
    # sys (GPUs 3-7 free, all SYS): class term 1, 6 of 10 SYS pairs kept -> L = 0.9 -> 9.4
    # -> 9. a100 (GPUs 5-7 free, NV12): NV12 cut -> 0, 1 of 3 pairs kept -> L = 0.083
    # -> 4.5 -> 5 (half up).
    ScoreCase(name="a 1-GPU pod takes an orphan, not half of an NVLink pair", gpus=1,
              nodes={"ws": ("workstation-2gpu-nvlink", []),
                     "pairs": ("pcie-8gpu-nvlink-pairs", [1]),
                     "sys": ("pcie-8gpu-sys", [0, 1, 2]),
                     "a100": ("dgx-a100", [0, 1, 2, 3, 4])},
              scores={"ws": 4, "pairs": 10, "sys": 9, "a100": 5}),
]


@pytest.mark.parametrize("case", SCORE_CASES, ids=lambda c: c.name)
def test_prioritize_scores(case: ScoreCase) -> None:
    s = cluster(case.nodes)
    r = GpuRequest.from_pod(gpu_pod(gpus=case.gpus, annotations=case.annotations))
    names = list(case.scores)
    assert dict(zip(names, prioritize.scores(s, r, names), strict=True)) == case.scores


def test_prioritize_prefers_the_node_that_keeps_nvlink_groups_whole() -> None:
    # DGX-1: quads 0-3 and 4-7. Node a has one GPU of each quad used (0 and 4): a 2-GPU pod
    # takes an NVLink pair either way, but leaves a broken remainder; node b has a whole
    # quad used, so the pod takes a pair from the other quad and leaves a pair whole.
    s = cluster({"a": ("dgx1-v100", [0, 4]), "b": ("dgx1-v100", [0, 1, 2, 3])})
    r = GpuRequest.from_pod(gpu_pod(gpus=2))
    a, b = prioritize.scores(s, r, ["a", "b"])
    assert 0 < a <= b <= 10


def test_prioritize_without_gpus_is_equal_everywhere() -> None:
    s = cluster({"a": ("dgx1-v100", []), "b": ("pcie-8gpu-sys", [])})
    assert prioritize.scores(s, GpuRequest(), ["a", "b", "c"]) == [0, 0, 0]


@pytest.mark.parametrize("names", [["a", "b.c-1"], ['we"ird', "\\x"], []])
def test_prioritize_encode_is_valid_json(names: list[str]) -> None:
    values = [v + 3 for v in range(len(names))]
    data: Any = json.loads(prioritize.encode(names, values))
    # Sent less the lowest score, the hosts at the lowest left out (they add nothing).
    assert data == [{"Host": n, "Score": v - 3}
                    for n, v in zip(names, values, strict=True) if v > 3]


def test_normalize_rounds_half_up_and_clamps() -> None:
    assert [prioritize.normalize(x) for x in (0, 0.04, 0.05, 0.55, 1, 1.7, -1)] == [
        0, 0, 1, 6, 10, 10, 0]


def test_verdicts_are_shared_by_identical_node_states() -> None:
    s = cluster({f"n{i}": ("hgx-h100", [0]) for i in range(50)})
    d = Decisions(s)
    r = GpuRequest.from_pod(gpu_pod(gpus=4))
    filter_verb.decide(s, r, list(s.nodes), decisions=d)
    assert len([k for k in d.verdicts(r) if k is not None]) == 1
    assert preset("hgx-h100").fingerprint == s.nodes["n0"].topology.fingerprint


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(max_gpus=8, must_include=False))
def test_filter_passes_exactly_where_some_free_set_meets_the_constraint(req: Request) -> None:
    """A node passes when some set of its free GPUs of the pod's size has a ring meeting
    the required min-link (brute force); it is unresolvable when not even all its GPUs
    would do."""
    t, size, free, _, min_link_text = req
    annotations = {} if min_link_text is None else {
        "gputopo.io/min-link": min_link_text, "gputopo.io/link-policy": "required"}
    s = ClusterState()
    s.set_topology("n", t)
    used = sorted(set(range(t.size)) - free)
    if used:
        from extender.request import PodRef
        from extender.state import Holding
        s.hold(Holding(pod=PodRef(namespace="ns", name="u", uid="u"), node="n",
                       sets=(("main", tuple(t.gpus[i].uuid or stable_gpu_uuid(i)
                                             for i in used)),), source="assigned"))
    r = GpuRequest.from_pod(gpu_pod(gpus=size, annotations=annotations))
    out = filter_verb.decide(s, r, ["n"])
    rank = None if min_link_text is None else parse_min_link(min_link_text).rank
    fits = size == 0 or (size <= len(free) and best_key(t, size, free, set(), rank) is not None)
    assert (out.passed == ["n"]) == fits, (out, size, sorted(free), min_link_text)
    if not fits:
        never = size > t.size or best_key(t, size, set(range(t.size)), set(), rank) is None
        assert ("n" in out.unresolvable) == never
        assert ("n" in out.failed) == (not never)
