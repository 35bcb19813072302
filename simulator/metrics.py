"""The figures a run is judged by, overall and per job size.

* ``best_set_share``: of the multi-GPU jobs, the share whose set has the best weakest
  ring link an empty node of that type offers for that many GPUs (every pod of a gang).
* ``mean_ring_bandwidth_ratio``: the mean over multi-GPU jobs of the set's ring
  bandwidth over that best ring's.
* queueing delay (start - submit): mean, p50, p99 over the jobs that ran.
* ``gpu_utilisation``: the mean share of the GPUs (those the jobs could use) held by
  jobs, from the first submission to the last (the window in which every policy faces
  the same arrivals); ``useful_utilisation`` counts each job's GPU-time divided by its
  slowdown, so GPU-time lost to slow rings does not count as use.
* ``fragmentation``: of all the time jobs waited, the share during which the cluster as
  a whole had at least as many GPUs free (by count) as the job asked for.
* ``failed_binds`` (binds the extender refused on fresh state; retried).
* JCT (end - submit) mean and p99, with run times stretched by the communication model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator.engine import JobRecord, Run

__all__ = ["Metrics", "PolicyMetrics", "fragmented_wait", "measure"]

_Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    jobs: int
    multi_gpu_jobs: int
    best_set_share: float | None
    #: Diagnostics: the share of multi-GPU jobs for which some node that fit still had
    #: a best set at their scheduling cycle, and the best-set share among those.
    best_set_offered_share: float | None
    best_set_share_when_offered: float | None
    mean_ring_bandwidth_ratio: float | None
    mean_queueing_delay_s: float | None
    p50_queueing_delay_s: float | None
    p99_queueing_delay_s: float | None
    fragmentation: float | None
    mean_jct_s: float | None
    p99_jct_s: float | None
    mean_slowdown: float | None
    #: Overall only (None per size).
    gpu_utilisation: float | None = None
    useful_utilisation: float | None = None
    makespan_s: float | None = None
    failed_binds: int | None = None
    unrunnable: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyMetrics:
    policy: str
    overall: Metrics
    by_size: Mapping[int, Metrics]

    def as_json(self) -> dict[str, Any]:
        return {**self.overall.as_json(),
                "by_size": {str(k): m.as_json() for k, m in sorted(self.by_size.items())}}


def _timeline(run: Run) -> tuple[_Floats, _Floats]:
    t = np.array([p[0] for p in run.timeline], dtype=np.float64)
    held = np.array([p[1] for p in run.timeline], dtype=np.float64)
    return t, held


def fragmented_wait(
    times: _Floats, free: _Floats, need: int, start: _Floats, end: _Floats
) -> _Floats:
    """Per interval ``[start, end)``: how long ``free(t) >= need`` held in it.

    ``free`` is a step function: ``free[i]`` from ``times[i]`` to ``times[i + 1]``.

    >>> t = np.array([0.0, 10.0, 20.0]); f = np.array([0.0, 4.0, 0.0])
    >>> fragmented_wait(t, f, 4, np.array([5.0, 0.0]), np.array([15.0, 30.0])).tolist()
    [5.0, 10.0]
    """
    if times.size == 0:
        return np.zeros_like(start)
    ok = (free >= need).astype(np.float64)
    seg = np.diff(times, append=times[-1])
    cum = np.concatenate(([0.0], np.cumsum(ok * seg)))

    def integral(x: _Floats) -> _Floats:
        i = np.clip(np.searchsorted(times, x, side="right") - 1, 0, times.size - 1)
        return np.where(x < times[0], 0.0, cum[i] + ok[i] * (x - times[i]))

    return np.maximum(0.0, integral(end) - integral(start))


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(np.asarray(values, dtype=np.float64))) if values else None


def _metrics(records: Sequence[JobRecord], frag: Mapping[str, float]) -> Metrics:
    multi = [r for r in records if r.best_set is not None]
    offered = [r for r in multi if r.best_offered]
    waits = [r.wait_s for r in records]
    jcts = [r.jct_s for r in records]
    total_wait = sum(waits)
    return Metrics(
        jobs=len(records),
        multi_gpu_jobs=len(multi),
        best_set_share=(sum(1 for r in multi if r.best_set) / len(multi)) if multi else None,
        best_set_offered_share=(len(offered) / len(multi)) if multi else None,
        best_set_share_when_offered=(sum(1 for r in offered if r.best_set) / len(offered))
        if offered else None,
        mean_ring_bandwidth_ratio=_mean([r.ring_ratio for r in multi
                                         if r.ring_ratio is not None]),
        mean_queueing_delay_s=_mean(waits),
        p50_queueing_delay_s=_pct(waits, 50),
        p99_queueing_delay_s=_pct(waits, 99),
        fragmentation=(sum(frag[r.job_id] for r in records) / total_wait)
        if total_wait > 0 else (0.0 if records else None),
        mean_jct_s=_mean(jcts),
        p99_jct_s=_pct(jcts, 99),
        mean_slowdown=_mean([r.slowdown for r in records]),
    )


def _fragmentation(run: Run) -> dict[str, float]:
    times, held = _timeline(run)
    free = run.capacity - held
    out: dict[str, float] = {}
    by_size: dict[int, list[JobRecord]] = {}
    for r in run.records:
        by_size.setdefault(r.num_gpus, []).append(r)
    for k, recs in by_size.items():
        start = np.array([r.submit_s for r in recs], dtype=np.float64)
        end = np.array([r.start_s for r in recs], dtype=np.float64)
        for r, v in zip(recs, fragmented_wait(times, free, k, start, end), strict=True):
            out[r.job_id] = float(v)
    return out


def utilisation(run: Run, first_submit: float, last_submit: float) -> float | None:
    """Mean share of the GPUs held by jobs from the first to the last submission."""
    if run.capacity <= 0 or last_submit <= first_submit or not run.timeline:
        return None
    times, held = _timeline(run)
    t = np.clip(np.append(times, last_submit), first_submit, last_submit)
    busy = float(np.sum(held * np.diff(t)))
    return busy / (run.capacity * (last_submit - first_submit))


def useful_utilisation(run: Run, first_submit: float, last_submit: float) -> float | None:
    """Like :func:`utilisation`, counting each job's GPU-time divided by its slowdown:
    the GPU-time it would have needed on best sets (what the GPUs got done)."""
    span = last_submit - first_submit
    if run.capacity <= 0 or span <= 0:
        return None
    done = 0.0
    for r in run.records:
        overlap = min(r.end_s, last_submit) - max(r.start_s, first_submit)
        if overlap > 0:
            gpus = sum(len(p.devices) for p in r.placements)
            done += gpus * overlap / r.slowdown
    return done / (run.capacity * span)


def measure(run: Run, window: tuple[float, float]) -> PolicyMetrics:
    """Every figure of one run, overall and per job size (``num_gpus``); ``window`` is
    (first submission, last submission) of the workload."""
    frag = _fragmentation(run)
    records = run.records
    first, last = window
    overall = _metrics(records, frag)
    end = max((r.end_s for r in records), default=first)
    overall = Metrics(**{**asdict(overall),
                         "gpu_utilisation": utilisation(run, first, last),
                         "useful_utilisation": useful_utilisation(run, first, last),
                         "makespan_s": end - first,
                         "failed_binds": run.failed_binds,
                         "unrunnable": len(run.unrunnable) + len(run.never_ran)})
    sizes = sorted({r.num_gpus for r in records})
    by_size = {k: _metrics([r for r in records if r.num_gpus == k], frag) for k in sizes}
    return PolicyMetrics(policy=run.policy, overall=overall, by_size=by_size)


def sizes_of(runs: Iterable[PolicyMetrics]) -> list[int]:
    return sorted({k for m in runs for k in m.by_size})
