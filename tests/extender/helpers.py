"""Test helpers: pods, clusters in memory, and the real server on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from aiohttp import web

from extender.app import build_app
from extender.cluster import Cluster
from extender.config import ExtenderConfig
from extender.filesource import parse_cluster
from extender.guard import start_server

from .faults import FaultyCluster

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
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
) -> FaultyCluster:
    """An in-memory cluster (with the test hooks of :class:`FaultyCluster`)."""
    f = parse_cluster({"nodes": nodes})
    return FaultyCluster(topologies=f.topologies, fixed=f.holdings, pods=pods or [])


@contextlib.asynccontextmanager
async def serving(
    cluster: Cluster, cfg: ExtenderConfig | None = None, ssl_context: Any = None,
    **app_args: Any,
) -> AsyncIterator[str]:
    """The real app on 127.0.0.1:<free port>, served as the command serves it (the
    connection guard, bodies left to the intake); yields its base URL."""
    cfg = cfg or ExtenderConfig(host="127.0.0.1", port=0)
    app = build_app(cfg, cluster, **app_args)
    s = await start_server(app, host="127.0.0.1", port=0, ssl_context=ssl_context,
                           max_connections=cfg.max_connections,
                           header_timeout_s=cfg.header_timeout_s,
                           idle_timeout_s=cfg.idle_timeout_s)
    try:
        scheme = "https" if ssl_context is not None else "http"
        yield f"{scheme}://127.0.0.1:{s.port}"
    finally:
        await s.runner.cleanup()


async def until(
    check: Callable[[], bool | Awaitable[bool]], *,
    waits: Callable[[], tuple[Awaitable[None], ...]], timeout: float = 30.0,
    why: Callable[[], object] | None = None,
) -> None:
    """Wait, on events, until ``check()`` holds. ``waits()`` is called *before* each
    check and returns what to wait on when it fails (e.g. ``cluster.wait_applied(n)``
    with ``n`` read at that moment), so no change between the check and the wait is
    missed. ``timeout`` only keeps a broken test from hanging."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                pending = waits()
                result = check()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    for p in pending:
                        if isinstance(p, asyncio.Future):
                            p.cancel()
                        elif asyncio.iscoroutine(p):
                            p.close()
                    return
                tasks = [asyncio.ensure_future(p) for p in pending]
                try:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for t in tasks:
                        t.cancel()
    except TimeoutError:
        raise AssertionError(f"condition not reached: {why() if why else ''}") from None


class LogWatch(logging.Handler):
    """Records of the ``extender`` loggers, with a wait for one that matches."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._waiters: list[tuple[Callable[[logging.LogRecord], bool], asyncio.Future[None]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        for match, fut in list(self._waiters):
            if not fut.done() and match(record):
                fut.get_loop().call_soon_threadsafe(_resolve, fut)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]

    async def wait_for(self, match: Callable[[logging.LogRecord], bool],
                       timeout: float = 30.0) -> logging.LogRecord:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((match, fut))
        try:
            for r in list(self.records):
                if match(r):
                    return r
            async with asyncio.timeout(timeout):
                await fut
            return next(r for r in reversed(self.records) if match(r))
        finally:
            self._waiters.remove((match, fut))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@contextlib.contextmanager
def watching_logs(name: str = "extender") -> Any:
    watch = LogWatch()
    logger = logging.getLogger(name)
    old = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.DEBUG)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(old)


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


def serve_command(
    *args: str, preexec_fn: Callable[[], None] | None = None
) -> tuple[subprocess.Popen[str], int, str]:
    """``python -m extender.main`` on a free port; returns once its log says it serves
    (with the log so far)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "extender.main", "--host", "127.0.0.1", "--port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=preexec_fn,
    )
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # blocks until the next line: waits on the server's own word
        seen.append(line)
        m = re.search(r"msg=serving host=\S+ port=(\d+)", line)
        if m:
            rest: list[str] = []
            # keep reading, so a full pipe never stalls the server
            reader = threading.Thread(target=rest.extend, args=(proc.stdout,), daemon=True)
            reader.start()
            _OUTPUT[proc.pid] = (reader, rest)
            return proc, int(m.group(1)), "".join(seen)
    proc.wait(10)
    raise AssertionError("the extender exited before serving:\n" + "".join(seen))


_OUTPUT: dict[int, tuple[threading.Thread, list[str]]] = {}


def stop_command(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    """Stop the command; its output after the serving line."""
    proc.send_signal(sig)
    proc.wait(timeout=30)
    reader, rest = _OUTPUT.pop(proc.pid)
    reader.join(30)
    return "".join(rest)


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
