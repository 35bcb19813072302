"""Run several policies on one workload and cluster, and measure each."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from simulator.cluster import Cluster
from simulator.engine import Run, Settings, simulate
from simulator.metrics import PolicyMetrics, measure
from simulator.policies import Policy
from simulator.workload import Workload

__all__ = ["Comparison", "compare"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    cluster: Cluster
    workload: Workload
    settings: Settings
    runs: tuple[Run, ...]
    metrics: tuple[PolicyMetrics, ...]

    def as_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "workload": {"source": self.workload.source, "jobs": len(self.workload.jobs)},
            "cluster": {"source": self.cluster.source, "nodes": len(self.cluster.nodes),
                        "gpus": self.cluster.gpus, "description": self.cluster.describe()},
            "settings": {**{k: v for k, v in asdict(s).items() if k != "comm"},
                         "comm_share": [s.comm.low, s.comm.high],
                         "best_set_patience_s": _seconds(s.best_set_patience_s)},
            "policies": {m.policy: {**m.as_json(),
                                    "rebinds": r.rebinds,
                                    "passed_over": r.passed_over,
                                    "best_set_patience_s": _seconds(r.best_set_patience_s),
                                    "plugin_overrides": r.plugin_overrides,
                                    "scheduling_cycles": r.cycles,
                                    "wall_s": round(r.wall_s, 3),
                                    "unrunnable_jobs": [
                                        {"job_id": j, "reason": why}
                                        for j, why in (*r.unrunnable, *r.never_ran)]}
                         for m, r in zip(self.metrics, self.runs, strict=True)},
        }


def _seconds(value: float | None) -> float | str | None:
    """JSON has no infinity: an unlimited patience is written ``"inf"``."""
    return "inf" if value == math.inf else value


def compare(
    cluster: Cluster, workload: Workload, policies: Sequence[Policy], settings: Settings,
    *, progress: Callable[[int], None] | None = None,
) -> Comparison:
    """Each policy in turn on the same workload, cluster and seed."""
    jobs = workload.jobs
    window = (jobs[0].submit_s, jobs[-1].submit_s)
    runs = tuple(simulate(cluster, workload, p, settings, progress=progress) for p in policies)
    return Comparison(cluster=cluster, workload=workload, settings=settings, runs=runs,
                      metrics=tuple(measure(r, window) for r in runs))
