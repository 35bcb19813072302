"""Allocator cost per request, cold and memoized, against NVIDIA's best-effort policy.

    python benchmarks/bench_allocator.py [--requests 40] [--seed 1] [--quick]

For every size k on the 8-GPU presets and on the 16-GPU presets, random free masks
(each holding at least k GPUs) are drawn. In the same run and on the same requests:

* cold: a fresh memo (the per-topology subset tables are built once beforehand and
  their one-off build time is reported on its own line);
* memoized: the same request again (the answer comes from the memo);
* best-effort: topology.besteffort, NVIDIA's best-effort policy reimplemented from its
  published description. It enumerates every partition of the free GPUs; requests
  whose partition count is over --be-limit are not run (the table says how many).

Quality: for every request where best-effort ran, the weakest ring link of our set is
compared with that of best-effort's set; the table counts requests where ours is better,
equal, worse (worse must be 0: the allocator maximizes the ring bottleneck exactly).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology.allocate import Allocation, Allocator, indices_of
from topology.besteffort import best_effort
from topology.presets import preset

EIGHT = ["dgx1-v100", "dgx-a100", "hgx-h100", "pcie-8gpu-nvlink-pairs", "pcie-8gpu-sys"]
SIXTEEN = ["nvswitch-16gpu", "pcie-16gpu-tree"]


def partition_count(m: int, k: int) -> int:
    """Partitions of m GPUs (padded to a multiple of k) into sets of k."""
    m += (-m) % k
    groups = m // k
    return math.factorial(m) // (math.factorial(k) ** groups * math.factorial(groups))


def ring_rank(alloc: Allocator, devices: tuple[int, ...]) -> int:
    """Ring bottleneck of a set, read from the allocator's subset table."""
    return int(alloc.tables.ring[sum(1 << i for i in devices)])


def random_free(rng: random.Random, n: int, k: int) -> int:
    count = rng.randint(k, n)
    return sum(1 << i for i in rng.sample(range(n), count))


def bench(name: str, requests: int, rng: random.Random, be_limit: int) -> list[str]:
    t = preset(name)
    alloc = Allocator(t)
    start = time.perf_counter()
    _ = alloc.tables
    build_ms = (time.perf_counter() - start) * 1e3
    rows = [f"| {name} | tables (once per fingerprint) | {build_ms:.1f} ms | | | | | |"]
    for k in range(1, t.size + 1):
        cold, memo, be_times = [], [], []
        better = equal = worse = 0
        skipped = 0
        for _ in range(requests):
            free = random_free(rng, t.size, k)
            alloc._memo.clear()
            s = time.perf_counter()
            ours = alloc.best(k, free)
            cold.append(time.perf_counter() - s)
            reps = 200
            s = time.perf_counter()
            for _ in range(reps):
                alloc.best(k, free)
            memo.append((time.perf_counter() - s) / reps)
            assert isinstance(ours, Allocation)
            free_list = list(indices_of(free))
            if partition_count(len(free_list), k) > be_limit:
                skipped += 1
                continue
            s = time.perf_counter()
            theirs = best_effort(t, k, free_list)
            be_times.append(time.perf_counter() - s)
            a, b = ring_rank(alloc, ours.devices), ring_rank(alloc, theirs)
            better += a > b
            equal += a == b
            worse += a < b
        cold_us = [x * 1e6 for x in cold]
        memo_us = statistics.mean(memo) * 1e6
        if be_times:
            be_ms = statistics.mean(be_times) * 1e3
            ratio = f"{statistics.mean(be_times) / statistics.mean(cold):.0f}x"
            be_text = f"{be_ms:.2f} ms (max {max(be_times) * 1e3:.1f})"
        else:
            ratio, be_text = "-", "not run"
        if skipped:
            be_text += f"; {skipped} not run (> {be_limit:,} partitions)"
        rows.append(
            f"| {name} | k={k} | {statistics.mean(cold_us):.0f} us "
            f"(max {max(cold_us):.0f}) | {memo_us:.2f} us | {be_text} | {ratio} "
            f"| {better}/{equal}/{worse} | {len(cold)} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=40, help="random requests per (topology, k)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--be-limit", type=int, default=300_000,
                   help="skip best-effort calls with more partitions than this")
    p.add_argument("--quick", action="store_true", help="a few requests, for a smoke run")
    args = p.parse_args(argv)
    requests = 3 if args.quick else args.requests
    rng = random.Random(args.seed)
    print("| topology | request | ours, cold | ours, memoized | best-effort | speed-up (cold) "
          "| ring better/equal/worse | requests |")
    print("|---|---|---|---|---|---|---|---|")
    worse_total = 0
    for name in EIGHT + SIXTEEN:
        for row in bench(name, requests, rng, args.be_limit):
            print(row, flush=True)
            cells = row.split("|")
            if "/" in cells[7]:
                worse_total += int(cells[7].strip().split("/")[2])
    print(f"\nrequests where our ring is worse than best-effort's: {worse_total}")
    return 1 if worse_total else 0


if __name__ == "__main__":
    sys.exit(main())
