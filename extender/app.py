"""The aiohttp application: route table, typed app keys, the cluster's lifetime.

``_serve`` is the one place that turns a verb's failure into an answer: a bad body is
HTTP 400 with ``{"Error": ...}``; anything unexpected is logged and answered with the
verb's safe reply (filter/bind ``Error``, no scores, no preemption candidates), never a
500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from extender import bind, preempt, prioritize
from extender import filter as filter_verb
from extender.bind import Binder
from extender.cluster import Cluster
from extender.config import ExtenderConfig, validate
from extender.context import CONTEXT, Extender
from extender.metrics import CONTENT_TYPE_LATEST, Metrics
from extender.page import render_page
from extender.wire import BadRequest, bad_request, json_response
from topology.serialize import dump

__all__ = ["ConfigError", "build_app"]

log = logging.getLogger(__name__)

VerbHandler = Callable[[web.Request, bytes], Awaitable[web.Response]]


class ConfigError(ValueError):
    """The configuration is unusable; the message lists every problem."""


def _fallback(verb: str, message: str) -> Any:
    if verb == "prioritize":
        return []
    if verb == "preempt":
        return {"NodeNameToMetaVictims": {}}
    if verb == "bind":
        return {"Error": message}
    return {"Nodes": None, "NodeNames": None, "FailedNodes": {},
            "FailedAndUnresolvableNodes": {}, "Error": message}


async def _read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise BadRequest(f"request body of {length} bytes is over the limit of {limit} bytes "
                         "(--max-body-bytes)")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"request body is over the limit of {limit} bytes "
                         "(--max-body-bytes)") from None


def _serve(verb: str, handler: VerbHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        ext = request.app[CONTEXT]
        start = time.perf_counter()
        try:
            body = await _read_body(request, ext.cfg.max_body_bytes)
            response = await handler(request, body)
        except BadRequest as e:
            log.info("bad request verb=%s peer=%s error=%r", verb, request.remote, str(e))
            response = bad_request(e)
        except Exception as e:
            log.exception("internal error verb=%s", verb)
            response = json_response(_fallback(verb, f"internal error in the extender: {e!r}"))
        ext.metrics.latency.labels(verb).observe(time.perf_counter() - start)
        ext.metrics.requests.labels(verb, str(response.status)).inc()
        return response

    return serve


async def healthz(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    return json_response({"status": "ok", "mode": ext.cluster.mode})


async def readyz(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    ready, why = ext.cluster.readiness()
    body = {"ready": ready, "reason": why, "leader": ext.cluster.is_leader(),
            **ext.state.summary()}
    return json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    resp = web.Response(body=ext.metrics.exposition())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def topology_all(request: web.Request) -> web.Response:
    """Every node; each distinct topology once (``topologies`` by fingerprint).

    Built in slices that yield to the event loop, and encoded in a worker thread (the
    answer is a fresh value), so a large cluster's dump never stalls filter calls.
    """
    state = request.app[CONTEXT].state
    nodes: list[Any] = []
    topologies: dict[str, Any] = {}
    for k, name in enumerate(sorted(state.nodes)):
        node = state.nodes.get(name)
        if node is None:  # removed while we yielded
            continue
        nodes.append(state.node_view(name, with_topology=False))
        fp = node.topology.fingerprint
        if fp not in topologies:
            topologies[fp] = dump(node.topology)
        if k % 250 == 249:
            await asyncio.sleep(0)
    body = {"summary": state.summary(), "topologies": topologies, "nodes": nodes}
    data = await asyncio.to_thread(json.dumps, body, separators=(",", ":"))
    return web.Response(body=data.encode(), content_type="application/json")


async def topology_node(request: web.Request) -> web.Response:
    state = request.app[CONTEXT].state
    name = request.match_info["node"]
    view = state.node_view(name)
    if view is None:
        return json_response({"Error": f"no GPU topology known for node {name!r}"}, status=404)
    return json_response(view)


def _int_arg(request: web.Request, key: str, default: int) -> int:
    try:
        return max(0, int(request.query.get(key, default)))
    except ValueError:
        return default


async def page(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    text = render_page(
        ext.state, mode=ext.cluster.mode,
        offset=_int_arg(request, "offset", 0),
        limit=max(1, _int_arg(request, "limit", ext.cfg.page_nodes)),
        node=request.query.get("node"),
    )
    return web.Response(text=text, content_type="text/html", charset="utf-8")


async def _cluster_lifetime(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CONTEXT].cluster
    await cluster.start()
    try:
        yield
    finally:
        await cluster.stop()


def build_app(cfg: ExtenderConfig, cluster: Cluster) -> web.Application:
    """The extender over ``cluster``; refuses an invalid ``cfg`` with every error listed."""
    errors = validate(cfg, need_source=False)
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(map(str, errors)))
    state = cluster.state
    m = Metrics(state)
    ext = Extender(cfg=cfg, cluster=cluster, state=state, metrics=m,
                   binder=Binder(cluster, state, cfg, m))
    # The body limit is enforced (and answered with 400) by _read_body; aiohttp's own
    # limit is set just above it so that check is the one that triggers.
    app = web.Application(client_max_size=cfg.max_body_bytes + 1)
    app[CONTEXT] = ext
    verbs: list[tuple[str, VerbHandler]] = [
        ("filter", filter_verb.handle), ("prioritize", prioritize.handle),
        ("bind", bind.handle), ("preempt", preempt.handle),
    ]
    prefixes = [""] + ([cfg.path_prefix] if cfg.path_prefix else [])
    routes = []
    for prefix in prefixes:
        routes += [web.post(f"{prefix}/{verb}", _serve(verb, h)) for verb, h in verbs]
    routes += [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/topology", topology_all),
        web.get("/topology/{node}", topology_node),
        web.get("/", page),
    ]
    app.add_routes(routes)
    app.cleanup_ctx.append(_cluster_lifetime)
    return app
