"""Prioritize answered from the answer made right after its filter (extender.prefetch).

kube-scheduler sends prioritize the very body it sent filter when every candidate
passed; the answer made in between must be the bytes prioritize would compute, and it
must not be used once the state has changed.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from extender import prioritize
from extender.app import build_app
from extender.config import ExtenderConfig
from extender.context import CONTEXT
from extender.request import GpuRequest

from .helpers import gpu_pod, memory_cluster, serving_app

NODES = [{"name": "a", "topology": "dgx1-v100", "used": [0]},
         {"name": "b", "topology": "pcie-8gpu-sys"},
         {"name": "c", "topology": "hgx-h100", "used": [0, 1, 2, 3, 4]}]


def metric(text: str, result: str) -> float:
    line = f'gputopo_extender_prioritize_prefetch_total{{result="{result}"}} '
    return next((float(x[len(line):]) for x in text.splitlines() if x.startswith(line)), 0)


async def post(s: aiohttp.ClientSession, url: str, body: bytes) -> Any:
    async with s.post(url, data=body) as r:
        assert r.status == 200
        return await r.read()


async def test_the_answer_made_after_filter_is_what_prioritize_computes() -> None:
    cluster = memory_cluster(NODES)
    app = build_app(ExtenderConfig(host="127.0.0.1", port=0), cluster)
    pod = gpu_pod("p", gpus=2)
    body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": ["a", "b", "c"]}).encode()
    async with serving_app(app) as url, aiohttp.ClientSession() as s:
        first = json.loads(await post(s, f"{url}/filter", body))
        assert first["NodeNames"] == ["a", "b", "c"]  # every candidate passed
        answer = await post(s, f"{url}/prioritize", body)
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        assert metric(text, "hit") == 1 and metric(text, "miss") == 0
        ext = app[CONTEXT]
        expected = prioritize.answer(ext.decisions, GpuRequest.from_pod(pod),
                                     ["a", "b", "c"]).body
        assert answer == expected
        assert json.loads(answer)  # nodes differ: some rank above the lowest


async def test_a_change_between_filter_and_prioritize_is_computed_afresh() -> None:
    cluster = memory_cluster(NODES)
    app = build_app(ExtenderConfig(host="127.0.0.1", port=0), cluster)
    pod = gpu_pod("p", gpus=2)
    body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": ["a", "b", "c"]}).encode()
    other = gpu_pod("q", gpus=2)
    async with serving_app(app) as url, aiohttp.ClientSession() as s:
        await post(s, f"{url}/filter", body)
        before = await post(s, f"{url}/prioritize", body)
        await post(s, f"{url}/filter", body)  # made ahead again on this state...
        q = json.dumps({"Pod": other, "Nodes": None, "NodeNames": ["c"]}).encode()
        await post(s, f"{url}/filter", q)
        bind = {"PodName": "q", "PodNamespace": "default",
                "PodUID": other["metadata"]["uid"], "Node": "c"}
        assert json.loads(await post(s, f"{url}/bind", json.dumps(bind).encode())) == {
            "Error": ""}
        # ...but a bind landed since: c has one GPU left, too few for p
        after = await post(s, f"{url}/prioritize", body)
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        assert metric(text, "miss") == 1
        ext = app[CONTEXT]
        fresh = prioritize.answer(ext.decisions, GpuRequest.from_pod(pod),
                                  ["a", "b", "c"]).body
        assert after == fresh and after != before
