"""Filter narrowed to the top-scored candidates (--filter-top-scored, extender.narrow).

The reference is the extender without the option on the same cluster: the narrowed
filter passes exactly those of its passed nodes that its prioritize scores highest, and
says the same of every node it refuses.
"""

from __future__ import annotations

import random
from typing import Any

import aiohttp

from extender.config import ExtenderConfig

from .helpers import gpu_pod, memory_cluster, serving

PRESETS = ["dgx1-v100", "dgx-a100", "hgx-h100", "pcie-8gpu-nvlink-pairs", "pcie-8gpu-sys",
           "pcie-4gpu-nvlink-pairs"]
PLAIN = ExtenderConfig(host="127.0.0.1", port=0, best_set_patience_s=0)
TOP = ExtenderConfig(host="127.0.0.1", port=0, best_set_patience_s=0, filter_top_scored=True)


async def call(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with s.post(url, json=body) as r:
        assert r.status == 200
        return await r.json()


def fleet(rng: random.Random, n: int) -> list[dict[str, Any]]:
    nodes = []
    for i in range(n):
        preset = rng.choice(PRESETS)
        gpus = 4 if preset.startswith("pcie-4gpu") else 8
        used = sorted(rng.sample(range(gpus), rng.randint(0, gpus - 1)))
        nodes.append({"name": f"n{i:02d}", "topology": preset, "used": used})
    return nodes


async def test_only_the_top_scored_of_what_passes_pass() -> None:
    rng = random.Random(7)
    narrowed_somewhere = False
    for case in range(25):
        nodes = fleet(rng, rng.randint(2, 12))
        names = [n["name"] for n in nodes]
        pod = gpu_pod(f"p{case}", gpus=rng.choice([1, 2, 3, 4, 8]),
                      annotations=rng.choice([{}, {"gputopo.io/link-policy": "required"}]))
        body = {"Pod": pod, "Nodes": None, "NodeNames": names}
        async with serving(memory_cluster(nodes), PLAIN) as plain, \
                serving(memory_cluster(nodes), TOP) as top, aiohttp.ClientSession() as s:
            ref = await call(s, f"{plain}/filter", body)
            passed = ref["NodeNames"] or []
            scores = {h["Host"]: h["Score"] for h in await call(
                s, f"{plain}/prioritize", {**body, "NodeNames": passed})}
            got = await call(s, f"{top}/filter", body)
        # prioritize leaves the hosts at the lowest score out (they score nothing extra)
        best = max((scores.get(n, 0) for n in passed), default=0)
        want = [n for n in passed if scores.get(n, 0) == best]
        assert (got["NodeNames"] or []) == want, (nodes, pod, scores)
        if len(passed) < 2:
            assert got == ref  # nothing to narrow: the same answer
        assert got["FailedNodes"] == ref["FailedNodes"]
        assert got["FailedAndUnresolvableNodes"] == ref["FailedAndUnresolvableNodes"]
        assert got["Error"] == ref["Error"]
        narrowed_somewhere |= len(want) < len(passed)
    assert narrowed_somewhere  # the cases do exercise the narrowing


async def test_the_dropped_nodes_are_counted_and_a_pod_without_gpus_is_not_narrowed() -> None:
    nodes = [{"name": "a", "topology": "dgx1-v100"}, {"name": "b", "topology": "pcie-8gpu-sys"},
             {"name": "c", "topology": "dgx1-v100", "used": [0, 1, 2, 3, 4]}]
    pod = gpu_pod("p", gpus=4)
    cpu_pod = gpu_pod("cpu", gpus=0)
    async with serving(memory_cluster(nodes), TOP) as top, aiohttp.ClientSession() as s:
        got = await call(s, f"{top}/filter",
                         {"Pod": pod, "Nodes": None, "NodeNames": ["a", "b", "c"]})
        # a offers an NVLink ring of four; b only SYS; c has three GPUs left
        assert got["NodeNames"] == ["a"]
        assert set(got["FailedNodes"]) | set(got["FailedAndUnresolvableNodes"]) == {"c"}
        again = await call(s, f"{top}/filter",
                           {"Pod": pod, "Nodes": None, "NodeNames": ["a", "b", "c"]})
        assert again == got
        # a name that needs escaping takes the plain encoder: the same narrowing
        odd = await call(s, f"{top}/filter",
                         {"Pod": pod, "Nodes": None, "NodeNames": ["a", "b", "c", 'x"y']})
        assert odd["NodeNames"] == ["a"]
        assert set(odd["FailedNodes"]) | set(odd["FailedAndUnresolvableNodes"]) == {"c", 'x"y'}
        plain = await call(s, f"{top}/filter",
                           {"Pod": cpu_pod, "Nodes": None, "NodeNames": ["a", "b", "c"]})
        assert plain["NodeNames"] == ["a", "b", "c"]
        async with s.get(f"{top}/metrics") as r:
            text = await r.text()
    line = 'gputopo_extender_node_decisions_total{result="outscored"} '
    outscored = next(float(x[len(line):]) for x in text.splitlines() if x.startswith(line))
    assert outscored == 3.0  # b, in each of the three narrowed answers
