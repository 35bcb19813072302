"""Throw many malformed bodies at the real server: every answer is 200 or 400 JSON."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extender.config import ExtenderConfig
from extender.main import serve

from .helpers import gpu_pod, memory_cluster

VERBS = ["filter", "prioritize", "bind", "preempt"]


@pytest.fixture(scope="module")
def live_server() -> Iterator[tuple[str, int]]:
    """The real server (extender.main.serve) on a loopback port, in its own thread."""
    cluster = memory_cluster([{"name": "a", "topology": "dgx1-v100", "used": [1]},
                              {"name": "b", "topology": "pcie-8gpu-sys"}],
                             [gpu_pod("p", gpus=2)])
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    port: list[int] = []
    started = threading.Event()

    def ready(p: int) -> None:
        port.append(p)
        started.set()

    cfg = ExtenderConfig(host="127.0.0.1", port=0, max_body_bytes=64 * 1024)
    thread = threading.Thread(target=loop.run_until_complete,
                              args=(serve(cfg, cluster, stop=stop, ready=ready, tune_gc=False),),
                              daemon=True)
    thread.start()
    assert started.wait(30), "server did not start"
    yield "127.0.0.1", port[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def post(server: tuple[str, int], path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*server, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
KEYS = ["Pod", "Nodes", "NodeNames", "PodName", "PodNamespace", "PodUID", "Node",
        "NodeNameToVictims", "NodeNameToMetaVictims", "metadata", "spec", "items",
        "containers", "initContainers", "resources", "limits", "requests", "nvidia.com/gpu",
        "annotations", "gputopo.io/min-link", "gputopo.io/link-policy", "name", "uid",
        "Pods", "UID", "NumPDBViolations"]


def _mutate(value: Any, path: list[str], new: Any) -> Any:
    if not path:
        return new
    if isinstance(value, dict):
        out = dict(value)
        out[path[0]] = _mutate(value.get(path[0]), path[1:], new)
        return out
    return {path[0]: _mutate(None, path[1:], new)}


VALID = {
    "Pod": gpu_pod("p", gpus=2, annotations={"gputopo.io/min-link": "nvlink"}),
    "Nodes": None, "NodeNames": ["a", "b", "c"],
    "PodName": "p", "PodNamespace": "default", "PodUID": "uid-p", "Node": "a",
    "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": "uid-p"}], "NumPDBViolations": 0}},
}

bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), json_values).map(
        lambda t: json.dumps(_mutate(VALID, t[0], t[1])).encode()),
    st.tuples(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), json_values).map(
        lambda t: json.dumps(_mutate(VALID, ["Pod", *t[0]], t[1])).encode()),
    st.integers(min_value=1, max_value=200).map(lambda n: b'{"Pod":' * n),
    st.integers(min_value=70_000, max_value=90_000).map(lambda n: b" " * n),
)


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(verb=st.sampled_from(VERBS), body=bodies)
def test_malformed_bodies_never_break_the_server(
    live_server: tuple[str, int], verb: str, body: bytes
) -> None:
    status, data = post(live_server, f"/{verb}", body)
    assert status in (200, 400), (status, data[:300])
    answer = json.loads(data)
    if status == 400:
        assert isinstance(answer, dict) and answer["Error"]
    elif verb == "prioritize":
        assert isinstance(answer, list)
        assert all(type(h["Score"]) is int and 0 <= h["Score"] <= 10 for h in answer)
    elif verb in ("filter", "bind"):
        assert isinstance(answer["Error"], str)
        assert "internal error" not in answer["Error"], answer["Error"]
    else:
        assert isinstance(answer["NodeNameToMetaVictims"], dict)


def test_server_is_healthy_after_the_fuzzing(live_server: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*live_server, timeout=10)
    conn.request("GET", "/healthz")
    assert conn.getresponse().status == 200
