"""The main job on the embedded default: no cluster, no GPU.

1. Shows a DGX-1's topology and allocates on it with the exact allocator.
2. Starts the real extender (``gputopo-extender``) on the example cluster file and
   schedules a series of pods through it the way kube-scheduler does: filter with node
   names, prioritize the survivors, bind to the best; prints where each pod landed,
   which GPUs it got, and why nodes were refused.

    python scripts/demo.py [--cluster-file FILE] [--keep-running]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from topology.allocate import Allocation, best_set  # noqa: E402
from topology.links import parse_min_link  # noqa: E402
from topology.presets import preset  # noqa: E402
from topology.render import to_matrix_text  # noqa: E402

# (name, GPUs per container, min-link, policy)
PODS: list[tuple[str, list[int], str | None, str | None]] = [
    ("infer-a", [1], None, None),
    ("infer-b", [1], None, None),
    ("train-8", [8], "nvlink", "required"),
    ("train-4a", [4], "nvlink", "required"),
    ("train-4b", [4], "nvlink", "required"),
    ("pair-nv2", [2], "NV2", "required"),
    ("pair-any", [2], "nvlink", "preferred"),
    ("two-workers", [2, 2], "nvlink", "required"),
    ("quad-pcie", [4], None, None),
    ("train-16", [16], "nvlink", "required"),
    ("bad-annotation", [2], "fast", "required"),
]


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def show_allocator() -> None:
    t = preset("dgx1-v100")
    section("dgx1-v100 (DGX-1 V100, hybrid cube-mesh): gputopo show dgx1-v100")
    print(to_matrix_text(t).rstrip())
    section("allocating on it: four pods of 2, then two pods of 4")
    for sizes in ([2, 2, 2, 2], [4, 4]):
        free = set(range(t.size))
        for k in sizes:
            r = best_set(t, k, free=free)
            assert isinstance(r, Allocation)
            print(f"  size {k}: {r.explain()}")
            free -= set(r.devices)
    r = best_set(t, 4, free=[0, 1, 5, 6], min_link=parse_min_link("nvlink"))
    print(f"  size 4 from free 0,1,5,6 with min-link nvlink: {getattr(r, 'reason', r)}")


def pod(name: str, sizes: list[int], min_link: str | None, policy: str | None) -> dict[str, Any]:
    annotations = {}
    if min_link:
        annotations["gputopo.io/min-link"] = min_link
    if policy:
        annotations["gputopo.io/link-policy"] = policy
    containers = [
        {"name": f"c{i}", "image": "trainer:latest",
         "resources": {"limits": {"nvidia.com/gpu": str(k)}}}
        for i, k in enumerate(sizes)
    ]
    return {
        "metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4()),
                     "annotations": annotations},
        "spec": {"containers": containers, "schedulerName": "gputopo-scheduler"},
        "status": {"phase": "Pending"},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def schedule(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("the extender did not become ready")
        async with http.get(f"{base}/topology") as r:
            cluster = await r.json()
        nodes = sorted(n["name"] for n in cluster["nodes"])
        section(f"scheduling through the extender at {base} ({len(nodes)} nodes)")
        for name, sizes, min_link, policy in PODS:
            p = pod(name, sizes, min_link, policy)
            wish = f"{'+'.join(map(str, sizes))} GPU" + (
                f", min-link {min_link} ({policy or 'preferred'})" if min_link else "")
            async with http.post(f"{base}/filter",
                                 json={"Pod": p, "Nodes": None, "NodeNames": nodes}) as r:
                result = await r.json()
            if result.get("Error"):
                print(f"- {name} [{wish}]: refused: {result['Error']}")
                continue
            passed = result.get("NodeNames") or []
            if not passed:
                failed = {**result.get("FailedNodes", {}),
                          **result.get("FailedAndUnresolvableNodes", {})}
                print(f"- {name} [{wish}]: no node fits")
                for node, why in sorted(failed.items()):
                    print(f"    {node}: {why}")
                continue
            scores = {n: 0 for n in passed}
            if len(passed) > 1:
                async with http.post(f"{base}/prioritize",
                                     json={"Pod": p, "Nodes": None, "NodeNames": passed}) as r:
                    scores.update({h["Host"]: h["Score"] for h in await r.json()})
            node = max(passed, key=lambda n: (scores[n], n))
            bind = {"PodName": name, "PodNamespace": "default",
                    "PodUID": p["metadata"]["uid"], "Node": node}
            async with http.post(f"{base}/bind", json=bind) as r:
                err = (await r.json()).get("Error")
            if err:
                print(f"- {name} [{wish}]: bind to {node} failed: {err}")
                continue
            async with http.get(f"{base}/topology/{node}") as r:
                state = await r.json()
            held = [g for g in state.get("gpus", []) if g.get("pod") == f"default/{name}"]
            gpus = ",".join(str(g["index"]) for g in held) or "?"
            ranked = (", ".join(f"{n}={scores[n]}" for n in sorted(passed, key=scores.get,
                                                                   reverse=True))
                      if len(passed) > 1 else "the only node that passed")
            link = state.get("assigned", {}).get(f"default/{name}", {}).get("ring_link")
            print(f"- {name} [{wish}] -> {node}, GPUs {gpus}" + (f", ring {link}" if link else "")
                  + f"\n    scores: {ranked}")
        section("what each node holds now (GET /topology)")
        async with http.get(f"{base}/topology") as r:
            cluster = await r.json()
        for n in sorted(cluster["nodes"], key=lambda n: n["name"]):
            print(f"  {n['name']:<14} {n.get('preset') or n.get('model') or '':<24} "
                  f"free {n.get('free')}  used {n.get('used')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster-file",
                    default=str(ROOT / "examples" / "demo-cluster.yaml"))
    ap.add_argument("--keep-running", action="store_true",
                    help="leave the extender serving (its page at /) until Ctrl-C")
    args = ap.parse_args()
    show_allocator()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "extender.main", "--host", "127.0.0.1", "--port", str(port),
         "--cluster-file", args.cluster_file],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        asyncio.run(schedule(base))
        if args.keep_running:
            print(f"\nthe extender is serving; open {base}/ (Ctrl-C to stop)")
            proc.wait()
        else:
            print(f"\n(run with --keep-running and open {base}/ to see each node's GPU graph)")
    except KeyboardInterrupt:
        pass
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        time.sleep(0)
    if proc.returncode not in (0, -15, None) and proc.stderr is not None:
        print(proc.stderr.read(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
