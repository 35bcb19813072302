"""Hostile and careless clients, over HTTP on a real port (issue 7's probe, case by case).

Each test names what broke before: a body that crashed a verb, a pod that passed filter
and then broke bind or the page, memory that grew without bound, a slow client that
held the server, a log flooded with tracebacks.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import os
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import aiohttp
import pytest

from extender.config import ExtenderConfig
from extender.guard import loop_exception_handler
from extender.logs import Throttle

from .helpers import gpu_pod, memory_cluster, serving, watching_logs

NODES = [{"name": "a", "topology": "hgx-h100"}, {"name": "b", "topology": "dgx1-v100"}]
FULL = [{"name": "full", "topology": "hgx-h100", "used": list(range(8))}]


async def post(s: aiohttp.ClientSession, url: str, body: bytes | str | Any,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    async with s.post(url, data=data, headers={"Content-Type": "application/json",
                                                **(headers or {})}) as r:
        return r.status, json.loads(await r.read())


def bind_args(pod: dict[str, Any], node: str) -> dict[str, str]:
    m = pod["metadata"]
    return {"PodName": m["name"], "PodNamespace": m["namespace"], "PodUID": m["uid"],
            "Node": node}


def host_port(url: str) -> tuple[str, int]:
    host, port = url.rsplit("/", 1)[1].split(":")
    return host, int(port)


# -- bodies that crashed a verb ----------------------------------------------------------
async def test_a_5000_digit_integer_anywhere_is_a_400_naming_the_problem() -> None:
    body = b'{"Pod": %s, "NodeNames": ["a"], "Extra": %s}' % (
        json.dumps(gpu_pod()).encode(), b"9" * 5000)
    async with serving(memory_cluster(NODES)) as url, aiohttp.ClientSession() as s:
        for verb in ("filter", "prioritize", "preempt"):
            status, answer = await post(s, f"{url}/{verb}", body)
            assert status == 400, answer
            assert "holds a value that cannot be read" in answer["Error"]
            assert "4300 digits" in answer["Error"]


async def test_a_5000_digit_gpu_quantity_is_the_pods_error_with_its_path() -> None:
    pod = gpu_pod()
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "9" * 5000
    async with serving(memory_cluster(NODES)) as url, aiohttp.ClientSession() as s:
        status, answer = await post(s, f"{url}/filter", {"Pod": pod, "NodeNames": ["a"]})
        assert status == 200
        assert answer["Error"].startswith(
            "Pod.spec.containers[0].resources.limits[nvidia.com/gpu]: '9999")
        assert "out of range; expected 0..65536" in answer["Error"]
        assert len(answer["Error"]) < 300  # the value is not echoed in full


async def test_gzip_said_but_not_sent_is_a_400() -> None:
    plain = json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"]})
    async with serving(memory_cluster(NODES)) as url, aiohttp.ClientSession() as s:
        for encoding in ("gzip", "deflate"):
            status, answer = await post(s, f"{url}/filter", plain,
                                        {"Content-Encoding": encoding})
            assert status == 400
            assert f"not valid {encoding}" in answer["Error"]
        status, answer = await post(s, f"{url}/filter", plain, {"Content-Encoding": "br"})
        assert status == 400 and "Content-Encoding 'br' is not supported" in answer["Error"]
        # a real gzip body is read as it should be
        status, answer = await post(s, f"{url}/filter", gzip.compress(plain.encode()),
                                    {"Content-Encoding": "gzip"})
        assert status == 200 and answer["NodeNames"] == ["a"]
        truncated = gzip.compress(plain.encode())[:-12]
        status, answer = await post(s, f"{url}/filter", truncated, {"Content-Encoding": "gzip"})
        assert status == 400 and "not a complete gzip stream" in answer["Error"]


async def test_a_client_that_leaves_mid_body_is_counted_apart_and_not_an_error() -> None:
    with watching_logs() as logs:
        async with serving(memory_cluster(NODES)) as url, aiohttp.ClientSession() as s:
            _, writer = await asyncio.open_connection(*host_port(url))
            writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
                         b"0123456789")
            await writer.drain()
            writer.close()
            await logs.wait_for(lambda r: "client gone verb=filter" in r.getMessage())
            async with s.get(f"{url}/metrics") as r:
                text = await r.text()
    assert 'gputopo_extender_requests_total{code="499",verb="filter"} 1.0' in text
    assert 'code="200",verb="filter"' not in text
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]


# -- pods that passed filter and then broke bind or the page -----------------------------
async def filter_then_bind(pod: dict[str, Any], node: str = "a") -> tuple[Any, Any, int]:
    cluster = memory_cluster(NODES)
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        _, f = await post(s, f"{url}/filter", {"Pod": pod, "NodeNames": [node]})
        _, b = await post(s, f"{url}/bind", bind_args(pod, node))
        async with s.get(f"{url}/") as r:
            page = r.status
    return f, b, page


async def test_null_annotations_are_no_annotations_and_bind_works() -> None:
    pod = gpu_pod(gpus=2)
    pod["metadata"]["annotations"] = None
    f, b, page = await filter_then_bind(pod)
    assert f["Error"] == "" and f["NodeNames"] == ["a"]
    assert b == {"Error": ""} and page == 200


async def test_a_pod_nested_900_deep_binds_without_copying_it() -> None:
    pod = gpu_pod(gpus=2)
    deep: Any = 1
    for _ in range(900):
        deep = [deep]
    pod["spec"]["overhead"] = deep  # a field the extender never reads
    f, b, page = await filter_then_bind(pod)
    assert f["NodeNames"] == ["a"] and b == {"Error": ""} and page == 200


async def test_a_lone_surrogate_in_the_pod_name_is_refused_and_the_page_stays_up() -> None:
    pod = gpu_pod("s\ud800x", gpus=2, uid="u1")
    f, b, page = await filter_then_bind(pod)
    assert f["Error"].startswith("Pod.metadata.name: 's\\ud800x' is not a DNS-1123 subdomain")
    assert "PodName" in b["Error"] and page == 200


async def test_two_containers_of_one_name_are_refused_before_they_share_gpus() -> None:
    pod = gpu_pod(gpus={"main": 2})
    pod["spec"]["containers"].append(dict(pod["spec"]["containers"][0]))
    f, b, _ = await filter_then_bind(pod)
    assert f["Error"] == ("Pod.spec.containers[1].name: duplicate container name 'main' "
                          "(also Pod.spec.containers[0].name)")
    assert "not found" in b["Error"]  # refused at filter: never remembered for a bind


@pytest.mark.parametrize(("field", "value", "message"), [
    ("namespace", "Bad_NS", "Pod.metadata.namespace: 'Bad_NS' is not a DNS-1123 label"),
    ("name", "x" * 300, "Pod.metadata.name: 'xxxx"),
    ("uid", None, "Pod.metadata.uid: required"),
    ("uid", "a b", "Pod.metadata.uid: 'a b' is not a UID"),
])
async def test_pod_identity_follows_kubernetes_rules(field: str, value: Any, message: str) -> None:
    pod = gpu_pod(gpus=1)
    pod["metadata"][field] = value
    async with serving(memory_cluster(NODES)) as url, aiohttp.ClientSession() as s:
        _, f = await post(s, f"{url}/filter", {"Pod": pod, "NodeNames": ["a"]})
    assert f["Error"].startswith(message)


# -- memory that grew without bound ------------------------------------------------------

async def test_refused_binds_keep_no_pods() -> None:
    cluster = memory_cluster(FULL)
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(40):
                pod = gpu_pod(f"p{i}", gpus=1, annotations={"big": "y" * 200_000})
                await post(s, f"{url}/filter", {"Pod": pod, "NodeNames": ["full"]})
                _, b = await post(s, f"{url}/bind", bind_args(pod, "full"))
                assert "can no longer take the pod" in b["Error"]
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    assert cluster.pods == {}
    assert grown < 2_000_000, grown  # 40 x 200 KB of annotations would be 8 MB


async def test_the_answer_memo_is_bounded_by_bytes() -> None:
    cfg = ExtenderConfig(host="127.0.0.1", port=0, answer_cache_bytes=2 * 1024 * 1024)
    cluster = memory_cluster(NODES)
    names = [f"unknown-node-{i:06d}" for i in range(12_000)]
    async with serving(cluster, cfg) as url, aiohttp.ClientSession() as s:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for shape in range(1, 13):  # distinct pod shapes, each a memo of its own
                body = json.dumps({"Pod": gpu_pod(gpus={f"c{k}": 1 for k in range(shape)}),
                                   "NodeNames": names})
                for verb in ("filter", "prioritize"):
                    status, _ = await post(s, f"{url}/{verb}", body)
                    assert status == 200
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    # unbounded, 24 answers of 12,000 names would keep ~15 MB
    assert grown < 5_000_000, grown


def bomb(decoded: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\0" * (1 << 20)
    parts = [c.compress(block) for _ in range(decoded >> 20)]
    return b"".join([*parts, c.flush()])


async def test_gzip_bombs_are_refused_as_they_inflate() -> None:
    limit = 4 * 1024 * 1024
    cfg = ExtenderConfig(host="127.0.0.1", port=0, max_body_bytes=limit, large_bodies=2)
    payload = bomb(128 << 20)  # 128 MiB of zeros in about 130 KB
    # random hex compresses about 2:1: a body that inflates past the limit honestly
    honest = gzip.compress(json.dumps([os.urandom(4096).hex() for _ in range(800)]).encode())
    assert len(honest) < limit
    async with serving(memory_cluster(NODES), cfg) as url, aiohttp.ClientSession() as s:
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            results = await asyncio.gather(*(
                post(s, f"{url}/filter", payload, {"Content-Encoding": "gzip"})
                for _ in range(8)))
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        status, answer = await post(s, f"{url}/filter", honest, {"Content-Encoding": "gzip"})
        assert status == 400 and "inflates to over the limit of 4194304" in answer["Error"]
    for status, answer in results:
        assert status == 400
        assert "inflates over 200 times its gzip size (a decompression bomb?)" in answer["Error"]
    # each bomb is stopped within its first inflate steps, not at the limit
    assert peak < 8 * (len(payload) + 3 * 1024 * 1024), peak


# -- probes during a large decode --------------------------------------------------------
class HeldExecutor(ThreadPoolExecutor):
    """Decode threads that start their work only once the test lets them."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.go = threading.Event()
        self.started: asyncio.Event | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self.started is not None:
            self.started.set()  # called on the loop thread (run_in_executor)

        def held() -> Any:
            self.go.wait(60)
            return fn(*args, **kwargs)

        return super().submit(held)


async def test_probes_and_small_verbs_are_answered_while_a_large_body_is_decoded() -> None:
    executor = HeldExecutor()
    executor.started = asyncio.Event()
    big = json.dumps({"Pod": gpu_pod(), "NodeNames": [f"n{i:07d}" for i in range(100_000)]})
    small = {"Pod": gpu_pod(), "NodeNames": ["a"]}
    try:
        async with serving(memory_cluster(NODES), decode_executor=executor) as url, \
                aiohttp.ClientSession() as s:
            large = asyncio.create_task(post(s, f"{url}/filter", big))
            await executor.started.wait()  # the large body is in the decode threads now
            for probe in ("healthz", "readyz"):
                async with s.get(f"{url}/{probe}") as r:
                    assert r.status == 200
            status, answer = await post(s, f"{url}/filter", small)
            assert status == 200 and answer["NodeNames"] == ["a"]
            assert not large.done()
            executor.go.set()
            status, answer = await large
            assert status == 200 and len(answer["FailedNodes"]) == 100_000
    finally:
        executor.go.set()
        executor.shutdown()


async def test_only_so_many_large_bodies_are_taken_in_at_once() -> None:
    executor = HeldExecutor()
    executor.started = asyncio.Event()
    cfg = ExtenderConfig(host="127.0.0.1", port=0, large_bodies=1, body_timeout_s=0.3)
    big = json.dumps({"Pod": gpu_pod(), "NodeNames": [f"n{i:07d}" for i in range(60_000)]})
    try:
        async with serving(memory_cluster(NODES), cfg, decode_executor=executor) as url, \
                aiohttp.ClientSession() as s:
            first = asyncio.create_task(post(s, f"{url}/filter", big))
            await executor.started.wait()  # the one slot is taken, and held
            status, answer = await post(s, f"{url}/filter", big)
            assert status == 503
            assert "1 large request bodies are being read already" in answer["Error"]
            executor.go.set()
            status, _ = await first
            assert status == 200
    finally:
        executor.go.set()
        executor.shutdown()


# -- slow clients --------------------------------------------------------------------------
SLOW = ExtenderConfig(host="127.0.0.1", port=0, header_timeout_s=0.2, body_timeout_s=0.2,
                      idle_timeout_s=0.3)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), 30)  # the server closes: EOF
    except ConnectionResetError:
        return b""


async def test_a_request_head_that_never_ends_is_closed() -> None:
    async with serving(memory_cluster(NODES), SLOW) as url:
        reader, writer = await asyncio.open_connection(*host_port(url))
        writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        assert await read_all(reader) == b""
        writer.close()


async def test_a_body_that_never_ends_is_answered_408() -> None:
    async with serving(memory_cluster(NODES), SLOW) as url:
        reader, writer = await asyncio.open_connection(*host_port(url))
        writer.write(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        answer = await read_all(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b"request body not received within 0.2s (--body-timeout)" in answer


async def test_an_idle_connection_is_closed() -> None:
    async with serving(memory_cluster(NODES), SLOW) as url:
        reader, writer = await asyncio.open_connection(*host_port(url))
        assert await read_all(reader) == b""
        writer.close()


async def test_stalled_connections_make_room_for_a_client_at_the_limit() -> None:
    cfg = ExtenderConfig(host="127.0.0.1", port=0, max_connections=4)
    async with serving(memory_cluster(NODES), cfg) as url, aiohttp.ClientSession() as s:
        stalled = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection(*host_port(url))
            writer.write(b"POST /filter HTTP/1.1\r\n")
            await writer.drain()
            stalled.append((reader, writer))
        status, answer = await post(s, f"{url}/filter", {"Pod": gpu_pod(), "NodeNames": ["a"]})
        assert status == 200 and answer["NodeNames"] == ["a"]
        assert await read_all(stalled[0][0]) == b""  # the one stalled longest made room
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        for _, writer in stalled:
            writer.close()
    assert 'gputopo_extender_connections_closed_total{reason="evicted"}' in text


# -- logs ----------------------------------------------------------------------------------
async def test_a_malformed_http_message_is_one_warning_without_a_traceback() -> None:
    with watching_logs() as logs:
        async with serving(memory_cluster(NODES)) as url:
            for _ in range(30):
                reader, writer = await asyncio.open_connection(*host_port(url))
                writer.write(b"GET / HTTP/1.1\r\nthis line has no colon\r\n\r\n")
                answer = await read_all(reader)
                assert answer.split(b" ")[1] == b"400"
                writer.close()
    warnings = [r for r in logs.records if r.name == "extender.http"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    (w,) = warnings
    assert w.levelno == logging.WARNING and w.exc_info is None
    assert w.getMessage().startswith("bad request from client peer=127.0.0.1 reason=")
    assert not [r for r in logs.records if r.levelno >= logging.ERROR]


def test_the_same_loop_error_is_logged_once_per_interval() -> None:
    now = [0.0]
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("test.loop")
    logger.addHandler(Keep())
    logger.propagate = False
    handle = loop_exception_handler(Throttle(10.0, clock=lambda: now[0]), logger)
    context = {"message": "socket.accept() out of system resource",
               "exception": OSError(24, "Too many open files")}
    for _ in range(90_000):
        handle(None, context)  # type: ignore[arg-type]
    now[0] = 11.0
    handle(None, context)  # type: ignore[arg-type]
    assert [r.getMessage() for r in records] == [
        "socket.accept() out of system resource error='[Errno 24] Too many open files'",
        "socket.accept() out of system resource error='[Errno 24] Too many open files' "
        "suppressed=89999",
    ]
