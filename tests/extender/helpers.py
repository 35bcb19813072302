"""Test helpers: pods, clusters in memory, and the real server on a loopback port."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from aiohttp import web

from extender.app import build_app
from extender.cluster import Cluster
from extender.config import ExtenderConfig
from extender.filesource import parse_cluster
from extender.memory import MemoryCluster

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
RECORDED = SHARED / "fixtures" / "kube-scheduler"


def gpu_pod(
    name: str = "p", *, gpus: int | dict[str, int] = 4, uid: str | None = None,
    namespace: str = "default", annotations: Mapping[str, str] | None = None,
    init: Mapping[str, int] | None = None, node: str | None = None,
) -> dict[str, Any]:
    """A Pod object as kube-scheduler sends it (API JSON)."""
    per = gpus if isinstance(gpus, dict) else {"main": gpus}
    containers = [
        {"name": c, "image": "registry.k8s.io/pause:3.10",
         "resources": {"limits": {"nvidia.com/gpu": str(n)}} if n else {}}
        for c, n in per.items()
    ]
    spec: dict[str, Any] = {"containers": containers, "schedulerName": "gputopo-scheduler"}
    if init:
        spec["initContainers"] = [
            {"name": c, "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": str(n)}}}
            for c, n in init.items()
        ]
    if node:
        spec["nodeName"] = node
    return {
        "metadata": {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}",
                     "annotations": dict(annotations or {})},
        "spec": spec,
        "status": {"phase": "Pending"},
    }


def memory_cluster(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]] | None = None
) -> MemoryCluster:
    f = parse_cluster({"nodes": nodes})
    return MemoryCluster(topologies=f.topologies, fixed=f.holdings, pods=pods or [])


async def started(cluster: MemoryCluster) -> MemoryCluster:
    await cluster.start()
    return cluster


@contextlib.asynccontextmanager
async def serving(
    cluster: Cluster, cfg: ExtenderConfig | None = None, ssl_context: Any = None
) -> AsyncIterator[str]:
    """The real app on 127.0.0.1:<free port>; yields its base URL."""
    app = build_app(cfg or ExtenderConfig(host="127.0.0.1", port=0), cluster)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        scheme = "https" if ssl_context is not None else "http"
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[str]:
    """Any aiohttp app on 127.0.0.1:<free port>; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


THREE_NODES: list[dict[str, Any]] = [
    {"name": "gpu-node-1", "topology": "dgx1-v100", "used": [0, 3]},
    {"name": "gpu-node-2", "topology": "pcie-8gpu-sys", "used": [0, 1, 2, 3, 4]},
    {"name": "gpu-node-3", "topology": "hgx-h100"},
]


@dataclass
class PageNode:
    """What the "/" page shows for one node (as parsed from the DOM)."""

    svgs: int = 0
    gpus: int = 0
    used: set[int] = field(default_factory=set)
    holders: set[str] = field(default_factory=set)


class _PageParser(HTMLParser):
    """Sections ``section.node[data-node]``; inside, SVGs and ``g.gpu`` (used or free)."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, PageNode] = {}
        self._node: PageNode | None = None
        self._depth = 0
        self._gpu_used: bool | None = None
        self._title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section" and "node" in classes:
            self._node = self.nodes.setdefault(a.get("data-node") or "", PageNode())
            self._depth = 0
        if self._node is None:
            return
        if tag == "section":
            self._depth += 1
        elif tag == "svg":
            self._node.svgs += 1
        elif tag == "g" and "gpu" in classes:
            self._node.gpus += 1
            self._gpu_used = "used" in classes
        elif tag == "title" and self._gpu_used is not None:
            self._title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._node is not None:
            self._depth -= 1
            if self._depth <= 0:
                self._node = None
        elif tag == "g":
            self._gpu_used = None
        elif tag == "title":
            self._title = False

    def handle_data(self, data: str) -> None:
        if self._title and self._gpu_used and self._node is not None:
            m = re.match(r"GPU(\d+): used by (.*) \(", data)
            if m:
                self._node.used.add(int(m.group(1)))
                self._node.holders.add(m.group(2))


def parse_page(html: str) -> dict[str, PageNode]:
    p = _PageParser()
    p.feed(html)
    return p.nodes
