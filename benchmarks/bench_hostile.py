"""The probe's storm against the real extender command: memory and probe latency.

Each scenario starts a fresh ``gputopo-extender`` (``python -m extender.main``, from this
checkout or ``--source DIR``, e.g. an older one for a before/after table) on a generated
cluster file, measures the server process from ``/proc`` (VmRSS now, VmHWM the peak since
it was reset), runs the storm, and prints one Markdown row per scenario:

* ``idle``: ``/healthz`` latency with nothing else going on (the reference);
* ``filter-10MiB`` / ``nodes-22MiB``: ``/healthz`` while a 10 MiB ``NodeNames`` filter, or
  a 22 MiB full-``Nodes`` filter (5,000 Node objects), is decoded and answered;
* ``gzip-bombs``: 8 gzip bodies of ~300 KiB at once, each inflating to 300 MiB;
* ``memo``: filters and prioritizes of distinct pod shapes, each with many unknown names;
* ``refused-binds``: pods with 200 KiB of annotations, filtered, then refused at bind;
* ``stalled``: 1,020 connections that send 30 bytes and stall, the server at a 1,024 fd
  limit; then one scheduler-like request (served or not, and how fast).

    .venv/bin/python benchmarks/bench_hostile.py [--source DIR] [--only NAME ...]

Timings on a shared machine are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["dgx1-v100", "dgx-a100", "hgx-h100", "pcie-8gpu-sys", "aws-p4d"]


def cluster_yaml(nodes: int) -> str:
    lines = ["nodes:"]
    for i in range(nodes):
        lines.append(f"- {{name: gpu-node-{i}, topology: {PRESETS[i % len(PRESETS)]}}}")
    return "\n".join(lines) + "\n"


def pod(name: str = "bench", containers: int = 1, annotations: dict[str, str] | None = None
        ) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}",
                         "annotations": annotations or {}},
            "spec": {"containers": [
                {"name": f"c{k}", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
                for k in range(containers)]}}


def node_object(i: int) -> dict[str, Any]:
    """A Node as kube-scheduler sends it with nodeCacheCapable: false (about 5.6 KB)."""
    return {"metadata": {"name": f"gpu-node-{i}", "uid": f"node-uid-{i:08d}",
                         "labels": {f"label-{k}.example.com/key": f"value-{k}-{i}"
                                    for k in range(20)},
                         "annotations": {f"note-{k}": "x" * 100 for k in range(20)}},
            "spec": {"podCIDR": "10.0.0.0/24",
                     "taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "96", "memory": "1Ti", "nvidia.com/gpu": "8"},
                       "conditions": [{"type": t, "status": "False", "reason": "Fine" * 10}
                                      for t in ("Ready", "MemoryPressure", "DiskPressure",
                                                "PIDPressure")],
                       "images": [{"names": [f"registry.example.com/image-{k}:v1"],
                                   "sizeBytes": 123456789} for k in range(10)]}}


def gzip_bomb(decoded: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    return b"".join([*(c.compress(block) for _ in range(decoded >> 20)), c.flush()])


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


class Server:
    def __init__(self, source: Path, cluster: Path, fd_limit: int | None = None) -> None:
        self.source = source
        help_text = subprocess.run([sys.executable, "-m", "extender.main", "--help"],
                                   cwd=source, capture_output=True, text=True,
                                   env={**os.environ, "PYTHONPATH": str(source)}).stdout
        args = [sys.executable, "-m", "extender.main", "--host", "127.0.0.1", "--port", "0",
                "--cluster-file", str(cluster), "--log-level", "WARNING"]
        if "--no-state-file" in help_text:
            args.append("--no-state-file")
        with socket.socket() as s:  # older versions do not log the port of --port 0
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        args[args.index("--port") + 1] = str(self.port)
        preexec = None
        if fd_limit is not None:
            def preexec() -> None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
        # The log goes to a file: a pipe nobody reads would stall the server once full.
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(args, cwd=source, stdout=self.log,
                                     stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": str(source)},
                                     preexec_fn=preexec)
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if c.recv(16).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the extender did not start: {self.stop()}")
            time.sleep(0.1)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.seek(0)
        text = self.log.read()
        self.log.close()
        return text


def _poll(url: str, conn: Any) -> None:
    """Child process: GET /healthz one after another until told to stop; the latencies."""
    import urllib.request

    lat: list[float] = []
    while not conn.poll():
        t = time.perf_counter()
        with urllib.request.urlopen(f"{url}/healthz", timeout=60) as r:
            r.read()
        lat.append((time.perf_counter() - t) * 1e3)
        time.sleep(0.005)
    conn.send(lat)


async def healthz_while(url: str, work: Awaitable[Any]) -> tuple[list[float], Any]:
    """/healthz latencies (ms), asked by a process of its own (so that this one, busy
    sending the work, does not count), for as long as ``work`` runs."""
    import multiprocessing

    parent, child = multiprocessing.Pipe()
    poller = multiprocessing.get_context("spawn").Process(target=_poll, args=(url, child))
    poller.start()
    await asyncio.sleep(0.3)  # the poller's interpreter starts
    try:
        result = await work
    finally:
        parent.send("stop")
        lat = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        poller.join()
    return lat, result


async def post(url: str, body: bytes, headers: dict[str, str] | None = None,
               timeout: float = 300) -> tuple[int, bytes]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
            s.post(url, data=body, headers={"Content-Type": "application/json",
                                            **(headers or {})}) as r:
        return r.status, await r.read()


Row = dict[str, Any]


async def scenario_idle(srv: Server) -> Row:
    lat, _ = await healthz_while(srv.url, asyncio.sleep(1.0))
    return {"healthz": lat}


async def scenario_filter_10mib(srv: Server) -> Row:
    names = [f"gpu-node-{i}" for i in range(2000)] + [
        f"unknown-node-{i:07d}" for i in range(440_000)]
    body = json.dumps({"Pod": pod(), "NodeNames": names}).encode()
    lat, (status, _) = await healthz_while(srv.url, post(f"{srv.url}/filter", body))
    return {"healthz": lat, "status": status, "body": len(body)}


async def scenario_nodes_22mib(srv: Server) -> Row:
    items = [node_object(i) for i in range(5000)]
    body = json.dumps({"Pod": pod(), "Nodes": {"apiVersion": "v1", "kind": "NodeList",
                                               "items": items}, "NodeNames": None}).encode()
    lat, (status, _) = await healthz_while(srv.url, post(f"{srv.url}/filter", body))
    return {"healthz": lat, "status": status, "body": len(body)}


async def scenario_gzip_bombs(srv: Server) -> Row:
    bomb = gzip_bomb(300 << 20)
    t = time.perf_counter()
    results = await asyncio.gather(*(post(f"{srv.url}/filter", bomb, {"Content-Encoding": "gzip"})
                                     for _ in range(8)))
    return {"status": sorted({s for s, _ in results}), "seconds": time.perf_counter() - t,
            "body": len(bomb)}


async def scenario_memo(srv: Server, shapes: int, names: int) -> Row:
    unknown = [f"unknown-node-{i:07d}" for i in range(names)]
    t = time.perf_counter()
    for shape in range(1, shapes + 1):
        body = json.dumps({"Pod": pod(containers=shape % 50 + 1,
                                      annotations={"gputopo.io/min-link":
                                                   ["nvlink", "pix", "sys", "NV2"][shape % 4]}
                                      if shape >= 50 else None),
                           "NodeNames": [*unknown, f"shape-{shape}"]}).encode()
        for verb in ("filter", "prioritize"):
            await post(f"{srv.url}/{verb}", body)
    return {"seconds": time.perf_counter() - t}


async def scenario_refused_binds(srv: Server, pods: int) -> Row:
    note = {"note": "y" * 200_000}
    statuses = set()
    for i in range(pods):
        p = pod(f"p{i}", containers=9, annotations=note)  # 9 GPUs: no node has them
        await post(f"{srv.url}/filter", json.dumps({"Pod": p, "NodeNames": ["gpu-node-0"]})
                   .encode())
        _, answer = await post(f"{srv.url}/bind", json.dumps({
            "PodName": f"p{i}", "PodNamespace": "default", "PodUID": f"uid-p{i}",
            "Node": "gpu-node-0"}).encode())
        statuses.add(bool(json.loads(answer).get("Error")))
    return {"refused": statuses == {True}}


async def scenario_stalled(srv: Server) -> Row:
    writers = []
    for _ in range(1020):
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", srv.port), 10)
        except (OSError, TimeoutError):
            break
        w.write(b"POST /filter HTTP/1.1\r\nHost: x\r\n")
        writers.append(w)
    body = json.dumps({"Pod": pod(), "NodeNames": ["gpu-node-0"]}).encode()
    t = time.perf_counter()
    try:
        status, _ = await post(f"{srv.url}/filter", body, timeout=20)
        served = status == 200
    except Exception:
        served = False
    seconds = time.perf_counter() - t
    for w in writers:
        w.close()
    return {"served": served, "seconds": seconds, "stalled": len(writers)}


def run(name: str, source: Path, cluster: Path, fn: Callable[[Server], Awaitable[Row]],
        fd_limit: int | None = None) -> Row:
    srv = Server(source, cluster, fd_limit)
    try:
        before = proc_status(srv.pid)["VmRSS"]
        reset_peak(srv.pid)
        row = asyncio.run(fn(srv))
        st = proc_status(srv.pid)
        row.update(name=name, rss_before=before, rss_peak=st["VmHWM"], rss_after=st["VmRSS"])
    finally:
        log = srv.stop()
    row["too_many_open_files"] = len(re.findall("Too many open files", log))
    return row


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=ROOT,
                    help="the checkout whose extender to run (default: this one)")
    ap.add_argument("--only", nargs="*", help="scenarios to run (default: all)")
    ap.add_argument("--shapes", type=int, default=200, help="memo: distinct pod shapes")
    ap.add_argument("--names", type=int, default=100_000, help="memo: unknown names each")
    ap.add_argument("--pods", type=int, default=300, help="refused-binds: pods")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    scenarios: list[tuple[str, Callable[[Server], Awaitable[Row]], int | None]] = [
        ("idle", scenario_idle, None),
        ("filter-10MiB", scenario_filter_10mib, None),
        ("nodes-22MiB", scenario_nodes_22mib, None),
        ("gzip-bombs", scenario_gzip_bombs, None),
        ("memo", lambda s: scenario_memo(s, args.shapes, args.names), None),
        ("refused-binds", lambda s: scenario_refused_binds(s, args.pods), None),
        ("stalled", scenario_stalled, 1024),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        cluster = Path(d) / "cluster.yaml"
        cluster.write_text(cluster_yaml(2000))
        for name, fn, fds in scenarios:
            if args.only and name not in args.only:
                continue
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(run(name, args.source, cluster, fn, fds))
    idle = next((r for r in rows if r["name"] == "idle"), None)
    idle_p50 = statistics.median(idle["healthz"]) if idle else None
    print(f"\nsource: {args.source}\n")
    print("| scenario | RSS before MiB | RSS peak MiB | RSS after MiB | peak / before | "
          "/healthz p50 ms | /healthz max ms | max / idle p50 | notes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        lat = r.get("healthz") or []
        p50 = f"{statistics.median(lat):.1f}" if lat else ""
        mx = f"{max(lat):.1f}" if lat else ""
        ratio = f"{max(lat) / idle_p50:.0f}x" if lat and idle_p50 else ""
        notes = {k: v for k, v in r.items() if k not in (
            "name", "healthz", "rss_before", "rss_peak", "rss_after")}
        print(f"| {r['name']} | {mib(r['rss_before'])} | {mib(r['rss_peak'])} | "
              f"{mib(r['rss_after'])} | {r['rss_peak'] / r['rss_before']:.1f}x | {p50} | {mx} | "
              f"{ratio} | {json.dumps(notes, default=str)} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
