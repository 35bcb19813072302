"""``gputopo``: the topology tools of ``topology.cli`` plus ``gputopo simulate``.

The console script points here so that topology/ stays free of the simulator: every
other subcommand is ``topology.cli``'s own, unchanged.

Exit codes of ``simulate``: 0 done; 2 bad input (one message on stderr naming the file,
line and field, or the flag).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from simulator.cluster import (
    DEFAULT_NODES,
    DEFAULT_PRESET,
    Cluster,
    ClusterError,
    from_file,
    from_presets,
)
from simulator.comm import DEFAULT_SHARE, CommModel
from simulator.compare import Comparison, compare
from simulator.decisions import RequestError, gpu_request, parse_duration
from simulator.engine import Settings
from simulator.policies import EXTRA_POLICIES, POLICIES, POLICY_NAMES, Policy
from simulator.report import table, write_html
from simulator.workload import Workload, WorkloadError, read_trace, synthetic
from topology import cli as topology_cli

__all__ = ["add_simulate", "main", "run_simulate"]

EXIT_OK = 0
EXIT_BAD_INPUT = 2
_SYNTHETIC_JOBS = 15_000


class _BadInput(Exception):
    pass


def add_simulate(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``simulate`` on ``gputopo``'s subcommands."""
    sp = sub.add_parser(
        "simulate", help="replay a job trace on a simulated cluster under each policy",
        description="Replay jobs (a trace CSV, or a seeded synthetic workload shaped like "
        "the Philly trace) on a simulated cluster under count, binpack, local and "
        "topology placement, and compare best-set share, ring bandwidth, queueing, "
        "utilisation and completion times. See docs/simulator.md.")
    w = sp.add_argument_group("workload")
    w.add_argument("--trace", metavar="CSV",
                   help="job_id,submit_s,num_gpus,duration_s (default: synthetic)")
    w.add_argument("--jobs", type=int, default=_SYNTHETIC_JOBS,
                   help=f"synthetic jobs (default {_SYNTHETIC_JOBS})")
    w.add_argument("--arrivals-per-day", type=float,
                   help="synthetic arrival rate (default: the Philly busy period's, "
                   "scaled to the cluster's GPUs)")
    c = sp.add_argument_group("cluster")
    c.add_argument("--nodes", type=int, help=f"number of nodes (default {DEFAULT_NODES})")
    c.add_argument("--node-topology", metavar="PRESET[:COUNT],...",
                   help=f"node kinds, e.g. dgx-a100:40,pcie-8gpu-sys:24 "
                   f"(default {DEFAULT_PRESET})")
    c.add_argument("--cluster-file", metavar="FILE", help="the extender's cluster file")
    sp.add_argument("--policy", default=",".join(POLICY_NAMES),
                    help=f"comma-separated: {', '.join([*POLICY_NAMES, *EXTRA_POLICIES])} "
                    "(default: the first four)")
    sp.add_argument("--seed", type=int, default=0, help="makes a run exactly repeatable")
    sp.add_argument("--json", action="store_true", help="print the results as JSON")
    sp.add_argument("--report", metavar="DIR", help="write DIR/index.html with plots")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    m = sp.add_argument_group("model")
    m.add_argument("--bind-lag", type=int, default=3,
                   help="a bind lands 0..N scheduling cycles later (default 3)")
    m.add_argument("--comm-share", default=f"{DEFAULT_SHARE[0]:g},{DEFAULT_SHARE[1]:g}",
                   metavar="LOW,HIGH", help="per-job communication share on a best set")
    m.add_argument("--min-link", metavar="[SIZE=]LINK,...",
                   help="gputopo.io/min-link on multi-GPU pods, e.g. nvlink or "
                   "2=NV2,nvlink (per pod size; an entry without SIZE for the others)")
    m.add_argument("--link-policy", choices=["required", "preferred"],
                   help="gputopo.io/link-policy (default preferred)")
    m.add_argument("--best-set-patience", metavar="DURATION",
                   help="the extender's --best-set-patience for topology: seconds, e.g. "
                   "10m, 1h, 0 (no wait) or inf (no limit); default: the extender's")
    m.add_argument("--cpu-per-gpu", type=float, default=0.0,
                   help="CPU cores each pod requests per GPU (default 0: none)")
    m.add_argument("--memory-gib-per-gpu", type=float, default=0.0,
                   help="memory (GiB) each pod requests per GPU (default 0: none)")
    sp.set_defaults(func=_cmd)


def _min_links(text: str | None) -> tuple[str | None, tuple[tuple[int, str], ...]]:
    if text is None:
        return None, ()
    default: str | None = None
    by_size: list[tuple[int, str]] = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        size, sep, link = item.partition("=")
        if not sep:
            default = item
            continue
        if not size.strip().isdigit() or int(size) < 2:
            raise _BadInput(f"--min-link {item}: SIZE must be a whole number >= 2")
        by_size.append((int(size), link.strip()))
    return default, tuple(by_size)


def _settings(args: argparse.Namespace) -> Settings:
    try:
        low, high = (float(x) for x in args.comm_share.split(","))
        comm = CommModel(low=low, high=high)
    except ValueError as e:
        raise _BadInput(f"--comm-share {args.comm_share}: {e}") from None
    if args.bind_lag < 0:
        raise _BadInput(f"--bind-lag {args.bind_lag}: must be >= 0")
    if args.cpu_per_gpu < 0 or args.memory_gib_per_gpu < 0:
        raise _BadInput("--cpu-per-gpu and --memory-gib-per-gpu must be >= 0")
    default, by_size = _min_links(args.min_link)
    if args.link_policy == "required" and default is None and not by_size:
        raise _BadInput("--link-policy required needs --min-link")
    for link in [default, *(link for _, link in by_size)]:
        if link is not None:
            try:
                gpu_request(2, link, args.link_policy)
            except RequestError as e:
                raise _BadInput(f"--min-link: {e}") from None
    return Settings(seed=args.seed, bind_lag=args.bind_lag, comm=comm,
                    cpu_per_gpu=args.cpu_per_gpu, memory_gib_per_gpu=args.memory_gib_per_gpu,
                    min_link=default, min_link_by_size=by_size, link_policy=args.link_policy,
                    best_set_patience_s=_patience(args.best_set_patience))


def _patience(text: str | None) -> float | None:
    if text is None:
        return None
    if text.strip().lower() == "inf":
        return math.inf
    try:
        return parse_duration(text)
    except ValueError as e:
        raise _BadInput(f"--best-set-patience: {e}, or inf") from None


def _cluster(args: argparse.Namespace) -> Cluster:
    if args.cluster_file is not None:
        if args.node_topology is not None or args.nodes is not None:
            raise _BadInput("--cluster-file names every node; leave out --nodes and "
                            "--node-topology")
        return from_file(args.cluster_file)
    spec = args.node_topology or DEFAULT_PRESET
    return from_presets(spec, args.nodes if args.nodes is not None or args.node_topology
                        else DEFAULT_NODES)


def _workload(args: argparse.Namespace, cluster: Cluster) -> Workload:
    if args.trace is None:
        return synthetic(jobs=args.jobs, seed=args.seed, cluster_gpus=cluster.gpus,
                         arrivals_per_day=args.arrivals_per_day)
    w = read_trace(args.trace)
    for j in w.jobs:
        if j.num_gpus > cluster.gpus:
            raise _BadInput(
                f"{w.source}: line {j.line}: field num_gpus: job {j.job_id} asks for "
                f"{j.num_gpus} GPUs, more than the whole cluster's {cluster.gpus}")
    return w


def _policies(text: str) -> list[Policy]:
    known = {**POLICIES, **EXTRA_POLICIES}
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise _BadInput(f"--policy {text}: unknown {', '.join(bad) or 'empty list'}; "
                        f"known: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def run_simulate(args: argparse.Namespace, *, err: TextIO = sys.stderr) -> Comparison:
    """Build everything from the parsed flags and run (raises on bad input)."""
    policies = _policies(args.policy)
    settings = _settings(args)
    cluster = _cluster(args)
    workload = _workload(args, cluster)
    from tqdm import tqdm

    bar = tqdm(total=len(workload.jobs) * len(policies), unit="job", file=err,
               disable=True if args.no_progress else None, leave=False,
               desc="simulating")
    def progress(n: int) -> None:
        bar.update(n)

    try:
        return compare(cluster, workload, policies, settings, progress=progress)
    finally:
        bar.close()


def _cmd(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    try:
        result = run_simulate(args)
    except (_BadInput, WorkloadError, ClusterError) as e:
        print(f"gputopo simulate: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        out.write(json.dumps(result.as_json(), indent=2) + "\n")
    else:
        out.write(table(result) + "\n")
    if args.report is not None:
        path = write_html(result, Path(args.report))
        print(f"report: {path}", file=sys.stderr if args.json else out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         stdin: TextIO | None = None) -> int:
    """``gputopo``: ``topology.cli`` with ``simulate`` added."""
    return topology_cli.main(argv, out=out, stdin=stdin, extra=[add_simulate])


if __name__ == "__main__":
    sys.exit(main())
