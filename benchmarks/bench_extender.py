"""Benchmark the extender's filter and prioritize over real HTTP, as kube-scheduler calls them.

    python benchmarks/bench_extender.py [--nodes 5000] [--requests 300] [--concurrency 8]

Builds a cluster of ``--nodes`` nodes in memory (mixed presets: DGX-1 V100, DGX A100,
HGX H100, p4d, PCIe NVLink pairs, all-SYS PCIe, 4-GPU and 16-GPU machines; a seeded
random set of GPUs in use on each), starts the real server (``build_app`` + AppRunner +
TCPSite) in a child process on a loopback port, and sends ``NodeNames`` requests
(nodeCacheCapable: true) for one 4-GPU pod from an aiohttp client with keep-alive:

* sequential: one request at a time, latency p50/p99 per verb;
* concurrent: ``--concurrency`` requests in flight, requests per second per verb;
* the floor: ``json.loads`` of the very same request body in the client's process,
  timed right after each row (the machine's speed can drift within a run);
* the HTTP floor: the same requests to a do-nothing app served by the same aiohttp stack
  in the same child process (its own port; nothing is added to the product's app): it
  reads the body, ``json.loads`` it and answers a ready-made body as long as the verb's
  real answer, timed right after the verb with the same bodies. (Alternating the two
  request by request would charge the floor with the cleanup the verb's request leaves.)

Prints a markdown table. Everything is on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESET_MIX = (
    ("dgx1-v100", 3), ("dgx-a100", 2), ("hgx-h100", 2), ("aws-p4d", 1),
    ("pcie-8gpu-nvlink-pairs", 2), ("pcie-8gpu-sys", 1), ("pcie-4gpu-nvlink-pairs", 1),
    ("gb200-4gpu", 1), ("nvswitch-16gpu", 1),
)


def cluster_spec(nodes: int, seed: int) -> dict[str, Any]:
    """The cluster file content: mixed presets, random GPUs in use (about half)."""
    rng = random.Random(seed)
    names = [name for name, weight in PRESET_MIX for _ in range(weight)]
    sizes = {"pcie-4gpu-nvlink-pairs": 4, "gb200-4gpu": 4, "nvswitch-16gpu": 16}
    out = []
    for i in range(nodes):
        preset = rng.choice(names)
        n = sizes.get(preset, 8)
        used = sorted(rng.sample(range(n), rng.randint(0, n)))
        out.append({"name": f"gpu-node-{i:05d}", "topology": preset, "used": used})
    return {"nodes": out}


def pod(gpus: int = 4) -> dict[str, Any]:
    return {
        "metadata": {"name": "bench-pod", "namespace": "default",
                     "uid": "00000000-0000-0000-0000-00000000beef",
                     "annotations": {"gputopo.io/min-link": "nvlink"}},
        "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10",
                                 "resources": {"limits": {"nvidia.com/gpu": str(gpus)},
                                               "requests": {"cpu": "100m",
                                                            "nvidia.com/gpu": str(gpus)}}}],
                 "schedulerName": "gputopo-scheduler"},
        "status": {"phase": "Pending"},
    }


def _serve(nodes: int, seed: int, conn: Any) -> None:
    """Child process: the real server (``extender.main.serve``) over the generated cluster,
    and the HTTP floor's app beside it; sends both ports."""
    from aiohttp import web

    from extender.config import ExtenderConfig
    from extender.filesource import parse_cluster
    from extender.main import serve
    from extender.memory import MemoryCluster

    answers: dict[int, bytes] = {}

    async def floor_handler(request: web.Request) -> web.Response:
        """Read and decode the body like a verb, answer ``?bytes=N`` ready-made bytes."""
        json.loads(await request.read())
        size = int(request.query["bytes"])
        if size not in answers:  # a JSON string of that length, made once
            answers[size] = b'"' + b"x" * max(0, size - 2) + b'"'
        return web.Response(body=answers[size], content_type="application/json")

    async def run() -> None:
        f = parse_cluster(cluster_spec(nodes, seed))
        cluster = MemoryCluster(topologies=f.topologies, fixed=f.holdings, mode="file")
        cfg = ExtenderConfig(host="127.0.0.1", port=0)
        floor_app = web.Application(client_max_size=cfg.max_body_bytes + 1)
        floor_app.router.add_post("/floor", floor_handler)
        floor_runner = web.AppRunner(floor_app, access_log=None)  # as extender.main.serve
        await floor_runner.setup()
        await web.TCPSite(floor_runner, "127.0.0.1", 0).start()
        floor_port = floor_runner.addresses[0][1]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        server = asyncio.create_task(serve(
            cfg, cluster, stop=stop, ready=lambda port: conn.send((port, floor_port))))
        await loop.run_in_executor(None, conn.recv)  # until the parent says stop
        stop.set()
        await server
        await floor_runner.cleanup()

    asyncio.run(run())


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


async def measure(ports: tuple[int, int], bodies: dict[str, list[bytes]], requests: int,
                  concurrency: int) -> dict[tuple[str, str], Any]:
    """Per verb and body kind: sequential latencies, the same requests to the HTTP floor
    (answering as many bytes) right after, then requests/s with concurrency."""
    import aiohttp

    url = f"http://127.0.0.1:{ports[0]}"
    floor_url = f"http://127.0.0.1:{ports[1]}/floor"
    headers = {"Content-Type": "application/json"}
    out: dict[tuple[str, str], Any] = {}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as s:

        async def post(url: str, body: bytes) -> bytes:
            async with s.post(url, data=body, headers=headers) as r:
                data = await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}: {data[:200]!r}")
                return data

        for verb in ("filter", "prioritize"):
            for kind, group in bodies.items():
                for k in range(min(40, requests)):  # warm-up: caches, connections
                    data = await post(f"{url}/{verb}", group[k % len(group)])
                    await post(f"{floor_url}?bytes={len(data)}", group[k % len(group)])
                lat = []
                for k in range(requests):
                    body = group[k % len(group)]
                    t0 = time.perf_counter()
                    data = await post(f"{url}/{verb}", body)
                    lat.append(time.perf_counter() - t0)
                floor_lat = []
                for k in range(requests):  # right after, with the same bodies
                    body = group[k % len(group)]
                    t0 = time.perf_counter()
                    await post(f"{floor_url}?bytes={len(data)}", body)
                    floor_lat.append(time.perf_counter() - t0)
                fl = floor(group[0], max(requests, 200))  # and json.loads, in this process

                async def worker(n: int, start: int, verb: str = verb,
                                 group: list[bytes] = group) -> None:
                    for k in range(n):
                        await post(f"{url}/{verb}", group[(start + k) % len(group)])

                per = [requests // concurrency + (1 if i < requests % concurrency else 0)
                       for i in range(concurrency)]
                t0 = time.perf_counter()
                await asyncio.gather(*(worker(n, i) for i, n in enumerate(per)))
                rps = requests / (time.perf_counter() - t0)
                out[(verb, kind)] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "rps": rps,
                                     "floor_p50": fl["p50"], "floor_p99": fl["p99"],
                                     "http_p50": pct(floor_lat, 50),
                                     "http_p99": pct(floor_lat, 99),
                                     "bytes": len(data), "answer": json.loads(data)}
    return out


def floor(body: bytes, requests: int) -> dict[str, float]:
    lat = []
    for _ in range(requests):
        t0 = time.perf_counter()
        json.loads(body)
        lat.append(time.perf_counter() - t0)
    return {"p50": pct(lat, 50), "p99": pct(lat, 99)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--gpus", type=int, default=4, help="GPUs the pod asks for")
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    if not (1 <= a.nodes <= 100_000 and 1 <= a.requests <= 100_000 and 1 <= a.concurrency <= 256):
        p.error("--nodes, --requests, --concurrency out of range")

    names = [n["name"] for n in cluster_spec(a.nodes, a.seed)["nodes"]]
    body = json.dumps({"Pod": pod(a.gpus), "Nodes": None, "NodeNames": names}).encode()
    # "changed": every request names the candidates in another order, so no answer is
    # reused (the extender keeps the last answer per pod shape while nothing changed).
    rotated = [json.dumps({"Pod": pod(a.gpus), "Nodes": None,
                           "NodeNames": names[k:] + names[:k]}).encode()
               for k in range(0, len(names), max(1, len(names) // 16))][:16]
    bodies = {"repeated": [body], "changed": rotated}

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(a.nodes, a.seed, child), daemon=True)
    t_start = time.perf_counter()
    proc.start()
    try:
        if not parent.poll(300):
            print("server did not start within 300 s", file=sys.stderr)
            return 1
        ports = parent.recv()
        startup = time.perf_counter() - t_start
        results = asyncio.run(measure(ports, bodies, a.requests, a.concurrency))
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.terminate()

    f = results[("filter", "repeated")]["answer"]
    passed = len(f["NodeNames"])
    failed = len(f["FailedNodes"])
    unres = len(f["FailedAndUnresolvableNodes"])
    print(f"## extender benchmark: {a.nodes} nodes, one {a.gpus}-GPU pod (min-link nvlink, "
          f"preferred), NodeNames requests over HTTP\n")
    print(f"python {platform.python_version()}, {platform.machine()}, "
          f"{mp.cpu_count()} CPUs; body {len(body) / 1024:.0f} KiB; server start + cluster "
          f"build {startup:.1f} s; {a.requests} requests per row; filter answer: {passed} "
          f"passed, {failed} failed, {unres} unresolvable\n")
    print("| verb | requests | answer KiB | p50 ms | p99 ms | requests/s (concurrency "
          f"{a.concurrency}) | floor p50 ms | floor p99 ms | p99 / floor p99 | "
          "HTTP floor p50 ms | HTTP floor p99 ms | p50 / HTTP floor p50 | "
          "p99 / HTTP floor p99 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: |")
    for (verb, kind), r in results.items():
        print(f"| {verb} | {kind} | {r['bytes'] / 1024:.0f} | {r['p50'] * 1e3:.2f} | "
              f"{r['p99'] * 1e3:.2f} | {r['rps']:.0f} | {r['floor_p50'] * 1e3:.2f} | "
              f"{r['floor_p99'] * 1e3:.2f} | {r['p99'] / r['floor_p99']:.1f}x | "
              f"{r['http_p50'] * 1e3:.2f} | {r['http_p99'] * 1e3:.2f} | "
              f"{r['p50'] / r['http_p50']:.1f}x | {r['p99'] / r['http_p99']:.1f}x |")
    print("\nrepeated: the same request again (the answer is reused while the cluster state "
          "and the candidate list are unchanged); changed: the candidate list differs on "
          "every request (every node judged; verdicts are still shared by identical node "
          "states).\nfloor: json.loads of the same request body in this process, right after "
          "the row. HTTP floor: "
          "the same request to a do-nothing app on the same aiohttp stack in the server's "
          "process, which decodes the body and answers as many bytes as the verb did.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
