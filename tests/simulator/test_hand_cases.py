"""Metrics on clusters of one or two nodes and a handful of jobs, worked out by hand."""

from __future__ import annotations

import pytest

from simulator.policies import POLICY_NAMES

from .helpers import by_policy, cluster, jobs, nodes, run


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_queueing_jct_and_utilisation(policy: str) -> None:
    """Two 2-GPU workstations; two 2-GPU jobs at 0 (100 s), a third at 10 (50 s).

    The first two take a node each; the third waits for one until 100 (wait 90) and
    ends at 150 (JCT 140). Waits 0, 0, 90: mean 30, p50 0, p99 = 0.98 * 90 = 88.2.
    JCT mean (100 + 100 + 140) / 3. Every GPU is held from 0 to 10, the window of
    submissions: utilisation 1. The third job waited with no GPU free: fragmentation 0.
    Each pair is the node's only pair: best set, ratio 1, slowdown 1.
    """
    m = by_policy(run(cluster(nodes("workstation-2gpu-nvlink", 2)),
                      jobs((0, 2, 100), (0, 2, 100), (10, 2, 50)), policy))[policy].overall
    assert m.jobs == 3 and m.multi_gpu_jobs == 3 and m.unrunnable == 0
    assert m.mean_queueing_delay_s == pytest.approx(30)
    assert m.p50_queueing_delay_s == 0
    assert m.p99_queueing_delay_s == pytest.approx(88.2)
    assert m.mean_jct_s == pytest.approx(340 / 3)
    assert m.gpu_utilisation == pytest.approx(1.0)
    assert m.useful_utilisation == pytest.approx(1.0)
    assert m.fragmentation == 0
    assert m.best_set_share == 1 and m.mean_ring_bandwidth_ratio == 1
    assert m.failed_binds == 0


def test_spreading_fragments_and_packing_does_not() -> None:
    """Two 2-GPU workstations; two 1-GPU jobs at 0 (100 s), a 2-GPU job at 1 (10 s).

    count and local spread (``LeastAllocated`` prefers the node without pods), so each
    node keeps one GPU free and the pair waits 99 s although 2 GPUs were free all that
    time: fragmentation 1. binpack (``MostAllocated``: 100 on the used node against 50)
    and topology (the extender scores the exact fit 10 against 4 for orphaning an NVLink
    partner) put both 1-GPU jobs on one node: the pair starts at once.
    """
    result = by_policy(run(cluster(nodes("workstation-2gpu-nvlink", 2)),
                           jobs((0, 1, 100), (0, 1, 100), (1, 2, 10))))
    for policy in ("count", "local"):
        size2 = result[policy].by_size[2]
        assert size2.mean_queueing_delay_s == pytest.approx(99), policy
        assert size2.fragmentation == pytest.approx(1.0), policy
    for policy in ("binpack", "topology"):
        m = result[policy]
        assert m.by_size[2].mean_queueing_delay_s == 0, policy
        assert m.overall.fragmentation == 0, policy


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_ring_ratio_and_communication_model(policy: str) -> None:
    """A DGX-1 whose GPUs 2-5 are held outside the run; one 4-GPU job of 600 s.

    Its only set is 0,1,6,7: the best ring through it is SYS (6 GB/s), while an empty
    DGX-1's best ring of 4 is NV1 (25 GB/s). Ratio 6/25 = 0.24, not a best set. With a
    communication share of 0.2 the job runs 0.8 + 0.2 / 0.24 = 1.6333 times as long:
    980 s. (Without delay scheduling: with it, topology's job would first wait its
    patience for a best ring that never frees.)
    """
    m = by_policy(run(cluster(nodes("dgx1-v100", 1, used=(2, 3, 4, 5))),
                      jobs((0, 4, 600)), policy, best_set_patience_s=0.0))[policy].overall
    assert m.best_set_share == 0
    assert m.mean_ring_bandwidth_ratio == pytest.approx(0.24)
    assert m.mean_slowdown == pytest.approx(0.8 + 0.2 / 0.24)
    assert m.mean_jct_s == pytest.approx(600 * (0.8 + 0.2 / 0.24))
    assert m.best_set_offered_share == 0


@pytest.mark.parametrize("policy", ["local", "topology"])
def test_topology_aware_policies_take_the_nv2_pair(policy: str) -> None:
    """A DGX-1 with GPUs 0-3 free: 0-3, 1-2 and 2-3 are NV2 (the best pair), the rest
    NV1. NVIDIA's best-effort (pair score 200 + 20) and the exact allocator both take an
    NV2 pair: best set, ratio 1."""
    m = by_policy(run(cluster(nodes("dgx1-v100", 1, used=(4, 5, 6, 7))),
                      jobs((0, 2, 60)), policy))[policy].overall
    assert m.best_set_share == 1 and m.mean_ring_bandwidth_ratio == 1


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_gang_is_placed_all_or_nothing(policy: str) -> None:
    """Two DGX-1s; a 1-GPU job at 0 (10 s), then a 16-GPU job at 0 (100 s).

    The 16-GPU job is a gang of two whole-node pods: it needs both nodes wholly free,
    so it starts at 10 (wait 10), on both nodes, 8 GPUs each, ending at 110. While it
    waited 15 GPUs were free, fewer than 16: fragmentation 0.
    """
    result = run(cluster(nodes("dgx1-v100", 2)), jobs((0, 1, 10), (0, 16, 100)), policy)
    gang = next(r for r in result.runs[0].records if r.num_gpus == 16)
    assert gang.start_s == 10 and gang.end_s == 110
    assert sorted(p.node for p in gang.placements) == ["dgx1-v100-0", "dgx1-v100-1"]
    assert all(len(p.devices) == 8 for p in gang.placements)
    assert gang.best_set is True
    assert result.metrics[0].by_size[16].fragmentation == 0


def test_jobs_that_can_never_run_are_counted_not_waited_for() -> None:
    """A DGX-1 and a 2-GPU workstation (10 GPUs). 12 GPUs: more than the cluster. 9 GPUs:
    a gang of two 8-GPU pods, and there is one 8-GPU node. Both are unrunnable; the
    1-GPU job runs; the run ends."""
    result = run(cluster(nodes("dgx1-v100", 1), nodes("workstation-2gpu-nvlink", 1)),
                 jobs((0, 12, 10), (0, 9, 10), (5, 1, 10)))
    for r, m in zip(result.runs, result.metrics, strict=True):
        reasons = dict(r.unrunnable)
        assert "more than the whole cluster" in reasons["j0"]
        assert "needs 2 wholly free 8-GPU nodes" in reasons["j1"]
        assert m.overall.jobs == 1 and m.overall.unrunnable == 2


def test_a_bind_in_flight_makes_a_later_bind_fail_and_it_is_retried() -> None:
    """A DGX-1 with GPUs 0 and 1 held; two 3-GPU jobs at 0 asking for an NVLink ring
    (required). Each bind lands one scheduling cycle after its pod was assumed.

    The first pod is assumed (6 free by count -> 3). The second is filtered while the
    first's bind is in flight: the extender still sees 2-7 free and passes the node.
    The first bind takes 4,6,7 (NV ring); the second, chosen again on fresh state, finds
    2,3,5, which hold no NVLink ring of 3: the bind fails (1 failed bind), the pod is
    tried again, the filter now refuses the node, and it waits for the first job to end
    at 100 (wait 100). With binds landing at once the filter refuses it the first time:
    no failed bind, the same wait.
    """
    c = cluster(nodes("dgx1-v100", 1, used=(0, 1)))
    w = jobs((0, 3, 100), (0, 3, 100))
    for lag, failed in ((1, 1), (0, 0)):
        result = run(c, w, "topology", min_link="nvlink", link_policy="required",
                     bind_lag=lag, bind_lag_min=lag)
        r = result.runs[0]
        assert r.failed_binds == failed, lag
        assert r.rebinds == failed, lag
        second = next(x for x in r.records if x.job_id == "j1")
        assert second.wait_s == 100 and second.best_set is True
        assert r.plugin_overrides == 0


# A DGX-1 whose GPUs 2, 4, 5, 6 are held outside the run: free 0, 1, 3, 7. Its only NV2
# pair is 0-3 (the best pair of a DGX-1); 1-7 is SYS. The first 2-GPU job takes 0-3.
WAIT_FOR_NV2 = dict(used=(2, 4, 5, 6))


def test_patience_waits_for_the_nv2_pair_that_frees_later() -> None:
    """Job 0 (2 GPUs, 100 s) takes 0-3 at 0. Job 1 (2 GPUs) arrives at 1: only the SYS
    pair 1-7 is free. With 10 minutes of patience the extender passes it over; at 100
    job 0 ends (an event: kube-scheduler retries it) and it takes 0-3: wait 99, best
    set, ratio 1."""
    c = cluster(nodes("dgx1-v100", 1, **WAIT_FOR_NV2))  # type: ignore[arg-type]
    r = run(c, jobs((0, 2, 100), (1, 2, 50)), "topology", best_set_patience_s=600.0).runs[0]
    second = next(x for x in r.records if x.job_id == "j1")
    assert second.wait_s == 99 and second.best_set is True
    assert second.placements[0].devices == (0, 3)
    assert r.passed_over == 1


def test_without_patience_the_pod_takes_the_sys_pair_at_once() -> None:
    """The same with patience 0: job 1 takes 1-7 (SYS, 6 GB/s against NV2's 50) at 1."""
    c = cluster(nodes("dgx1-v100", 1, **WAIT_FOR_NV2))  # type: ignore[arg-type]
    r = run(c, jobs((0, 2, 100), (1, 2, 50)), "topology", best_set_patience_s=0.0).runs[0]
    second = next(x for x in r.records if x.job_id == "j1")
    assert second.wait_s == 0 and second.best_set is False
    assert second.placements[0].devices == (1, 7)
    assert second.ring_ratio == pytest.approx(6 / 50)
    assert r.passed_over == 0


def test_after_its_patience_the_pod_takes_the_worse_set_at_the_five_minute_retry() -> None:
    """Patience 60 s, job 0 runs 1,000 s: job 1 is passed over at 1; no event comes, so
    kube-scheduler tries it again 300 s later (podMaxInUnschedulablePodsDuration), when
    its patience is over: it takes the SYS pair at 301."""
    c = cluster(nodes("dgx1-v100", 1, **WAIT_FOR_NV2))  # type: ignore[arg-type]
    r = run(c, jobs((0, 2, 1000), (1, 2, 50)), "topology", best_set_patience_s=60.0).runs[0]
    second = next(x for x in r.records if x.job_id == "j1")
    assert second.start_s == 301 and second.best_set is False
