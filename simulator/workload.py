"""Jobs to replay: a trace CSV, or a seeded synthetic workload shaped like Philly.

Trace format (one job per row, extra columns ignored)::

    job_id,submit_s,num_gpus,duration_s
    philly-0,0,1,1389243

``submit_s`` and ``duration_s`` are seconds (>= 0, decimals allowed); ``num_gpus`` is a
whole number >= 1. A bad row is a :class:`WorkloadError` naming the line and the field.

The synthetic workload follows the figures published with the public Philly subset
(``../shared/traces/philly_genpw15k.SOURCE.md``; the Microsoft Philly trace of Jeon et
al., "Analysis of Large-Scale Multi-Tenant GPU Clusters for DNN Training Workloads",
USENIX ATC 2019, as redistributed by DIR-LAB/Gen-Parallel-Workloads):

* job sizes: the subset's ``num_gpus`` table (1: 11,963, 2: 375, 4: 905, 8: 1,477,
  16: 243, 28: 1, 32: 33, 48: 3 of 15,000);
* durations: per GPU-count bucket (1, 2-4, 5-8, >8: the buckets of the run-time CDFs
  in Jeon et al., Figure 2), the subset's own quantiles (:data:`DURATION_QUANTILES`,
  interpolated log-linearly between them);
* arrivals: the subset's busy period (days 48-57.6: 14,237 jobs in 9.51 days, 1,497
  jobs a day), scaled by the cluster's GPUs over 512 (so 64 DGX-1 nodes see that rate);
  28.7% of the subset's inter-arrival gaps are 0 (sweeps submitted at once), so each job
  arrives with the one before it with that probability, else after an exponential gap.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "ARRIVALS_PER_DAY_PER_512_GPUS",
    "DURATION_QUANTILES",
    "SIZE_MIX",
    "TRACE_COLUMNS",
    "Job",
    "Workload",
    "WorkloadError",
    "read_trace",
    "synthetic",
]

TRACE_COLUMNS: Final = ("job_id", "submit_s", "num_gpus", "duration_s")

#: num_gpus -> jobs, of the 15,000-job Philly subset (its SOURCE.md).
SIZE_MIX: Final[tuple[tuple[int, int], ...]] = (
    (1, 11_963), (2, 375), (4, 905), (8, 1_477), (16, 243), (28, 1), (32, 33), (48, 3),
)
#: Percentiles at which :data:`DURATION_QUANTILES` are given.
PERCENTILES: Final = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 100)
#: Duration quantiles in seconds per GPU-count bucket (lowest size of the bucket ->
#: values at :data:`PERCENTILES`), from ``philly_genpw15k.csv``.
DURATION_QUANTILES: Final[tuple[tuple[int, tuple[int, ...]], ...]] = (
    (1, (1, 23, 38, 51, 68, 80, 213, 730, 2_388, 3_684, 33_255, 184_805, 1_762_900,
         5_199_751)),
    (2, (2, 12, 14, 22, 45, 197, 628, 4_465, 14_408, 43_977, 220_365, 440_844, 1_662_248,
         5_150_116)),
    (5, (5, 20, 27, 53, 152, 518, 2_091, 5_035, 18_188, 71_257, 244_790, 582_223,
         2_107_549, 4_721_782)),
    (9, (7, 39, 52, 68, 355, 1_411, 1_562, 1_937, 6_687, 14_407, 76_307, 237_670, 505_681,
         890_532)),
)
#: Jobs a day in the subset's busy period, for a cluster of 512 GPUs.
ARRIVALS_PER_DAY_PER_512_GPUS: Final = 1_497.0
#: Share of the subset's inter-arrival gaps that are 0.
SAME_SECOND_SHARE: Final = 0.287


class WorkloadError(ValueError):
    """A trace that cannot be read; the message names the file, the line and the field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One job: ``num_gpus`` GPUs for ``duration_s`` seconds (on its best set)."""

    job_id: str
    submit_s: float
    num_gpus: int
    duration_s: float
    #: Line of the trace it came from (0 for synthetic jobs).
    line: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    jobs: tuple[Job, ...]
    #: Where it came from, for reports: a trace path or "synthetic (seed 0)".
    source: str


def _number(text: str, where: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WorkloadError(f"{where}: field {field}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise WorkloadError(f"{where}: field {field}: {text!r} is not a finite number")
    if value < 0:
        raise WorkloadError(f"{where}: field {field}: {text!r} is negative")
    return value


def _gpus(text: str, where: str) -> int:
    s = text.strip()
    if not s.isdigit():
        raise WorkloadError(
            f"{where}: field num_gpus: {text!r} is not a whole number of GPUs (>= 1)")
    n = int(s)
    if n < 1:
        raise WorkloadError(f"{where}: field num_gpus: {text!r}: a job needs at least 1 GPU")
    return n


def parse_trace(rows: Iterable[Sequence[str]], *, name: str = "trace") -> Workload:
    """Read trace rows (the header first), as :func:`read_trace` does for a file."""
    it = iter(rows)
    header = next(it, None)
    if header is None:
        raise WorkloadError(f"{name}: line 1: empty file; expected the header "
                            f"{','.join(TRACE_COLUMNS)}")
    cols = [h.strip() for h in header]
    missing = [c for c in TRACE_COLUMNS if c not in cols]
    if missing:
        raise WorkloadError(
            f"{name}: line 1 (header): missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; expected {','.join(TRACE_COLUMNS)}")
    pos = {c: cols.index(c) for c in TRACE_COLUMNS}
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    line = 1
    for line, row in enumerate(it, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        where = f"{name}: line {line}"
        if len(row) < len(cols):
            absent = [c for c in TRACE_COLUMNS if pos[c] >= len(row)]
            raise WorkloadError(f"{where}: field {absent[0]}: missing (the row has "
                                f"{len(row)} of {len(cols)} columns)")
        job_id = row[pos["job_id"]].strip()
        if not job_id:
            raise WorkloadError(f"{where}: field job_id: empty")
        if job_id in seen:
            raise WorkloadError(
                f"{where}: field job_id: {job_id!r} is already used on line {seen[job_id]}")
        seen[job_id] = line
        jobs.append(Job(
            job_id=job_id,
            submit_s=_number(row[pos["submit_s"]], where, "submit_s"),
            num_gpus=_gpus(row[pos["num_gpus"]], where),
            duration_s=_number(row[pos["duration_s"]], where, "duration_s"),
            line=line,
        ))
    if not jobs:
        raise WorkloadError(f"{name}: line {line}: no jobs after the header")
    jobs.sort(key=lambda j: j.submit_s)  # stable: file order among equal times
    return Workload(jobs=tuple(jobs), source=name)


def read_trace(path: str | Path) -> Workload:
    """Read a trace CSV (see the module docstring)."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as f:
            return parse_trace(csv.reader(f), name=str(path))
    except OSError as e:
        raise WorkloadError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise WorkloadError(f"{path}: not UTF-8 text: {e.reason}") from None
    except csv.Error as e:
        raise WorkloadError(f"{path}: not CSV: {e}") from None


def _duration(rng: random.Random, size: int) -> float:
    buckets = [low for low, _ in DURATION_QUANTILES]
    _, q = DURATION_QUANTILES[bisect.bisect_right(buckets, size) - 1]
    u = rng.random() * 100.0
    i = min(bisect.bisect_right(PERCENTILES, u) - 1, len(PERCENTILES) - 2)
    frac = (u - PERCENTILES[i]) / (PERCENTILES[i + 1] - PERCENTILES[i])
    lo, hi = math.log(q[i]), math.log(q[i + 1])
    return float(round(math.exp(lo + frac * (hi - lo))))


def synthetic(
    *, jobs: int, seed: int, cluster_gpus: int, arrivals_per_day: float | None = None
) -> Workload:
    """A seeded workload following the Philly subset's figures (module docstring).

    Sizes larger than the whole cluster are left out of the mix (the rest keep their
    proportions). ``arrivals_per_day`` defaults to the busy-period rate scaled to the
    cluster.

    >>> w = synthetic(jobs=1000, seed=1, cluster_gpus=512)
    >>> len(w.jobs), w.jobs[0].submit_s, sum(j.num_gpus == 1 for j in w.jobs) > 700
    (1000, 0.0, True)
    """
    if jobs < 1:
        raise WorkloadError(f"synthetic workload: --jobs {jobs}: at least 1 job is needed")
    rng = random.Random(f"synthetic:{seed}")
    mix = [(k, n) for k, n in SIZE_MIX if k <= cluster_gpus]
    sizes = [k for k, _ in mix]
    weights = [n for _, n in mix]
    rate = arrivals_per_day if arrivals_per_day is not None else (
        ARRIVALS_PER_DAY_PER_512_GPUS * cluster_gpus / 512)
    if rate <= 0:
        raise WorkloadError(f"synthetic workload: arrival rate {rate:g}/day must be > 0")
    # Mean gap between distinct arrival instants, so that the job rate is `rate`.
    mean_gap = 86_400.0 / rate / (1.0 - SAME_SECOND_SHARE)
    t = 0.0
    out: list[Job] = []
    for i in range(jobs):
        if i and rng.random() >= SAME_SECOND_SHARE:
            t += round(rng.expovariate(1.0 / mean_gap))
        size = rng.choices(sizes, weights)[0]
        out.append(Job(job_id=f"synthetic-{i}", submit_s=t, num_gpus=size,
                       duration_s=max(1.0, _duration(rng, size))))
    return Workload(jobs=tuple(out), source=f"synthetic (seed {seed}, {jobs} jobs)")
