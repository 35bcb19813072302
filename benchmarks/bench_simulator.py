"""The simulator's comparison tables, its speed and its memory (not a timed test).

    .venv/bin/python benchmarks/bench_simulator.py [--out FILE.md] [--seed 0]

1. The full comparison (every metric, every policy) on two clusters, each replaying
   the Philly subset (``../shared/traces/philly_genpw15k.csv``; the synthetic workload
   when ``../shared`` is absent): 64 DGX-1 V100 nodes, and the mixed 64-node fleet of
   ``examples/mixed-cluster.yaml``. Extra rows, not among the four: pods that
   ask for their best link (``--min-link 2=NV2,nvlink --link-policy required``), and
   ``topology-binpack`` (the gputopo profile with ``MostAllocated`` on GPUs).
   Then the sweep of the extender's ``--best-set-patience`` (delay scheduling for the
   best set, ``extender.patience``): ``topology`` at 0, 5m, 10m, 30m, 1h, 2h, 4h (the
   default), 8h and no limit.
2. Speed: jobs per second of each policy on 64 and on 1,024 DGX-1 nodes, and the wall
   time of all four policies on 64 nodes, each in a fresh process whose peak resident
   memory is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extender.config import DEFAULT_BEST_SET_PATIENCE_S as DEFAULT_PATIENCE_S  # noqa: E402
from simulator.cli import add_simulate, run_simulate  # noqa: E402
from simulator.compare import Comparison  # noqa: E402
from simulator.report import markdown_table, size_table  # noqa: E402

TRACE = ROOT.parent / "shared" / "traces" / "philly_genpw15k.csv"
MIXED = ROOT / "examples" / "mixed-cluster.yaml"
FOUR = "count,binpack,local,topology"
#: The patience values of the sweep (``gputopo simulate --best-set-patience``).
PATIENCE = ("0", "5m", "10m", "30m", "1h", "2h", "4h", "8h", "inf")


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_simulate(sub)
    return p.parse_args(["simulate", "--no-progress", *argv])


def _workload_flags() -> list[str]:
    return ["--trace", str(TRACE)] if TRACE.is_file() else []


def comparison(argv: list[str]) -> Comparison:
    return run_simulate(_args([*_workload_flags(), *argv]))


def _peak_rss_kib() -> float:
    """This process's peak resident memory: VmHWM (reset by exec, unlike ru_maxrss,
    which a child inherits from the parent it was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _child(argv: list[str]) -> None:
    """Run one simulation; print its timing and peak memory as JSON."""
    started = time.perf_counter()
    result = comparison(argv)
    wall = time.perf_counter() - started
    print(json.dumps({
        "wall_s": wall, "peak_rss_mib": _peak_rss_kib() / 1024,
        "jobs": len(result.workload.jobs),
        "runs": {r.policy: r.wall_s for r in result.runs},
    }))


def timed(argv: list[str]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *argv], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def section(title: str, result: Comparison, note: str) -> str:
    return "\n".join([
        f"### {title}", "", note, "",
        f"`{result.workload.source}`: {len(result.workload.jobs)} jobs on "
        f"{result.cluster.describe()}.", "",
        markdown_table(result), "",
        "Per job size: best-set share of multi-GPU jobs / mean queueing delay.", "",
        size_table(result), "",
    ])


def sweep(title: str, cluster: list[str], seed: list[str]) -> str:
    """``topology`` at every patience of :data:`PATIENCE`: one row each."""
    rows: list[str] = []
    header: list[str] = []
    for p in PATIENCE:
        result = comparison([*cluster, *seed, "--policy", "topology",
                             "--best-set-patience", p])
        head, align, row = markdown_table(result).splitlines()
        header = [head.replace("| policy |", "| best-set patience |", 1) + " passed over |",
                  align + " ---: |"]
        run = result.runs[0]
        default = " (default)" if run.best_set_patience_s == DEFAULT_PATIENCE_S else ""
        label = "no limit" if p == "inf" else p
        rows.append(row.replace("| topology |", f"| {label}{default} |", 1)
                    + f" {run.passed_over} |")
    return "\n".join([
        f"### {title}: topology at each --best-set-patience", "",
        "`--policy topology --best-set-patience P`, plain pods; *passed over*: pods the "
        "extender's filter passed over at least once while they waited for their best "
        "set.", "", *header, *rows, ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the Markdown here")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        _child(args.child)
        return 0
    seed = ["--seed", args.seed]
    parts = [f"Machine: {platform.machine()}, {platform.python_implementation()} "
             f"{platform.python_version()}, seed {args.seed}.", ""]
    scenarios = [
        ("64 DGX-1 V100 nodes", ["--nodes", "64", "--node-topology", "dgx1-v100"]),
        ("Mixed 64-node fleet", ["--cluster-file", str(MIXED)]),
    ]
    for title, cluster in scenarios:
        print(f"running: {title}", file=sys.stderr)
        base = comparison([*cluster, *seed, "--policy", FOUR])
        parts.append(section(f"{title}: the four policies", base,
                             "Pods as users write them today: no annotation."))
        extra = comparison([*cluster, *seed, "--policy", "topology,topology-binpack",
                            "--min-link", "2=NV2,nvlink", "--link-policy", "required"])
        parts.append(section(
            f"{title}: pods that require NVLink", extra,
            "`--min-link 2=NV2,nvlink --link-policy required`: pairs ask for NV2, larger "
            "pods for an NVLink ring, as `manifests/examples/pod-4gpu-nvlink-required.yaml`"
            " does (on a DGX-1 that is the best set; on the mixed fleet it also keeps "
            "multi-GPU pods off the all-PCIe servers). count, binpack and local ignore "
            "the annotations: their rows above hold."))
        packed = comparison([*cluster, *seed, "--policy", "topology-binpack"])
        parts.append(section(f"{title}: topology with MostAllocated on GPUs", packed,
                             "`--policy topology-binpack`, plain pods."))
        print(f"running: {title}, the patience sweep", file=sys.stderr)
        parts.append(sweep(title, cluster, seed))
    print("running: speed", file=sys.stderr)
    rows = ["| nodes | policy | jobs | wall s | jobs/s | peak RSS MiB (process) |",
            "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for n in (64, 1024):
        for policy in FOUR.split(","):
            t = timed(["--nodes", str(n), "--policy", policy, *seed])
            wall = t["runs"][policy]
            rows.append(f"| {n} | {policy} | {t['jobs']} | {wall:.1f} | "
                        f"{t['jobs'] / wall:,.0f} | {t['peak_rss_mib']:.0f} |")
    all4 = timed(["--nodes", "64", "--policy", FOUR, *seed])
    parts += ["### Speed and memory", "",
              "Each row in a fresh process (simulation only: loading and measuring "
              "excluded from jobs/s).", "", *rows, "",
              f"All four policies on 64 nodes, one process, loading, simulating and "
              f"measuring: **{all4['wall_s']:.1f} s**, peak RSS {all4['peak_rss_mib']:.0f} "
              "MiB.", ""]
    text = "\n".join(parts)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
