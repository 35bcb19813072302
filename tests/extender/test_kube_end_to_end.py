"""API mode end to end: the extender's own command-line wiring (kubeconfig, Lease, watches)
against an API server over real HTTP, and kube-scheduler-like calls over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from extender.kube import KubeCluster
from extender.kubeapi import ApiError, WatchExpired
from extender.main import make_cluster, parse_args
from topology.handoff import decode_gpu_sets, gputopology_object
from topology.names import ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .fakekube import FakeKubeApi
from .helpers import gpu_pod, serving, serving_app, until


def api_server(fake: FakeKubeApi) -> web.Application:
    """FakeKubeApi behind HTTP, as the extender's client talks to an API server."""

    async def handle(request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Authorization") == "Bearer test-token"
        raw = await request.read()
        body = json.loads(raw) if raw else None
        query = dict(request.query)
        if query.pop("watch", None) == "true":
            query.pop("timeoutSeconds", None)
            resp = web.StreamResponse()
            await resp.prepare(request)
            try:
                # like an API server ending watches early: the client must watch again
                async for event in fake.watch(request.path, query=query, timeout_s=1):
                    await resp.write(json.dumps(event).encode() + b"\n")
            except WatchExpired as e:
                error = {"type": "ERROR", "object": {"code": 410, "message": str(e)}}
                await resp.write(json.dumps(error).encode() + b"\n")
            await resp.write_eof()
            return resp
        try:
            result = await fake.request(request.method, request.path, query=query, body=body)
        except ApiError as e:
            return web.json_response({"kind": "Status", "code": e.status,
                                      "message": str(e)}, status=e.status)
        return web.json_response(result)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def changes(cluster: KubeCluster) -> tuple[Awaitable[None], ...]:
    """What may change the answer: a list or watch event applied, a Lease round."""
    assert cluster.elector is not None
    return (cluster.wait_applied(cluster.applied),
            cluster.elector.wait_rounds(cluster.elector.rounds))


async def test_api_mode_filters_binds_and_elects_a_leader(tmp_path: Path) -> None:
    fake = FakeKubeApi()
    fake.put_topology(gputopology_object("gpu-a", preset("dgx1-v100")))
    fake.put_topology(gputopology_object("gpu-b", preset("pcie-8gpu-sys")))
    pod = gpu_pod("trainer", gpus=4, annotations={"gputopo.io/min-link": "nvlink",
                                                  "gputopo.io/link-policy": "required"})
    fake.put_pod(pod)
    async with serving_app(api_server(fake)) as api_url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": api_url}}],
            "users": [{"name": "t", "user": {"token": "test-token"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        }))
        cfg = parse_args(["--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
                          "--port", "0", "--lease-namespace", "gputopo-system",
                          "--identity", "replica-1", "--retry-period", "0.2"])
        cluster = make_cluster(cfg)
        assert isinstance(cluster, KubeCluster)
        async with serving(cluster, cfg) as url, aiohttp.ClientSession() as s:

            async def ready() -> bool:
                async with s.get(f"{url}/readyz") as r:
                    return r.status == 200

            await until(ready, waits=lambda: changes(cluster), timeout=60,
                        why=lambda: (cluster.readiness(), fake.requests[-5:]))
            lease = fake.leases[("gputopo-system", "gputopo-extender")]
            assert lease["spec"]["holderIdentity"] == "replica-1"

            body = json.dumps({"Pod": pod, "Nodes": None, "NodeNames": ["gpu-a", "gpu-b"]})
            async with s.post(f"{url}/filter", data=body) as r:
                answer = await r.json()
            assert answer["NodeNames"] == ["gpu-a"]
            assert "no NVLink ring of 4" in answer["FailedAndUnresolvableNodes"]["gpu-b"]

            bind = json.dumps({"PodName": "trainer", "PodNamespace": "default",
                               "PodUID": pod["metadata"]["uid"], "Node": "gpu-a"})
            async with s.post(f"{url}/bind", data=bind) as r:
                assert await r.json() == {"Error": ""}
            stored = fake.pods[("default", "trainer")]
            assert stored["spec"]["nodeName"] == "gpu-a"
            # One write: the Binding carried the set; the pod was neither read nor patched.
            pod_path = "/api/v1/namespaces/default/pods/trainer"
            assert [r for r in fake.requests if r[1].startswith(pod_path)] == [
                ("POST", pod_path + "/binding")]
            sets = decode_gpu_sets(ASSIGNED_GPUS_ANNOTATION,
                                   stored["metadata"]["annotations"][ASSIGNED_GPUS_ANNOTATION])
            assert len(sets["main"]) == 4

            # the watch brings the bound pod back; the node shows the 4 GPUs as used
            async def used() -> bool:
                async with s.get(f"{url}/topology/gpu-a") as r:
                    view = await r.json()
                return len(view["used"]) == 4 and view["pods"][0]["source"] == "assigned"

            await until(used, waits=lambda: changes(cluster), timeout=60)
        # on shutdown the Lease is released for the standby
        assert fake.leases[("gputopo-system", "gputopo-extender")]["spec"][
            "holderIdentity"] == ""
