"""Small clusters and workloads whose results are worked out by hand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from simulator.cluster import Cluster, Node
from simulator.comm import CommModel
from simulator.compare import Comparison, compare
from simulator.engine import Settings
from simulator.metrics import PolicyMetrics
from simulator.policies import POLICIES
from simulator.workload import Job, Workload
from topology.presets import preset

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
PHILLY = SHARED / "traces" / "philly_genpw15k.csv"

#: Every multi-GPU job spends exactly a fifth of a step communicating on a best set.
FIXED_COMM = CommModel(low=0.2, high=0.2)


def nodes(kind: str, count: int, *, used: Sequence[int] = ()) -> list[Node]:
    t = preset(kind)
    return [Node(name=f"{kind}-{i}", topology=t, kind=kind, used=tuple(used))
            for i in range(count)]


def cluster(*groups: list[Node]) -> Cluster:
    return Cluster(nodes=tuple(n for g in groups for n in g), source="test")


def jobs(*rows: tuple[float, int, float]) -> Workload:
    """(submit_s, num_gpus, duration_s) per job, ids j0, j1, ..."""
    return Workload(jobs=tuple(Job(job_id=f"j{i}", submit_s=s, num_gpus=k, duration_s=d)
                               for i, (s, k, d) in enumerate(rows)), source="test")


def run(c: Cluster, w: Workload, *policies: str, **settings: object) -> Comparison:
    s = Settings(comm=FIXED_COMM, **settings)  # type: ignore[arg-type]
    return compare(c, w, [POLICIES[p] for p in policies or tuple(POLICIES)], s)


def by_policy(result: Comparison) -> dict[str, PolicyMetrics]:
    return {m.policy: m for m in result.metrics}
