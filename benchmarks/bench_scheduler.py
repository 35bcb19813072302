"""The real kube-scheduler with and without the extender, on a real control plane.

    python benchmarks/bench_scheduler.py [--nodes 1000,5000] [--pods 2000]
                                         [--modes alone,null,extender,top] [--repeat 1]

Per node count, on one loopback control plane (etcd, kube-apiserver; built by
``tests/e2e/cluster/build``): ``--nodes`` Node objects with 8 GPUs each (mixed presets)
and their GPUTopology objects, as the device plugin publishes them. Then, in the same
run, for each mode (``alone``: kube-scheduler counting GPUs, no extender; ``null``: the
KubeSchedulerConfiguration from ``manifests/`` with ``null_extender.py``, an extender that
decides nothing, the floor of the protocol; ``extender``: the same configuration with
the real gputopo-extender in API mode; ``top``: the extender with ``--filter-top-scored``
and the configuration without ``prioritizeVerb``):

1. ``--pods`` GPU pods (1/2/4/8 GPUs, seeded mix) are created while no scheduler runs;
2. kube-scheduler starts; a watch records the time each pod is bound;
3. throughput = pods bound / (last bind - first bind);
4. CPU seconds of kube-apiserver, kube-scheduler and the extender over that window, from
   /proc, per pod; the extender's per-verb latency p50/p99 from its /metrics histogram;
5. the pods are deleted (grace 0: no kubelet) and the extender has released them.

Every mode uses the same raised client rate limit (``--qps``), so the API client is not
what limits any. No controller-manager and no kubelet run: nodes are Ready objects.
Prints markdown tables; ``--json FILE`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import (
    ApiStatus,
    ClusterSpec,
    E2EUnavailable,
    LocalCluster,
    find_tools,
    free_port,
    wait_for,
)
from tests.e2e.pods import gpu_pod, metric
from topology.handoff import gputopology_object
from topology.presets import preset

PRESETS = ("dgx1-v100", "dgx-a100", "hgx-h100", "pcie-8gpu-nvlink-pairs", "pcie-8gpu-sys")
SIZES = ((1, 0.4), (2, 0.3), (4, 0.2), (8, 0.1))
VERBS = ("filter", "prioritize", "bind")
_ORDER = {"alone": 0, "null": 1, "extender": 2, "top": 3}


@dataclass(frozen=True, slots=True)
class Run:
    nodes: int
    mode: str
    pods: int
    bound: int
    seconds: float
    pods_per_s: float
    cpu_ms_per_pod: dict[str, float]
    extender_ms: dict[str, dict[str, float]]


def node_object(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "capacity": {"cpu": "96", "memory": "1Ti", "pods": "110",
                         "nvidia.com/gpu": str(gpus)},
            "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110",
                            "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "benchmark node"}],
        },
    }


def populate(cluster: LocalCluster, count: int) -> None:
    """Nodes and their GPUTopology objects, created 16 at a time."""
    topologies = {p: preset(p) for p in PRESETS}

    def one(i: int) -> None:
        name = f"bench-{i:05d}"
        t = topologies[PRESETS[i % len(PRESETS)]]
        cluster.api("POST", "/api/v1/nodes", node_object(name, t.size))
        # Admission gives a new Node the not-ready taint; its kubelet (none here) and the
        # node lifecycle controller would lift it once Ready.
        cluster.api("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}},
                    content_type="application/merge-patch+json")
        cluster.api("POST", "/apis/gputopo.io/v1alpha1/gputopologies",
                    gputopology_object(name, t))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def pod_sizes(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    sizes, weights = zip(*SIZES, strict=True)
    return rng.choices(sizes, weights, k=n)


class BindWatch:
    """Watches the namespace's pods and records when each is first seen bound."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.bound: dict[str, float] = {}
        self.changed = threading.Condition()
        self._stop = threading.Event()
        rv = cluster.api("GET", f"/api/v1/namespaces/{namespace}/pods?limit=1")[
            "metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, args=(rv,), daemon=True)
        self._thread.start()

    def _run(self, rv: str) -> None:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.cluster.pki.ca_crt))
        while not self._stop.is_set():
            url = (f"https://127.0.0.1:{self.cluster.api_port}/api/v1/namespaces/"
                   f"{self.namespace}/pods?watch=1&resourceVersion={rv}&timeoutSeconds=60")
            req = urllib.request.Request(url, headers={
                "Authorization": "Bearer gputopo-e2e-admin-token"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=90) as resp:
                    for line in resp:
                        event = json.loads(line)
                        obj = event["object"]
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if obj["spec"].get("nodeName"):
                            name = obj["metadata"]["name"]
                            with self.changed:
                                self.bound.setdefault(name, time.monotonic())
                                self.changed.notify_all()
                        if self._stop.is_set():
                            return
            except Exception:
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def wait(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.bound) >= count, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()


def histogram_quantiles(text: str, verb: str) -> dict[str, float]:
    """p50/p99 (ms) of the extender's latency histogram for ``verb``, interpolated."""
    name = "gputopo_extender_request_duration_seconds_bucket"
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith(name) and f'verb="{verb}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le),
                            float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out = {"count": total}
    for q in (0.5, 0.99):
        target = q * total
        lo_b, lo_c = 0.0, 0.0
        value = float("nan")
        for b, c in buckets:
            if c >= target and total:
                if b == float("inf"):
                    value = lo_b
                else:
                    frac = 0.0 if c == lo_c else (target - lo_c) / (c - lo_c)
                    value = lo_b + (b - lo_b) * frac
                break
            lo_b, lo_c = b, c
        out[f"p{int(q * 100)}"] = value * 1000
    return out


def run_mode(cluster: LocalCluster, nodes: int, mode: str, sizes: list[int],
             timeout: float) -> Run:
    ns = f"bench-{mode}"
    cluster.ensure_namespace(ns)
    with_extender = mode in ("null", "extender", "top")
    ours = mode in ("extender", "top")
    if mode == "extender":
        cluster._extender()
    elif mode == "top":
        cluster._extender("--filter-top-scored")
    elif mode == "null":
        cluster.extender_port = free_port()
        cluster.extender = cluster._proc("null-extender", [
            sys.executable, str(Path(__file__).with_name("null_extender.py")),
            "--kubeconfig", str(cluster.kubeconfig), "--port", str(cluster.extender_port)])
    if with_extender:
        cluster.extender.start()
        cluster.wait_extender_ready(timeout=300)
    if ours:
        with urllib.request.urlopen(f"{cluster.extender_url}/metrics", timeout=30) as r:
            metrics_before = r.read().decode()
    watch = BindWatch(cluster, ns)

    def create(i: int) -> None:
        cluster.api("POST", f"/api/v1/namespaces/{ns}/pods", gpu_pod(f"p-{i:05d}", sizes[i]))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(len(sizes))))
    procs = {"kube-apiserver": cluster.apiserver}
    if with_extender:
        procs["extender"] = cluster.extender
    cluster._scheduler(with_extender=with_extender, prioritize=mode != "top")
    cluster.scheduler.start()
    procs["kube-scheduler"] = cluster.scheduler
    # CPU is read from the first bind on: the scheduler's start-up (informer sync of
    # every node and pod) is not part of scheduling.
    if not watch.wait(1, 120):
        raise TimeoutError(f"{mode}: no pod bound within 120 s of the scheduler's start\n"
                           + cluster.scheduler.tail(20))
    cpu0 = {k: p.cpu_seconds() for k, p in procs.items()}
    done = watch.wait(len(sizes), timeout)
    cpu1 = {k: p.cpu_seconds() for k, p in procs.items()}
    watch.stop()
    times = sorted(watch.bound.values())
    bound = len(times)
    span = times[-1] - times[0] if bound > 1 else float("nan")
    extender_ms: dict[str, dict[str, float]] = {}
    if ours:
        with urllib.request.urlopen(f"{cluster.extender_url}/metrics", timeout=30) as r:
            text = r.read().decode()
        for verb in VERBS:
            extender_ms[verb] = histogram_quantiles(text, verb)
            extender_ms[verb]["count"] -= histogram_quantiles(metrics_before, verb)["count"]
        extender_ms["bind_errors"] = {"count": metric(text, "gputopo_extender_binds_total",
                                                      {"result": "error"})}
        # What filter answered per candidate node, and prioritize answers made ahead.
        extender_ms["node_decisions"] = {
            k: metric(text, "gputopo_extender_node_decisions_total", {"result": k})
            - metric(metrics_before, "gputopo_extender_node_decisions_total", {"result": k})
            for k in ("passed", "failed", "unresolvable", "unknown", "waiting", "outscored")}
        extender_ms["prefetch"] = {
            k: metric(text, "gputopo_extender_prioritize_prefetch_total", {"result": k})
            - metric(metrics_before, "gputopo_extender_prioritize_prefetch_total",
                     {"result": k})
            for k in ("hit", "miss")}
    cluster.scheduler.stop()
    cluster.processes.remove(cluster.scheduler)
    if not done:
        print(f"  {mode}: only {bound}/{len(sizes)} pods bound within {timeout:g}s",
              file=sys.stderr)
    cluster.api("DELETE", f"/api/v1/namespaces/{ns}/pods", {"gracePeriodSeconds": 0})
    wait_for(f"pods of {ns} deleted",
             lambda: not cluster.api("GET", f"/api/v1/namespaces/{ns}/pods?limit=1")["items"],
             timeout=300)
    if ours:
        wait_for("the extender to release every GPU", lambda: _free_all(cluster), timeout=120)
    if with_extender:
        cluster.extender.stop()
        cluster.processes.remove(cluster.extender)
    n = max(1, bound)
    return Run(nodes=nodes, mode=mode, pods=len(sizes), bound=bound, seconds=span,
               pods_per_s=(bound - 1) / span if bound > 1 else 0.0,
               cpu_ms_per_pod={k: 1000 * (cpu1[k] - cpu0[k]) / n for k in procs},
               extender_ms=extender_ms)


def _free_all(cluster: LocalCluster) -> bool:
    with urllib.request.urlopen(f"{cluster.extender_url}/readyz", timeout=30) as r:
        body = json.loads(r.read())
    return body.get("pods") == 0 and body.get("binds_in_flight") == 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", default="1000,5000", help="node counts (default %(default)s)")
    p.add_argument("--pods", type=int, default=2000)
    p.add_argument("--modes", default="alone,null,extender,top",
                   help="in this order, per node count (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the modes this often")
    p.add_argument("--qps", type=float, default=2000.0,
                   help="kube-scheduler client qps in both modes (burst 2x)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per mode at most")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args(argv)
    # A SIGTERM unwinds through cluster.down(): no component outlives the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        tools = find_tools()
    except E2EUnavailable as e:
        print(f"bench_scheduler: {e}", file=sys.stderr)
        return 3
    runs: list[Run] = []
    for count in (int(x) for x in a.nodes.split(",")):
        workdir = Path(tempfile.mkdtemp(prefix="gtbench-", dir="/tmp"))
        spec = ClusterSpec(extender=False, scheduler=False, controller_manager=False,
                           scheduler_qps=a.qps, scheduler_burst=int(2 * a.qps))
        cluster = LocalCluster(spec=spec, workdir=workdir, tools=tools).up()
        try:
            start = time.monotonic()
            populate(cluster, count)
            print(f"{count} nodes and GPUTopology objects in {time.monotonic() - start:.0f}s",
                  file=sys.stderr)
            sizes = pod_sizes(a.pods, a.seed)
            for _ in range(a.repeat):
                for mode in a.modes.split(","):
                    r = run_mode(cluster, count, mode, sizes, a.timeout)
                    runs.append(r)
                    print(f"  {count} nodes {mode}: {r.pods_per_s:.1f} pods/s "
                          f"({r.bound}/{r.pods} bound)", file=sys.stderr)
        except (ApiStatus, TimeoutError):
            print(cluster.diagnostics(40), file=sys.stderr)
            raise
        finally:
            cluster.down()
    report(runs)
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


def report(runs: list[Run]) -> None:
    print("\n| nodes | mode | pods bound | pods/s | ratio to alone | ratio to null | "
          "CPU ms/pod: apiserver | scheduler | extender | total |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rate = {key: statistics.median(r.pods_per_s for r in runs if (r.nodes, r.mode) == key)
            for key in {(r.nodes, r.mode) for r in runs}}

    def ratio(r: Run, base: str) -> str:
        b = rate.get((r.nodes, base))
        return f"{r.pods_per_s / b:.2f}" if b else "-"

    for r in runs:
        c = r.cpu_ms_per_pod
        ext = f"{c['extender']:.1f}" if "extender" in c else "-"
        print(f"| {r.nodes} | {r.mode} | {r.bound}/{r.pods} | {r.pods_per_s:.1f} | "
              f"{ratio(r, 'alone')} | {ratio(r, 'null') if r.mode != 'null' else '-'} | "
              f"{c.get('kube-apiserver', 0):.1f} | {c.get('kube-scheduler', 0):.1f} | "
              f"{ext} | {sum(c.values()):.1f} |")
    if len(runs) > len(rate):
        print("\nMedians over the repeats (ratios of the medians):\n")
        print("| nodes | mode | runs | pods/s | ratio to alone | ratio to null |")
        print("| ---: | --- | ---: | ---: | ---: | ---: |")
        for nodes, mode in sorted(rate, key=lambda k: (k[0], _ORDER.get(k[1], 9))):
            n = sum(1 for r in runs if (r.nodes, r.mode) == (nodes, mode))
            alone, null = rate.get((nodes, "alone")), rate.get((nodes, "null"))
            v = rate[(nodes, mode)]
            print(f"| {nodes} | {mode} | {n} | {v:.1f} | "
                  f"{f'{v / alone:.2f}' if alone else '-'} | "
                  f"{f'{v / null:.2f}' if null and mode != 'null' else '-'} |")
    print("\nExtender latency from its /metrics (histogram, interpolated):\n")
    print("| nodes | mode | verb | calls | p50 ms | p99 ms |")
    print("| ---: | --- | --- | ---: | ---: | ---: |")
    for r in runs:
        for verb in VERBS:
            m = r.extender_ms.get(verb)
            if m and m["count"]:
                print(f"| {r.nodes} | {r.mode} | {verb} | {m['count']:.0f} | "
                      f"{m['p50']:.1f} | {m['p99']:.1f} |")


if __name__ == "__main__":
    raise SystemExit(main())
