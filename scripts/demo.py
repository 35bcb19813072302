"""The main job on the embedded default: no cluster, no GPU.

1. Starts the real extender (``gputopo-extender``) on the built-in cluster file
   ``examples/mixed-cluster.yaml`` (64 nodes: DGX-1, DGX A100, PCIe servers)
   and drives a few hundred synthetic pods through its HTTP ``/filter``,
   ``/prioritize`` and ``/bind`` the way kube-scheduler does: candidates that fit by
   count, the extender's filter, its scores times the profile's weight (5) times 10,
   ties at random, the pod assumed, its bind sent asynchronously while the next pod is
   scheduled, failed binds retried. Then it reads back every set the extender assigned
   and says how many multi-GPU pods got the best set their node offers.
2. Runs ``gputopo simulate`` on the Philly subset (``../shared/traces``; the seeded
   synthetic workload where ``../shared`` is absent) on 64 DGX-1 nodes: the comparison
   table of count, binpack, local and topology, and the path of the HTML report.

    python scripts/demo.py [--pods 240] [--seed 0] [--keep-running]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.cli import add_simulate, run_simulate  # noqa: E402
from simulator.report import table, write_html  # noqa: E402
from simulator.workload import SIZE_MIX  # noqa: E402
from topology.allocate import Allocation, allocator_for  # noqa: E402
from topology.gpuids import GpuIds  # noqa: E402
from topology.presets import preset  # noqa: E402
from topology.render import to_matrix_text  # noqa: E402
from topology.sources import load_topology  # noqa: E402

CLUSTER_FILE = ROOT / "examples" / "mixed-cluster.yaml"
TRACE = ROOT.parent / "shared" / "traces" / "philly_genpw15k.csv"
REPORT = ROOT / "build" / "simulator-report"
#: manifests/scheduler-config.yaml: extenders[0].weight; kube-scheduler scales 0..10 by 10.
WEIGHT = 5


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_pod(i: int, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"job-{i:03d}", "namespace": "demo", "uid": str(uuid.uuid4()),
                     "annotations": {}},
        "spec": {"schedulerName": "gputopo-scheduler", "containers": [{
            "name": "main", "image": "trainer:latest",
            "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": "Pending"},
    }


class Scheduler:
    """kube-scheduler's side of the extender protocol, for one profile."""

    def __init__(self, http: aiohttp.ClientSession, base: str, capacity: dict[str, int],
                 seed: int) -> None:
        self.http = http
        self.base = base
        self.free = dict(capacity)  # the scheduler's count: assumed pods included
        self.rng = random.Random(f"demo:{seed}")
        self.latency: dict[str, list[float]] = {"filter": [], "prioritize": [], "bind": []}
        self.binds: list[asyncio.Task[tuple[dict[str, Any], str, str]]] = []
        self.failed_binds = 0

    async def post(self, verb: str, body: dict[str, Any]) -> Any:
        started = time.perf_counter()
        async with self.http.post(f"{self.base}/{verb}", json=body) as r:
            answer = await r.json()
        self.latency[verb].append(time.perf_counter() - started)
        return answer

    async def schedule(self, pod: dict[str, Any], gpus: int) -> str | None:
        """One scheduling cycle; the bind goes in flight. The node, or None."""
        names = sorted(n for n, f in self.free.items() if f >= gpus)  # NodeResourcesFit
        if not names:
            return None
        result = await self.post("filter", {"Pod": pod, "Nodes": None, "NodeNames": names})
        if result.get("Error"):
            raise SystemExit(f"filter error: {result['Error']}")
        passed: list[str] = result.get("NodeNames") or []
        if not passed:
            return None
        node = passed[0]
        if len(passed) > 1:
            scores = await self.post("prioritize", {"Pod": pod, "Nodes": None,
                                                    "NodeNames": passed})
            # kube-scheduler adds nothing for a host the answer leaves out (the extender
            # lists only the hosts above the lowest score).
            totals = dict.fromkeys(passed, 0)
            totals.update({h["Host"]: h["Score"] * WEIGHT * 10 for h in scores})
            best = max(totals.values())
            node = self.rng.choice(sorted(n for n, s in totals.items() if s == best))
        self.free[node] -= gpus  # assumed
        self.binds.append(asyncio.create_task(self.bind(pod, node, gpus)))
        return node

    async def bind(self, pod: dict[str, Any], node: str, gpus: int
                   ) -> tuple[dict[str, Any], str, str]:
        meta = pod["metadata"]
        answer = await self.post("bind", {"PodName": meta["name"],
                                          "PodNamespace": meta["namespace"],
                                          "PodUID": meta["uid"], "Node": node})
        error = str(answer.get("Error") or "")
        if error:
            self.failed_binds += 1
            self.free[node] += gpus  # forgotten; the pod goes back to the queue
        return pod, node, error


def _p(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] * 1000 if v else 0.0


async def drive(base: str, pods: int, seed: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        else:
            raise SystemExit("the extender did not become ready")
        async with http.get(f"{base}/topology") as r:
            view = await r.json()
        capacity = {n["name"]: len(n["free"]) for n in view["nodes"]}
        section(f"kube-scheduler -> the real extender at {base}: {pods} pods on "
                f"{len(capacity)} nodes ({sum(capacity.values())} GPUs)")
        rng = random.Random(f"demo-pods:{seed}")
        mix = [(k, n) for k, n in SIZE_MIX if k <= 8]
        sizes = rng.choices([k for k, _ in mix], [n for _, n in mix], k=pods)
        sched = Scheduler(http, base, capacity, seed)
        queue = [(make_pod(i, k), k) for i, k in enumerate(sizes)]
        pending: list[tuple[dict[str, Any], int]] = []
        started = time.perf_counter()
        for attempt in range(5):
            for pod, k in queue:
                if await sched.schedule(pod, k) is None:
                    pending.append((pod, k))
            results = await asyncio.gather(*sched.binds)
            sched.binds.clear()
            retry = [(p, int(p["spec"]["containers"][0]["resources"]["limits"]
                             ["nvidia.com/gpu"])) for p, _, error in results if error]
            queue = retry
            if not queue:
                break
            print(f"  attempt {attempt + 1}: {len(queue)} binds failed; retrying")
        elapsed = time.perf_counter() - started
        async with http.get(f"{base}/topology") as r:
            view = await r.json()
    report_extender(view, sizes, pending, sched, elapsed)


def report_extender(view: dict[str, Any], sizes: list[int],
                    pending: list[tuple[dict[str, Any], int]], sched: Scheduler,
                    elapsed: float) -> None:
    topologies: dict[str, Any] = {}
    multi = best = 0
    by_node_kind: dict[str, list[int]] = {}
    for node in view["nodes"]:
        t = topologies.get(node["preset"]) or load_topology(node["preset"])
        topologies[node["preset"]] = t
        ids = GpuIds.of(t)
        alloc = allocator_for(t)
        for pod in node["pods"]:
            devices = [d for c in pod["containers"].values() for d in c]
            k = len(devices)
            if k < 2:
                continue
            got = alloc.best(k, ids.mask_of_ids(devices))
            possible = alloc.best_ring_possible(k)
            ok = isinstance(got, Allocation) and possible is not None \
                and got.ring_link is not None and got.ring_link >= possible
            multi += 1
            best += ok
            stats = by_node_kind.setdefault(node["preset"], [0, 0])
            stats[0] += 1
            stats[1] += ok
    bound = len(sizes) - len(pending)
    print(f"  {bound} pods bound, {len(pending)} found no node (kube-scheduler keeps them "
          f"pending), {sched.failed_binds} binds failed and were retried, "
          f"{elapsed:.1f} s")
    print(f"  multi-GPU pods on the best set their node offers: {best} of {multi}")
    for kind, (n, ok) in sorted(by_node_kind.items()):
        print(f"    {kind:<24} {ok}/{n}")
    for verb, v in sched.latency.items():
        print(f"  {verb:<10} {len(v):>4} calls, p50 {_p(v, 0.5):.1f} ms, "
              f"p99 {_p(v, 0.99):.1f} ms")
    free = sum(len(n["free"]) for n in view["nodes"])
    print(f"  GPUs free now: {free}")


def simulate(seed: int) -> None:
    workload = ["--trace", str(TRACE)] if TRACE.is_file() else []
    what = f"the Philly subset ({TRACE})" if workload else (
        f"the synthetic workload ({TRACE} not found)")
    section(f"gputopo simulate: {what} on 64 DGX-1 V100 nodes")
    argv = ["simulate", *workload, "--nodes", "64", "--node-topology", "dgx1-v100",
            "--seed", str(seed)]
    print("  $ gputopo " + " ".join(argv[:1] + [a.replace(str(ROOT.parent) + "/", "../")
                                               for a in argv[1:]]), flush=True)
    p = argparse.ArgumentParser()
    add_simulate(p.add_subparsers())
    result = run_simulate(p.parse_args(argv))
    print(table(result))
    path = write_html(result, REPORT)
    print(f"\nreport: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-running", action="store_true",
                    help="leave the extender serving (its page at /) until Ctrl-C")
    args = ap.parse_args()
    started = time.perf_counter()
    section("a DGX-1 V100 (gputopo show dgx1-v100): not every pair has NVLink")
    print(to_matrix_text(preset("dgx1-v100")).rstrip())
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The demo's binds are kept in a state file of its own: every run starts afresh.
    state_dir = tempfile.TemporaryDirectory(prefix="gputopo-demo-")
    # Its log goes to a file, not a pipe: a pipe nobody reads fills up and blocks the
    # extender's next log line.
    log_path = Path(state_dir.name) / "extender.log"
    log = open(log_path, "w")  # noqa: SIM115 (the child writes it until it exits)
    proc = subprocess.Popen(
        [sys.executable, "-m", "extender.main", "--host", "127.0.0.1", "--port", str(port),
         "--cluster-file", str(CLUSTER_FILE),
         "--state-file", str(Path(state_dir.name) / "state.json")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True,
    )
    log.close()
    try:
        asyncio.run(drive(base, args.pods, args.seed))
        if args.keep_running:
            print(f"\nthe extender is serving; open {base}/ (Ctrl-C to stop)")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15, None):
            print(log_path.read_text()[-8000:], file=sys.stderr)
        state_dir.cleanup()
    simulate(args.seed)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
