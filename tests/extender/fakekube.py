"""An in-memory Kubernetes API server speaking raw JSON, for KubeCluster and the Lease.

Enough of the API for the extender: pods (list/watch with the extender's field selector,
get, merge patch with a uid precondition, a Binding that merges its annotations and
checks the pod's UID, as kube-apiserver's does), GPUTopology objects, Leases (with
resourceVersion conflicts). Watches can be made to expire (410) to test resync. It
implements ``extender.kubeapi.KubeApi`` on the event loop; the test helpers that change
it (put_pod, ...) are plain calls that wake the watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from extender.kubeapi import ApiError, KubeApi, WatchExpired

_POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")
_BINDING = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/binding$")
_LEASE = re.compile(r"^/apis/coordination.k8s.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")
_TOPOS = "/apis/gputopo.io/v1alpha1/gputopologies"


def _pod_selected(pod: Mapping[str, Any] | None) -> bool:
    """spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed"""
    if pod is None:
        return False
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in ("Succeeded", "Failed")


class FakeKubeApi:
    def __init__(self) -> None:
        self.cond = contextlib.nullcontext()  # one thread: the event loop
        self._waiters: list[asyncio.Future[None]] = []
        self.rv = 100
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.topologies: dict[str, dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: dict[str, list[tuple[int, str, dict[str, Any]]]] = {"pods": [],
                                                                          "gputopologies": []}
        #: Watches from a resourceVersion below this get 410 Gone.
        self.compacted = 0
        self._expire = 0
        self._aborted = 0
        self.requests: list[tuple[str, str]] = []
        #: Errors to raise from the next requests (any path), in order.
        self.faults: list[Exception] = []

    # -- helpers for tests ----------------------------------------------------------------
    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _changed(self, timeout: float) -> None:
        w = asyncio.get_running_loop().create_future()
        self._waiters.append(w)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(w, timeout)

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        return obj

    def put_pod(self, pod: Mapping[str, Any]) -> None:
        with self.cond:
            m = pod["metadata"]
            key = (m["namespace"], m["name"])
            self._pod_changed(key, self._bump(copy.deepcopy(dict(pod))))

    def delete_pod(self, namespace: str, name: str) -> None:
        with self.cond:
            self._pod_changed((namespace, name), None)

    def put_topology(self, obj: Mapping[str, Any]) -> None:
        with self.cond:
            name = obj["metadata"]["name"]
            new = self._bump(copy.deepcopy(dict(obj)))
            kind = "MODIFIED" if name in self.topologies else "ADDED"
            self.topologies[name] = new
            self.events["gputopologies"].append((self.rv, kind, copy.deepcopy(new)))
            self._notify()

    def delete_topology(self, name: str) -> None:
        with self.cond:
            old = self.topologies.pop(name)
            self.rv += 1
            old["metadata"]["resourceVersion"] = str(self.rv)
            self.events["gputopologies"].append((self.rv, "DELETED", old))
            self._notify()

    def abort_watches(self) -> None:
        """Open watches end (without error) at their next wake-up."""
        with self.cond:
            self._aborted += 1
            self._notify()

    def expire_watches(self) -> None:
        """Every open watch ends with 410, and resuming from older versions fails too."""
        with self.cond:
            self.rv += 1
            self.compacted = self.rv
            self._expire += 1
            self._notify()

    def _pod_changed(self, key: tuple[str, str], new: dict[str, Any] | None) -> None:
        old = self.pods.get(key)
        if new is None:
            self.pods.pop(key, None)
            self.rv += 1
            if old is not None:
                old = copy.deepcopy(old)
                old["metadata"]["resourceVersion"] = str(self.rv)
        else:
            self.pods[key] = new
        before, after = _pod_selected(old), _pod_selected(new)
        if before or after:
            kind = ("DELETED" if not after else "ADDED" if not before else "MODIFIED")
            obj = copy.deepcopy(new if new is not None and after else (new or old))
            self.events["pods"].append((self.rv, kind, obj))  # type: ignore[arg-type]
        self._notify()

    # -- KubeApi --------------------------------------------------------------------------
    async def close(self) -> None:
        self.abort_watches()

    async def list(self, path: str, *, query: Mapping[str, str] | None = None
                   ) -> tuple[list[dict[str, Any]], str]:
        page = await self.request("GET", path, query=query)
        return list(page["items"]), str(page["metadata"]["resourceVersion"])

    async def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Any:
        with self.cond:
            self.requests.append((method, path))
            if self.faults:
                raise self.faults.pop(0)
            if path == "/api/v1/pods" and method == "GET":
                items = [copy.deepcopy(p) for p in self.pods.values() if _pod_selected(p)]
                return {"metadata": {"resourceVersion": str(self.rv)}, "items": items}
            if path == _TOPOS and method == "GET":
                return {"metadata": {"resourceVersion": str(self.rv)},
                        "items": [copy.deepcopy(t) for t in self.topologies.values()]}
            if m := _BINDING.match(path):
                return self._bind(m.group(1), m.group(2), body)
            if m := _POD.match(path):
                return self._pod(method, (m.group(1), m.group(2)), body)
            if m := _LEASE.match(path):
                return self._lease(method, m.group(1), m.group(2), body)
            raise ApiError(404, f"no route {method} {path}")

    def _pod(self, method: str, key: tuple[str, str], body: Any) -> Any:
        pod = self.pods.get(key)
        if pod is None:
            raise ApiError(404, f'pods "{key[1]}" not found')
        if method == "GET":
            return copy.deepcopy(pod)
        if method == "PATCH":
            meta = (body or {}).get("metadata") or {}
            if "uid" in meta and meta["uid"] != pod["metadata"].get("uid"):
                raise ApiError(409, "Precondition failed: UID in precondition")
            new = copy.deepcopy(pod)
            new["metadata"].setdefault("annotations", {}).update(meta.get("annotations") or {})
            self._pod_changed(key, self._bump(new))
            return copy.deepcopy(new)
        raise ApiError(405, method)

    def _bind(self, namespace: str, name: str, body: Any) -> Any:
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise ApiError(404, f'pods "{name}" not found')
        meta = (body or {}).get("metadata") or {}
        uid = meta.get("uid")
        if uid and uid != pod["metadata"].get("uid"):
            raise ApiError(409, f"Operation cannot be fulfilled on pods/binding \"{name}\": "
                                "Precondition failed: UID in precondition")
        if (pod.get("spec") or {}).get("nodeName"):
            raise ApiError(409, f"pod {name} is already assigned to node "
                                f"{pod['spec']['nodeName']!r}")
        new = copy.deepcopy(pod)
        new.setdefault("spec", {})["nodeName"] = body["target"]["name"]
        # kube-apiserver's BindingREST merges the Binding's annotations into the pod.
        if meta.get("annotations"):
            new["metadata"].setdefault("annotations", {}).update(meta["annotations"])
        self._pod_changed((namespace, name), self._bump(new))
        return {"kind": "Status", "status": "Success"}

    def _lease(self, method: str, namespace: str, name: str | None, body: Any) -> Any:
        if method == "POST":
            key = (namespace, body["metadata"]["name"])
            if key in self.leases:
                raise ApiError(409, "already exists")
            self.leases[key] = self._bump(copy.deepcopy(body))
            return copy.deepcopy(self.leases[key])
        key = (namespace, name or "")
        lease = self.leases.get(key)
        if lease is None:
            raise ApiError(404, "lease not found")
        if method == "GET":
            return copy.deepcopy(lease)
        if method == "PUT":
            if body["metadata"].get("resourceVersion") != lease["metadata"]["resourceVersion"]:
                raise ApiError(409, "the object has been modified")
            self.leases[key] = self._bump(copy.deepcopy(body))
            return copy.deepcopy(self.leases[key])
        raise ApiError(405, method)

    async def watch(self, path: str, *, query: Mapping[str, str], timeout_s: float = 300.0
                    ) -> AsyncIterator[dict[str, Any]]:
        kind = "pods" if path == "/api/v1/pods" else "gputopologies"
        since = int(query.get("resourceVersion") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if since < self.compacted:
            raise WatchExpired(f"too old resource version: {since}")
        generation = self._expire
        aborted = self._aborted
        while loop.time() < deadline:
            if self._aborted != aborted:
                return
            if self._expire != generation:
                raise WatchExpired("watch expired")
            pending = [e for e in self.events[kind] if e[0] > since]
            if not pending:
                await self._changed(deadline - loop.time())
                continue
            for rv, kind_, obj in pending:
                since = rv
                yield {"type": kind_, "object": copy.deepcopy(obj)}


_: type[KubeApi] = FakeKubeApi
