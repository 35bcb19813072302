"""The probe's storm as a test: thousands of hostile requests over the wire, and 1,020
stalled connections against a server at a 1,024 file-descriptor limit (before: every
other client locked out, and a "Too many open files" record on every accept retry).

The figures of the same storms (memory before and after, probe latency during large
decodes) are in ``benchmarks/bench_hostile.py``; this file asserts behaviour only.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.config import ExtenderConfig
from extender.main import serve

from .helpers import gpu_pod, memory_cluster, serve_command, stop_command

VERBS = ["filter", "prioritize", "bind", "preempt"]


@pytest.fixture(scope="module")
def storm_server() -> Iterator[tuple[tuple[str, int], list[logging.LogRecord]]]:
    """The real server (extender.main.serve) in a thread of its own, and its log."""
    cluster = memory_cluster([{"name": "a", "topology": "dgx1-v100", "used": [1]},
                              {"name": "b", "topology": "pcie-8gpu-sys"}])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    port: list[int] = []
    started = threading.Event()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep(logging.DEBUG)
    logger = logging.getLogger("extender")
    logger.addHandler(keep)

    def ready(p: int) -> None:
        port.append(p)
        started.set()

    cfg = ExtenderConfig(host="127.0.0.1", port=0, max_body_bytes=256 * 1024,
                         header_timeout_s=2.0, body_timeout_s=2.0)
    thread = threading.Thread(
        target=loop.run_until_complete,
        args=(serve(cfg, cluster, stop=stop, ready=ready, tune_gc=False),), daemon=True)
    thread.start()
    assert started.wait(30), "server did not start"
    try:
        yield ("127.0.0.1", port[0]), records
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        logger.removeHandler(keep)


def pod_variant(kind: str) -> dict[str, Any]:
    """The pods of issue 7's probe, and their neighbours."""
    pod = gpu_pod("p", gpus=2, annotations={"gputopo.io/min-link": "nvlink"})
    if kind == "null-annotations":
        pod["metadata"]["annotations"] = None
    elif kind == "deep":
        deep: Any = 0
        for _ in range(700):
            deep = {"x": deep}
        pod["spec"]["overhead"] = deep
    elif kind == "surrogate":
        pod["metadata"]["name"] = "s\ud800x"
    elif kind == "duplicate":
        pod["spec"]["containers"].append(dict(pod["spec"]["containers"][0]))
    elif kind == "huge-quantity":
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "7" * 5000
    elif kind == "bad-annotation":
        pod["metadata"]["annotations"] = {"gputopo.io/min-link": 7}
    return pod


PODS = ["valid", "null-annotations", "deep", "surrogate", "duplicate", "huge-quantity",
        "bad-annotation"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=16),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["pod", "bind", "json", "bytes", "huge-int", "nested"]))
    if kind == "pod":
        pod = pod_variant(draw(st.sampled_from(PODS)))
        return json.dumps({"Pod": pod, "NodeNames": draw(st.lists(
            st.sampled_from(["a", "b", "ghost", "\ud800"]), max_size=4)),
            "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": "v"}]}}}).encode()
    if kind == "bind":
        name = draw(st.sampled_from(["p", "s\ud800x", "P", "x" * 300, ""]))
        return json.dumps({"PodName": name, "PodNamespace": "default", "PodUID": "uid-p",
                           "Node": draw(st.sampled_from(["a", "b", "zz"]))}).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "huge-int":
        return b'{"Pod": {}, "NodeNames": [' + b"9" * draw(st.integers(4000, 6000)) + b"]}"
    if kind == "nested":
        n = draw(st.integers(100, 3000))
        return b"[" * n + b"]" * n
    return draw(st.binary(max_size=200))


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A raw HTTP request (and whether its body is cut short, the socket then closed)."""
    verb = draw(st.sampled_from(VERBS))
    body = draw(bodies())
    encoding = draw(st.sampled_from(["", "gzip", "gzip-lie", "deflate-lie", "br"]))
    headers = [f"POST /{verb} HTTP/1.1", "Host: x", "Content-Type: application/json",
               "Connection: close"]
    if encoding == "gzip":
        body = gzip.compress(body)
    if encoding:
        headers.append(f"Content-Encoding: {encoding.split('-')[0]}")
    cut = draw(st.booleans()) and len(body) > 2
    length = len(body) + (draw(st.integers(1, 1000)) if cut else 0)
    headers.append(f"Content-Length: {length}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body, cut


def exchange(server: tuple[str, int], raw: bytes, cut: bool) -> bytes:
    with socket.create_connection(server, timeout=30) as sock:
        sock.sendall(raw)
        if cut:
            return b""  # the client leaves with its body unfinished
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(req=requests())
def test_thousands_of_hostile_requests_get_answers_never_crashes(
    storm_server: tuple[tuple[str, int], list[logging.LogRecord]], req: tuple[bytes, bool],
) -> None:
    server, _ = storm_server
    raw, cut = req
    answer = exchange(server, raw, cut)
    if cut:
        return
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert status in (200, 400, 408, 503), answer[:300]
    data = json.loads(body)
    if isinstance(data, dict) and "Error" in data:
        assert "internal error" not in data["Error"], data["Error"]


def test_after_the_storm_the_server_is_healthy_and_its_log_is_calm(
    storm_server: tuple[tuple[str, int], list[logging.LogRecord]],
) -> None:
    server, records = storm_server
    answer = exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      False)
    assert answer.startswith(b"HTTP/1.1 200")
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert errors == []
    # every kind of bad request is logged, but the same kind once per 10 s
    assert len(records) < 200, len(records)


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


async def test_1020_stalled_connections_at_a_1024_fd_limit_leave_room_for_the_scheduler(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text("nodes: [{name: a, topology: hgx-h100}]\n")
    proc, port, log = serve_command("--cluster-file", str(cluster_file), "--no-state-file",
                                    preexec_fn=_limit_fds)
    assert "max_connections=960" in log  # 1,024 less what the process keeps for itself
    stalled: list[asyncio.StreamWriter] = []
    try:
        for _ in range(1020):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\n")  # 30 bytes, then nothing
            stalled.append(writer)
        for writer in stalled:
            await writer.drain()
        body = json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"]}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await asyncio.wait_for(reader.read(), 60)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["NodeNames"] == ["a"]
    finally:
        for writer in stalled:
            writer.close()
        out = stop_command(proc)
    assert "Too many open files" not in out, out[-2000:]
