"""Delay scheduling for the best set (extender.patience): who waits, since when, how
long, and what filter, bind and the HTTP answer say meanwhile. Every clock is injected.

The machine: a DGX-1 V100 (hybrid cube-mesh). Its best pair is NV2 (e.g. 0-3, 1-2,
2-3, 4-7); GPUs 1 and 3 are joined by NV1 only; 0 and 5 by SYS only.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import aiohttp
import pytest

from extender import filter as filter_verb
from extender.bind import Binder, BindRefused, Bound, choose
from extender.config import (
    DEFAULT_BEST_SET_PATIENCE_S,
    ExtenderConfig,
    FieldError,
    validate,
)
from extender.decisions import Decisions
from extender.main import parse_args
from extender.metrics import Metrics
from extender.patience import Patience, waits_for_best
from extender.request import ContainerRequest, GpuRequest, PodRef, RequestError
from extender.state import ClusterState
from extender.wire import BindArgs
from topology.names import BEST_SET_PATIENCE_ANNOTATION

from .helpers import gpu_pod, memory_cluster, serving

ALL = list(range(8))


def used_except(*free: int) -> list[int]:
    return [i for i in ALL if i not in free]


def state(nodes: dict[str, list[int]]) -> ClusterState:
    """DGX-1 nodes by name, with the GPUs held outside."""
    from extender.filesource import parse_cluster

    f = parse_cluster({"nodes": [{"name": n, "topology": "dgx1-v100", "used": u}
                                 for n, u in nodes.items()]})
    s = ClusterState()
    s.replace(f.topologies, f.holdings)
    return s


def pair(**kw: Any) -> GpuRequest:
    return GpuRequest(containers=(ContainerRequest(name="main", count=2),), **kw)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- who waits, since when, until when ------------------------------------------------------
def test_who_waits_for_the_best_set() -> None:
    """Pods with a container of 2+ GPUs and no required link; not 1-GPU pods (even
    several 1-GPU containers), not required pods, not a patience of 0."""
    p = Patience(600.0)
    one = GpuRequest(containers=(ContainerRequest(name="a", count=1),
                                 ContainerRequest(name="b", count=1)))
    required = dataclasses.replace(pair(), required=True)
    assert waits_for_best(pair()) and not waits_for_best(one)
    assert not waits_for_best(required)
    assert p.request_at("u", pair(), 0.0).patient
    assert not p.request_at("u", one, 0.0).patient
    assert not p.request_at("u", required, 0.0).patient
    assert not Patience(0.0).request_at("u", pair(), 0.0).patient
    assert not p.request_at("u", pair(patience_s=0.0), 0.0).patient  # the pod says no
    assert p.request_at("u", pair(patience_s=60.0), 0.0).patience_s == 60.0


def test_the_clock_starts_when_passed_over_and_the_wait_ends_after_the_patience() -> None:
    p = Patience(600.0)
    assert p.since("u") is None
    assert p.request_at("u", pair(), 5_000.0).patient  # not passed over yet: patient
    assert p.passed_over("u", 1_000.0) == 1_000.0
    assert p.passed_over("u", 1_300.0) == 1_000.0  # the first time counts
    assert p.request_at("u", pair(), 1_599.0).patient
    judged = p.request_at("u", pair(), 1_600.0)  # 600 s after the first pass-over
    assert not judged.patient and judged == pair()  # judged exactly as without patience
    assert not p.request_at("u", pair(), 1_601.0).patient  # and stays so
    # a pod's own annotation wins over the default, both ways
    assert p.request_at("u", pair(patience_s=3_600.0), 1_601.0).patient
    assert not p.request_at("v", pair(patience_s=0.0), 0.0).patient


def test_the_clocks_are_bounded_least_recently_passed_over_first() -> None:
    p = Patience(600.0, max_pods=2)
    p.passed_over("a", 0.0)
    p.passed_over("b", 1.0)
    p.passed_over("a", 2.0)  # a used again: b is now the oldest
    p.passed_over("c", 3.0)
    assert (p.since("a"), p.since("b"), p.since("c"), len(p)) == (0.0, None, 3.0, 2)
    # a forgotten pod waits again from the start (as after a restart)
    assert p.request_at("b", pair(), 10_000.0).patient


def test_patient_is_part_of_the_shape_so_cached_verdicts_stay_right() -> None:
    """One Decisions serves a patient and a plain pair on the same node state: the
    node (only NV1 pair 1,3 free) passes the one and not the other, in either order."""
    s = state({"a": used_except(1, 3)})
    d = Decisions(s)
    patient = Patience(600.0).request_at("u", pair(), 0.0)
    assert patient.shape != pair().shape
    for _ in range(2):
        assert filter_verb.decide(s, pair(), ["a"], decisions=d).passed == ["a"]
        assert filter_verb.decide(s, patient, ["a"], decisions=d).waiting == ["a"]


# -- filter ---------------------------------------------------------------------------------
NV1_ONLY = "waiting up to 10m for the best set this node type offers (NV2 pair); " \
    "best free here now: NV1"


def test_filter_passes_only_the_best_set_while_one_is_free_and_starts_no_clock() -> None:
    """a: only the NV1 pair 1,3 free; b: the NV2 pair 4,7 free. The pod passes on b
    only; a fails as waiting (unresolvable: preemption is not for a chosen wait); it was
    not passed over, so no clock and no 'since'."""
    s = state({"a": used_except(1, 3), "b": used_except(4, 7)})
    p = Patience(600.0)
    out = filter_verb.judge_pod(s, pair(), ["a", "b"], uid="u", now=100.0, patience=p)
    assert out.passed == ["b"]
    assert out.failed == {} and out.unresolvable == {"a": NV1_ONLY}
    assert out.waiting == ["a"]
    assert p.since("u") is None


def test_filter_passes_the_pod_over_then_takes_the_worse_set_after_its_patience() -> None:
    """a: NV1 pair 1,3; b: SYS pair 0,5. Patient: both fail, the pod is passed over at
    1000 (the reasons say since when). At 1000 + 600 it is judged as today: both pass."""
    s = state({"a": used_except(1, 3), "b": used_except(0, 5)})
    p = Patience(600.0)
    d = Decisions(s)
    since = " (passed over since 22:13:20Z)"  # 1_700_000_000 s after the epoch
    t0 = 1_700_000_000.0
    out = filter_verb.judge_pod(s, pair(), ["a", "b"], uid="u", now=t0, patience=p,
                                decisions=d)
    assert out.passed == [] and out.waiting == ["a", "b"]
    assert out.unresolvable == {
        "a": NV1_ONLY + since,
        "b": "waiting up to 10m for the best set this node type offers (NV2 pair); "
             "best free here now: SYS" + since}
    assert p.since("u") == t0
    later = filter_verb.judge_pod(s, pair(), ["a", "b"], uid="u", now=t0 + 599, patience=p,
                                  decisions=d)
    assert later.passed == [] and later.unresolvable["a"] == NV1_ONLY + since
    expired = filter_verb.judge_pod(s, pair(), ["a", "b"], uid="u", now=t0 + 600,
                                    patience=p, decisions=d)
    assert expired.passed == ["a", "b"] and not expired.unresolvable
    # another pod of the same shape waits on its own clock
    other = filter_verb.judge_pod(s, pair(), ["a", "b"], uid="v", now=t0 + 600, patience=p,
                                  decisions=d)
    assert other.passed == [] and p.since("v") == t0 + 600


def test_a_node_that_cannot_take_the_pod_at_all_keeps_its_own_reason() -> None:
    """Waiting is only for nodes that could take the pod with a worse set: a node with
    one free GPU fails for the count, and passing over needs a waiting node."""
    s = state({"a": used_except(1)})
    p = Patience(600.0)
    out = filter_verb.judge_pod(s, pair(), ["a"], uid="u", now=0.0, patience=p)
    assert out.failed == {"a": "1 free GPUs (1): 2 requested"} and not out.waiting
    assert p.since("u") is None


def test_multi_container_pods_wait_for_each_containers_best() -> None:
    """Two containers of 2 on a DGX-1 with 0,1,3,5 free: the best split gives one NV2
    pair (0,3) and leaves 1,5, also NV2: both best, it passes. With 0,1,3,6 free the
    second container gets 1,6 (SYS): it waits, naming that container."""
    two = GpuRequest(containers=(ContainerRequest(name="a", count=2),
                                 ContainerRequest(name="b", count=2)))
    p = Patience(1800.0)
    ok = state({"n": used_except(0, 1, 3, 5)})
    assert filter_verb.judge_pod(ok, two, ["n"], uid="u", now=0.0, patience=p).passed == ["n"]
    short = state({"n": used_except(0, 1, 3, 6)})
    out = filter_verb.judge_pod(short, two, ["n"], uid="w", now=0.0, patience=p)
    assert out.passed == []
    assert out.unresolvable["n"].startswith(
        "waiting up to 30m for the best sets this node type offers (b: NV2 pair); "
        "best free here now: b SYS")


# -- bind -----------------------------------------------------------------------------------
def test_bind_refuses_a_worse_set_while_patient_and_takes_it_after() -> None:
    s = state({"a": used_except(1, 3), "b": used_except(4, 7)})
    p = Patience(600.0)
    ref = PodRef(namespace="ml", name="p", uid="u")
    best = choose(s, "b", p.request_at("u", pair(), 0.0), ref)
    assert not isinstance(best, BindRefused) and dict(best.sets)["main"] == (
        "GPU-00000000-0000-0000-0000-000000000004", "GPU-00000000-0000-0000-0000-000000000007")
    worse = choose(s, "a", p.request_at("u", pair(), 0.0), ref)
    assert isinstance(worse, BindRefused)
    assert worse.reason == f"node a can no longer take the pod: {NV1_ONLY}"
    p.passed_over("u", 0.0)
    assert not isinstance(choose(s, "a", p.request_at("u", pair(), 600.0), ref), BindRefused)


async def test_the_binder_judges_the_pod_by_the_patience_it_was_given() -> None:
    pod = gpu_pod("p", gpus=2, uid="u")
    cluster = memory_cluster([{"name": "a", "topology": "dgx1-v100",
                               "used": used_except(1, 3)}], [pod])
    await cluster.start()
    clock = Clock(0.0)
    patience = Patience(600.0, clock=clock)
    binder = Binder(cluster, cluster.state, ExtenderConfig(), Metrics(cluster.state),
                    patience=patience)
    bind = BindArgs(pod_name="p", pod_namespace="default", pod_uid="u", node="a")
    refused = await binder.bind(bind)
    assert isinstance(refused, BindRefused) and "waiting up to 10m" in refused.reason
    patience.passed_over("u", 0.0)
    clock.now = 600.0
    assert isinstance(await binder.bind(bind), Bound)


# -- decoding, configuration, the command ----------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [
    ("0", 0.0), ("30m", 1800.0), ("1h30m", 5400.0), ("90", 90.0), ("45s", 45.0),
    ("24h", 86400.0)])
def test_the_annotation_is_a_duration(value: str, seconds: float) -> None:
    pod = gpu_pod(gpus=2, annotations={BEST_SET_PATIENCE_ANNOTATION: value})
    assert GpuRequest.from_pod(pod).patience_s == seconds


@pytest.mark.parametrize(("value", "why"), [
    ("soon", "'soon' is not a duration (seconds, or e.g. 90s, 10m, 1h30m); \"0\" for no "
             "wait"),
    ("-5m", "'-5m' is not a duration"),
    ("25h", "'25h' is longer than the 24h allowed"),
    ("1h 30m", "'1h 30m' is not a duration")])
def test_a_bad_annotation_is_refused_naming_the_field(value: str, why: str) -> None:
    pod = gpu_pod(gpus=2, annotations={BEST_SET_PATIENCE_ANNOTATION: value})
    with pytest.raises(RequestError) as e:
        GpuRequest.from_pod(pod)
    assert str(e.value).startswith(
        f"Pod.metadata.annotations[{BEST_SET_PATIENCE_ANNOTATION}]: {why}")


def test_the_flag_its_default_and_its_limits() -> None:
    assert ExtenderConfig().best_set_patience_s == DEFAULT_BEST_SET_PATIENCE_S
    assert parse_args([]).best_set_patience_s == DEFAULT_BEST_SET_PATIENCE_S
    assert parse_args(["--best-set-patience", "30m"]).best_set_patience_s == 1800.0
    assert parse_args(["--best-set-patience", "0"]).best_set_patience_s == 0.0
    with pytest.raises(SystemExit):
        parse_args(["--best-set-patience", "later"])
    bad = [e for e in validate(ExtenderConfig(best_set_patience_s=90_000.0), need_source=False)
           if e.path == "best_set_patience_s"]
    assert bad == [FieldError("best_set_patience_s",
                              "90000s; allowed: 0 (no wait) up to 86400s (24h)")]


# -- over HTTP ------------------------------------------------------------------------------
async def test_the_filter_answer_over_http_names_the_wait() -> None:
    """The real app, its clock injected: the reason kube-scheduler shows on the pod
    names the wait; once the patience is over the same request passes."""
    clock = Clock(1_700_000_000.0)
    cluster = memory_cluster([{"name": "a", "topology": "dgx1-v100",
                               "used": used_except(1, 3)}])
    pod = gpu_pod("pair", gpus=2)
    body = json.dumps({"Pod": pod, "NodeNames": ["a"], "Nodes": None})
    cfg = ExtenderConfig(host="127.0.0.1", port=0, best_set_patience_s=300.0)
    async with serving(cluster, cfg, clock=clock) as url, aiohttp.ClientSession() as s:
        async def filter_() -> Any:
            async with s.post(f"{url}/filter", data=body) as r:
                assert r.status == 200
                return json.loads(await r.read())

        first = await filter_()
        assert first["NodeNames"] == [] and first["FailedNodes"] == {}
        assert first["FailedAndUnresolvableNodes"] == {
            "a": "waiting up to 5m for the best set this node type offers (NV2 pair); "
                 "best free here now: NV1 (passed over since 22:13:20Z)"}
        # While it waits, preemption evicts nobody for it (it could run now).
        victims = json.dumps({"Pod": pod, "NodeNameToVictims": None, "NodeNameToMetaVictims": {
            "a": {"Pods": [{"UID": "v1"}], "NumPDBViolations": 0}}})
        async with s.post(f"{url}/preempt", data=victims) as r:
            assert json.loads(await r.read()) == {"NodeNameToMetaVictims": {}}
        clock.now += 300
        assert (await filter_())["NodeNames"] == ["a"]
        async with s.post(f"{url}/preempt", data=victims) as r:  # judged as today again
            assert json.loads(await r.read())["NodeNameToMetaVictims"] == {
                "a": {"Pods": [{"UID": "v1"}], "NumPDBViolations": 0}}
        bad = json.dumps({"Pod": gpu_pod("bad", gpus=2, annotations={
            BEST_SET_PATIENCE_ANNOTATION: "a while"}), "NodeNames": ["a"], "Nodes": None})
        async with s.post(f"{url}/filter", data=bad) as r:
            error = json.loads(await r.read())["Error"]
        assert error.startswith(
            f"Pod.metadata.annotations[{BEST_SET_PATIENCE_ANNOTATION}]: 'a while' is not")
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        assert 'gputopo_extender_node_decisions_total{result="waiting"} 1.0' in text
