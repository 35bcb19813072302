"""The "/" page in a real headless browser: one SVG per node, used GPUs marked."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import ClientSession

from .helpers import gpu_pod, memory_cluster, parse_page, serving

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome"), "/usr/bin/chromium")
                 if p and Path(p).exists()), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary (apt-get install -y chromium); the page is checked in a real "
           "headless browser",
)


def chromium(url: str, profile: Path, *extra: str) -> str:
    assert CHROMIUM is not None
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return out.stdout


@needs_chromium
async def test_page_renders_every_node_with_used_gpus_marked(tmp_path: Path) -> None:
    ids = [f"GPU-00000000-0000-0000-0000-00000000000{i}" for i in range(8)]
    cluster = memory_cluster(
        [{"name": "gpu-node-1", "topology": "dgx1-v100", "used": [0, 3]},
         {"name": "gpu-node-2", "topology": "pcie-8gpu-sys"},
         {"name": "gpu-node-3", "topology": "hgx-h100"}],
        [gpu_pod("trainer", gpus=2, node="gpu-node-3", namespace="ml", annotations={
            "gputopo.io/assigned-gpus": json.dumps({"main": ids[4:6]})})],
    )
    async with serving(cluster) as url:
        # chromium blocks: run it in a thread so the server on this loop can answer it
        dom = await asyncio.to_thread(chromium, f"{url}/", tmp_path / "profile", "--dump-dom")
        shot = tmp_path / "page.png"
        await asyncio.to_thread(chromium, f"{url}/", tmp_path / "profile2",
                                f"--screenshot={shot}", "--window-size=1400,1000")
    page = parse_page(dom)
    assert set(page) == {"gpu-node-1", "gpu-node-2", "gpu-node-3"}
    for node in page.values():
        assert node.svgs == 1 and node.gpus == 8
    assert page["gpu-node-1"].used == {0, 3}
    assert page["gpu-node-2"].used == set()
    assert page["gpu-node-3"].used == {4, 5}
    assert "ml/trainer" in page["gpu-node-3"].holders
    assert re.search(r"<svg[^>]*xmlns=\"http://www.w3.org/2000/svg\"", dom)
    assert shot.stat().st_size > 10_000  # a real picture was painted


async def test_page_is_served_without_a_browser_too() -> None:
    cluster = memory_cluster([{"name": f"n{i}", "topology": "gb200-4gpu", "used": [1]}
                              for i in range(5)])
    async with (serving(cluster) as url, ClientSession() as s,
                s.get(f"{url}/?limit=2&offset=2") as r):
        html = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
    page = parse_page(html)
    assert list(page) == ["n2", "n3"]
    assert "nodes 3-4 of 5" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
