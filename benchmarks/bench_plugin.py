"""Benchmark the plugin's GetPreferredAllocation next to an empty call, as the kubelet sees it.

    python benchmarks/bench_plugin.py [--requests 2000] [--streams 50] [--seed 7]

The whole plugin (``PluginApp``: fake NVML of a DGX-1, health loop, pod cache,
reconciler, publisher, the grpc.aio server on its unix socket, registered with a
stand-in kubelet) runs in a child process; this process plays the kubelet over the
socket with one channel, one call at a time. Per case it sends ``--requests`` random
GetPreferredAllocation requests (random free GPUs, size and sometimes a must-include
GPU, as the kubelet asks) and, interleaved one for one, the floor: GetDevicePluginOptions,
an empty unary call on the same server in the same run. Cases:

* ``api reachable``: the pod cache and the reconciler read an in-memory cluster with 40
  pods bound to the node (4 still waiting for their assigned sets), and a kubelet record;
* ``api unreachable``: the API server is a dead address (127.0.0.1, a closed port) and the
  kubelet's PodResources socket is missing, so the pod watch, the publisher and the
  reconciler fail and retry on their real intervals while the kubelet calls come in;
* ``streams open``: as ``api reachable``, with ``--streams`` ListAndWatch streams open.

Prints a markdown table: p50 and p99 of each, and p99 / floor p99 (the goal: within 2x).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from topology.gpuids import stable_gpu_uuid

CASES = ("api reachable", "api unreachable", "streams open")
PRESET = "dgx1-v100"
GPUS = [stable_gpu_uuid(i) for i in range(8)]
NODE = "bench-node"
GOAL = 2.0


# --- the plugin, in a child process ------------------------------------------------------


def _cluster_with_pods() -> tuple[Any, dict[tuple[str, str], dict[str, tuple[str, ...]]]]:
    """An in-memory API server with 40 pods on the node, and the kubelet's record of them."""
    from plugin.cluster import PodInfo
    from tests.plugin.fakes import InMemoryCluster
    from topology.handoff import encode_gpu_sets
    from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION

    cluster = InMemoryCluster()
    cluster.add_node(NODE)
    rng = random.Random(1)
    record: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}
    for k in range(40):
        gpus = sorted(rng.sample(GPUS, rng.choice((1, 2, 4))))
        done = k >= 4  # the first 4 still wait for the kubelet
        annotations = {ASSIGNED_GPUS_ANNOTATION: encode_gpu_sets({"main": gpus})}
        if done:
            annotations[ALLOCATED_GPUS_ANNOTATION] = encode_gpu_sets({"main": gpus})
            record[("bench", f"pod-{k}")] = {"main": tuple(gpus)}
        cluster.put_pod(PodInfo(namespace="bench", name=f"pod-{k}", node_name=NODE,
                                phase="Running" if done else "Pending",
                                annotations=annotations, created=f"2026-01-01T00:00:{k:02d}Z"))
    return cluster, record


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when this returns: connections are refused


def serve(case: str, directory: str, ready: Any, stop: Any) -> None:
    """The plugin for ``case``, serving in ``directory`` until ``stop`` is set."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - logs are formatted, then dropped
    from plugin.config import PluginConfig
    from plugin.devkubelet import DevKubelet
    from plugin.fakenvml import FakeNvml
    from plugin.log import configure
    from plugin.main import PluginApp
    from plugin.nvml import discover, start_nvml
    from topology.presets import preset

    configure("kv", "INFO")
    kubelet = DevKubelet(Path(directory))
    kubelet.start()
    nvml = FakeNvml(preset(PRESET))
    start_nvml(nvml)
    discovery = discover(nvml, name=NODE)
    cfg = PluginConfig(node_name=NODE, kubelet_dir=Path(directory))
    lister: Callable[[], Any]
    if case == "api unreachable":
        from kubernetes import client

        from plugin.kube import KubeCluster
        from plugin.podresources import PodResourcesClient

        api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{_dead_port()}"))
        cluster: Any = KubeCluster(api)
        lister = PodResourcesClient(Path(directory) / "no-pod-resources.sock",
                                    cfg.resource_name).list
    else:
        cluster, record = _cluster_with_pods()
        lister = lambda: record  # noqa: E731 - the kubelet's record, read in memory
    app = PluginApp(cfg, nvml=nvml, discovery=discovery, cluster=cluster, pod_resources=lister)
    thread = threading.Thread(target=app.run, args=(stop,), daemon=True)
    thread.start()
    kubelet.next_registration(timeout=60)
    if case != "api unreachable":
        app.pods.synced.wait(60)
    ready.set()
    thread.join()
    kubelet.stop()


# --- the kubelet's side, here ------------------------------------------------------------


def requests(n: int, seed: int) -> list[Any]:
    """Requests as the kubelet makes them: free GPUs, a size that fits, rarely a must."""
    from plugin.api import deviceplugin_pb2 as pb

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        free = sorted(rng.sample(GPUS, rng.randint(1, len(GPUS))))
        size = rng.randint(1, len(free))
        must = rng.sample(free, 1) if size > 1 and rng.random() < 0.2 else []
        out.append(pb.PreferredAllocationRequest(container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=free, must_include_deviceIDs=must, allocation_size=size)]))
    return out


def _pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(case: str, n: int, streams: int, seed: int) -> dict[str, float]:
    import grpc

    from plugin.api import deviceplugin_pb2 as pb
    from plugin.api import deviceplugin_pb2_grpc as pb_grpc
    from plugin.server import KUBELET_CHANNEL_OPTIONS, socket_name
    from topology.names import DEFAULT_RESOURCE_NAME

    directory = tempfile.mkdtemp(prefix="gt-bench-", dir="/tmp")
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    child = ctx.Process(target=serve, args=(case, directory, ready, stop), daemon=True)
    child.start()
    try:
        if not ready.wait(120):
            raise RuntimeError(f"{case}: the plugin did not start")
        sock = Path(directory) / socket_name(DEFAULT_RESOURCE_NAME)
        with grpc.insecure_channel(f"unix:{sock}", options=KUBELET_CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.DevicePluginStub(channel)
            opened = [stub.ListAndWatch(pb.Empty()) for _ in range(streams)]
            for s in opened:
                next(s)  # each stream is served: it has sent the device list
            empty = pb.Empty()
            reqs = requests(n, seed)
            for r in reqs[:200]:  # warm up: connections, allocator tables, memo
                stub.GetDevicePluginOptions(empty, timeout=10)
                stub.GetPreferredAllocation(r, timeout=10)
            floor: list[float] = []
            call: list[float] = []
            clock = time.perf_counter_ns
            for k, r in enumerate(reqs):
                # Interleaved, in alternating order: both see the same machine.
                for which in ((0, 1) if k % 2 else (1, 0)):
                    t0 = clock()
                    if which:
                        stub.GetPreferredAllocation(r, timeout=10)
                        call.append((clock() - t0) / 1e6)
                    else:
                        stub.GetDevicePluginOptions(empty, timeout=10)
                        floor.append((clock() - t0) / 1e6)
            for s in opened:
                s.cancel()
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "floor50": _pct(floor, 0.50), "floor99": _pct(floor, 0.99),
        "call50": _pct(call, 0.50), "call99": _pct(call, 0.99),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    print(f"# device plugin: GetPreferredAllocation vs an empty call ({PRESET}, "
          f"{args.requests} requests per case, {platform.python_version()}, "
          f"{os.cpu_count()} CPUs)\n")
    print("| case | floor p50 ms | floor p99 ms | GetPreferredAllocation p50 ms | p99 ms "
          "| p50 / floor | p99 / floor p99 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for case in CASES:
        r = measure(case, args.requests, args.streams if case == "streams open" else 0,
                    args.seed)
        ratio = r["call99"] / r["floor99"]
        worst = max(worst, ratio)
        label = f"{args.streams} streams open" if case == "streams open" else case
        print(f"| {label} | {r['floor50']:.3f} | {r['floor99']:.3f} | {r['call50']:.3f} "
              f"| {r['call99']:.3f} | {r['call50'] / r['floor50']:.2f}x | {ratio:.2f}x |",
              flush=True)
    print(f"\nGoal p99 within {GOAL:g}x of the floor in every case: "
          f"{'met' if worst <= GOAL else 'NOT met'} (worst {worst:.2f}x).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
