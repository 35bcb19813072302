"""Determinism, and that ``topology`` runs the extender's and the plugin's own code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import extender.config
import extender.prioritize
import plugin.resources
from simulator.cluster import Cluster, from_presets
from simulator.compare import Comparison
from simulator.decisions import EXTENDER_WEIGHT
from simulator.workload import Workload, synthetic

from .helpers import by_policy, cluster, jobs, nodes, run

ROOT = Path(__file__).resolve().parents[2]


def _small() -> tuple[Cluster, Workload]:
    c = from_presets("dgx1-v100:6,pcie-8gpu-nvlink-pairs:2")
    return c, synthetic(jobs=400, seed=3, cluster_gpus=c.gpus)


def _stable(result: Comparison) -> str:
    """The JSON output without the one field that is not a function of the seed."""
    out = result.as_json()
    for p in out["policies"].values():
        del p["wall_s"]
    return json.dumps(out, sort_keys=True)


def test_a_seed_repeats_exactly_and_another_seed_differs() -> None:
    """Same seed: the same output to the last digit (ties, bind lags, random devices,
    communication shares). Another seed: other tie-breaks and random devices."""
    c, w = _small()
    assert _stable(run(c, w, seed=7)) == _stable(run(c, w, seed=7))
    assert _stable(run(c, w, seed=7)) != _stable(run(c, w, seed=8))


def test_synthetic_workload_is_a_function_of_its_seed() -> None:
    assert synthetic(jobs=200, seed=1, cluster_gpus=512) == \
        synthetic(jobs=200, seed=1, cluster_gpus=512)
    assert synthetic(jobs=200, seed=1, cluster_gpus=512) != \
        synthetic(jobs=200, seed=2, cluster_gpus=512)


def test_changing_the_extenders_scoring_changes_topology_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Invert the prioritize formula (best sets score lowest): the topology run must
    get worse sets; count, which does not call the extender, must not change. (Without
    delay scheduling, which would hide the scores: a pod waiting for its best set passes
    only where it gets it.)"""
    c, w = _small()
    before = by_policy(run(c, w, "count", "topology", best_set_patience_s=0.0))
    original = extender.prioritize.score

    def inverted(plan, best_ring, best_pair):  # type: ignore[no-untyped-def]
        return 10 - original(plan, best_ring, best_pair)

    monkeypatch.setattr(extender.prioritize, "score", inverted)
    after = by_policy(run(c, w, "count", "topology", best_set_patience_s=0.0))
    assert after["count"].as_json() == before["count"].as_json()
    b, a = before["topology"].overall, after["topology"].overall
    assert a.best_set_share is not None and b.best_set_share is not None
    assert a.best_set_share < b.best_set_share


def test_the_device_plugins_answer_is_what_the_pod_gets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Make GetPreferredAllocation ignore the assigned set (answer from the allocator
    alone, over everything available): the simulation sees other sets than the
    extender's and reconciles them."""
    c, w = _small()
    original = plugin.resources.TopologyResourceManager.preferred

    def lowest(self, available, must_include, size):  # type: ignore[no-untyped-def]
        got = original(self, available, must_include, size)
        order = sorted(available, key=self.index_of)
        return type(got)(devices=tuple(order[:size]), source="fallback")

    monkeypatch.setattr(plugin.resources.TopologyResourceManager, "preferred", lowest)
    r = run(c, w, "topology").runs[0]
    assert r.plugin_overrides > 0


def test_extender_weight_is_the_manifests() -> None:
    docs = yaml.safe_load((ROOT / "manifests" / "scheduler-config.yaml").read_text())
    config = yaml.safe_load(docs["data"]["config.yaml"])
    assert config["extenders"][0]["weight"] == EXTENDER_WEIGHT
    assert config["percentageOfNodesToScore"] == 100


def test_topology_runs_with_the_extenders_default_patience(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --best-set-patience the simulation uses the extender's default: the same
    as naming it; changing the extender's default changes the simulation."""
    c = cluster(nodes("dgx1-v100", 1, used=(2, 4, 5, 6)))
    w = jobs((0, 2, 100), (1, 2, 50))

    def second_wait(**settings: object) -> float:
        r = run(c, w, "topology", **settings).runs[0]
        return next(x for x in r.records if x.job_id == "j1").wait_s

    assert extender.config.DEFAULT_BEST_SET_PATIENCE_S >= 100  # long enough to wait here
    assert second_wait() == second_wait(
        best_set_patience_s=extender.config.DEFAULT_BEST_SET_PATIENCE_S) == 99
    monkeypatch.setattr(extender.config, "DEFAULT_BEST_SET_PATIENCE_S", 0.0)
    assert second_wait() == 0
