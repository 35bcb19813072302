"""KubeCluster against a fake API server: resync after 410, readiness; the Lease election."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from extender.kube import KubeCluster
from extender.kubeapi import ApiError, WatchExpired, load_api
from extender.leader import LeaseElector
from topology.handoff import gputopology_object
from topology.names import ASSIGNED_GPUS_ANNOTATION
from topology.presets import preset

from .fakekube import FakeKubeApi
from .helpers import gpu_pod, serving_app
from .helpers import until as until_events
from .test_cluster_contract import ids


async def until(cluster: KubeCluster, check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds, looking again after each list or event applied."""
    await until_events(check, waits=lambda: (cluster.wait_applied(cluster.applied),))


def bound(name: str, node: str, *gpus: int) -> dict:
    return gpu_pod(name, gpus=len(gpus), node=node,
                   annotations={ASSIGNED_GPUS_ANNOTATION: ids(*gpus)})


async def test_expired_watch_lists_again_and_catches_up() -> None:
    api = FakeKubeApi()
    api.put_topology(gputopology_object("n1", preset("hgx-h100")))
    api.put_pod(bound("a", "n1", 0, 1))
    cluster = KubeCluster(api, watch_timeout_s=5, backoff_s=(0.05,))
    await cluster.start()
    try:
        await until(cluster, lambda: cluster.readiness()[0])
        assert cluster.lists == {"gputopologies": 1, "pods": 1}
        api.expire_watches()
        # while the watches are expired, things change
        api.delete_pod("default", "a")
        api.put_pod(bound("b", "n1", 7))
        await until(cluster, lambda: cluster.lists["pods"] >= 2
                    and cluster.lists["gputopologies"] >= 2)
        await until(cluster, lambda: set(cluster.state.holdings) == {"uid-b"})
        assert cluster.state.nodes["n1"].free_mask == 0x7F
    finally:
        await cluster.stop()


async def test_api_errors_are_retried_and_readiness_says_why() -> None:
    api = FakeKubeApi()
    api.faults = [ApiError(500, "etcdserver: leader changed")] * 3
    cluster = KubeCluster(api, watch_timeout_s=1, backoff_s=(0.05,))
    ready, why = cluster.readiness()
    assert not ready and "waiting for the first list" in why
    await cluster.start()
    try:
        await until(cluster, lambda: cluster.readiness()[0])
    finally:
        await cluster.stop()


async def test_terminal_pods_leave_the_selector_and_release() -> None:
    api = FakeKubeApi()
    api.put_topology(gputopology_object("n1", preset("gb200-4gpu")))
    pod = bound("a", "n1", 0, 1, 2, 3)
    api.put_pod(pod)
    cluster = KubeCluster(api, watch_timeout_s=5)
    await cluster.start()
    try:
        await until(cluster, lambda: cluster.readiness()[0]
                    and cluster.state.nodes["n1"].free_mask == 0)
        pod["status"]["phase"] = "Failed"
        api.put_pod(pod)
        await until(cluster, lambda: cluster.state.nodes["n1"].free_mask == 0xF)
    finally:
        await cluster.stop()


async def test_unreadable_gputopology_is_skipped() -> None:
    api = FakeKubeApi()
    api.put_topology({"metadata": {"name": "bad"}, "spec": {"topology": {"schema": "x"}}})
    api.put_topology(gputopology_object("good", preset("gb200-4gpu")))
    cluster = KubeCluster(api, watch_timeout_s=1)
    await cluster.start()
    try:
        await until(cluster, lambda: cluster.readiness()[0])
        assert set(cluster.state.nodes) == {"good"}
    finally:
        await cluster.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def electors(api: FakeKubeApi, clock: Clock) -> tuple[LeaseElector, LeaseElector]:
    def make(identity: str) -> LeaseElector:
        return LeaseElector(api, name="gputopo-extender", namespace="kube-system",
                            identity=identity, lease_duration_s=15, renew_deadline_s=10,
                            retry_period_s=2, clock=clock, wall_clock=clock)
    return make("a"), make("b")


async def test_one_leader_at_a_time_and_failover_after_the_lease_expires() -> None:
    api, clock = FakeKubeApi(), Clock()
    a, b = electors(api, clock)
    assert await a.try_acquire_or_renew() and a.is_leader()
    assert not await b.try_acquire_or_renew() and not b.is_leader()
    assert "held by a" in b.describe()
    clock.now += 5
    assert await a.try_acquire_or_renew() and not await b.try_acquire_or_renew()
    # a stops renewing (crashed, partitioned): b waits a full lease duration since it
    # last saw the record change, then takes over; a no longer calls itself leader.
    clock.now += 11
    assert not a.is_leader()
    assert not await b.try_acquire_or_renew()
    clock.now += 5
    assert await b.try_acquire_or_renew() and b.is_leader()
    lease = api.leases[("kube-system", "gputopo-extender")]
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    # a comes back: the lease is b's
    assert not await a.try_acquire_or_renew()


async def test_release_lets_the_standby_take_over_at_once() -> None:
    api, clock = FakeKubeApi(), Clock()
    a, b = electors(api, clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert not a.is_leader()
    assert await b.try_acquire_or_renew()


class RacingApi(FakeKubeApi):
    """Another candidate writes the Lease between our read and our write."""

    async def request(self, method: str, path: str, **kw: object) -> object:
        if method == "PUT" and "/leases/" in path:
            lease = self.leases[("kube-system", "gputopo-extender")]
            lease["metadata"]["resourceVersion"] = "written-by-someone-else"
        return await super().request(method, path, **kw)  # type: ignore[arg-type]


async def test_a_write_on_a_stale_lease_loses() -> None:
    api, clock = RacingApi(), Clock()
    a, b = electors(api, clock)
    assert await a.try_acquire_or_renew()  # created with POST
    assert not await b.try_acquire_or_renew()  # b sees a's lease
    clock.now += 20
    # b's takeover PUT carries a resourceVersion that is no longer current: 409, no lead
    assert not await b.try_acquire_or_renew() and not b.is_leader()


async def test_standby_is_not_ready_and_refuses_binds() -> None:
    api = FakeKubeApi()
    api.put_topology(gputopology_object("n1", preset("hgx-h100")))
    clock = Clock()
    holder, _ = electors(api, clock)
    assert await holder.try_acquire_or_renew()
    standby = LeaseElector(api, name="gputopo-extender", namespace="kube-system",
                           identity="standby", retry_period_s=0.05, renew_deadline_s=0.1,
                           lease_duration_s=60)
    cluster = KubeCluster(api, elector=standby, watch_timeout_s=1)
    await cluster.start()
    try:
        await until(cluster, lambda: cluster.state.synced)
        await standby.wait_rounds(standby.rounds + 1)  # a full round after the sync
        ready, why = cluster.readiness()
        assert not ready and "standby" in why and "held by a" in why
        assert not cluster.is_leader()
    finally:
        await cluster.stop()


async def test_api_client_speaks_http_with_the_kubeconfig_credentials(tmp_path: Path) -> None:
    """AsyncKubeApi over a real HTTP server: auth, JSON bodies, errors, watch, 410."""
    seen: list[tuple[str, str, str | None, str | None]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.text()
        seen.append((request.method, request.path_qs, request.headers.get("Authorization"),
                     request.headers.get("Content-Type")))
        if request.path.endswith("/pods/missing"):
            return web.json_response({"kind": "Status", "message": 'pods "missing" not found',
                                      "code": 404}, status=404)
        if request.query.get("watch") == "true":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for event in ({"type": "ADDED", "object": {"metadata": {"name": "x"}}},
                          {"type": "ERROR", "object": {"code": 410, "message": "too old"}}):
                await resp.write(json.dumps(event).encode() + b"\n")
            await resp.write_eof()
            return resp
        return web.json_response({"method": request.method, "body": body})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    async with serving_app(app) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "t",
            "clusters": [{"name": "t", "cluster": {"server": url}}],
            "users": [{"name": "t", "user": {"token": "t0k"}}],
            "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        }))
        api = load_api(kubeconfig=str(kubeconfig), in_cluster=False)
        got = await api.request("PATCH", "/api/v1/namespaces/d/pods/p",
                                body={"metadata": {"uid": "u"}},
                                content_type="application/merge-patch+json")
        assert got["method"] == "PATCH" and json.loads(got["body"]) == {"metadata": {"uid": "u"}}
        with pytest.raises(ApiError) as e:
            await api.request("GET", "/api/v1/namespaces/d/pods/missing")
        assert e.value.status == 404 and "not found" in str(e.value)

        events = []
        with pytest.raises(WatchExpired):
            async for event in api.watch("/api/v1/pods", query={"resourceVersion": "5"}):
                events.append(event)
        await api.close()
    assert events == [{"type": "ADDED", "object": {"metadata": {"name": "x"}}}]
    assert all(auth == "Bearer t0k" for _, _, auth, _ in seen)
    assert seen[0][3] == "application/merge-patch+json"
    assert "watch=true" in seen[-1][1] and "resourceVersion=5" in seen[-1][1]
