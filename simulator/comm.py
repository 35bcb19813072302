"""How a job's GPU set changes its run time (docs/simulator.md, "Communication model").

A data-parallel step is compute, then a ring all-reduce of the gradients. Let ``c`` be
the share of a step spent communicating *on the best set* an empty node of that type
offers (ring bandwidth ``B_best``). On a set whose ring bottleneck gives ``B`` the
all-reduce takes ``B_best / B`` times as long, so the job runs::

    slowdown = (1 - c) + c * B_best / B          (1 on a best set; 1-GPU jobs: c = 0)

and its duration is the trace's duration times that (the trace is read as run on a best
set). ``c`` is drawn per multi-GPU job, uniformly in ``[low, high]``, from the run's seed
and the job's id, so every policy sees the same ``c`` for the same job. The default
``[0.05, 0.25]`` is anchored on two measurements: Blink (Wang et al., MLSys 2020) cut
end-to-end training time of image classifiers on fragmented DGX-1 allocations by up to
40% with all-reduce up to 8x faster than NCCL's rings, which puts ``c`` near 0.1 on a
best set for those models; PipeDream (Narayanan et al., SOSP 2019) measured
communication at up to 90% of a step for VGG-16 and GNMT over 32 GPUs across servers,
far above what one NVLink node sees. ``--comm-share LOW,HIGH`` changes the range.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_SHARE", "CommModel"]

DEFAULT_SHARE: Final = (0.05, 0.25)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommModel:
    low: float = DEFAULT_SHARE[0]
    high: float = DEFAULT_SHARE[1]

    def __post_init__(self) -> None:
        if not 0.0 <= self.low <= self.high < 1.0:
            raise ValueError(
                f"communication share {self.low:g},{self.high:g}: expected 0 <= low <= high < 1")

    def share(self, seed: int, job_id: str, num_gpus: int) -> float:
        """The job's communication share on a best set (0 for a 1-GPU job).

        >>> m = CommModel()
        >>> m.share(0, "a", 4) == m.share(0, "a", 4), m.share(0, "a", 1)
        (True, 0.0)
        """
        if num_gpus < 2:
            return 0.0
        return random.Random(f"comm:{seed}:{job_id}").uniform(self.low, self.high)

    @staticmethod
    def slowdown(share: float, ratio: float) -> float:
        """Run time on a set with ``ratio`` = B / B_best, relative to a best set.

        >>> CommModel.slowdown(0.2, 1.0), CommModel.slowdown(0.2, 0.25)
        (1.0, 1.6)
        """
        return (1.0 - share) + share / ratio if ratio > 0 else float("inf")
