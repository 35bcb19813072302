"""The aiohttp application: route table, typed app keys, who may call what, lifetimes.

``_serve`` is the one place that turns a verb's failure into an answer: a bad body is
its HTTP status (400; 408 for a body too slow, 503 when too many large bodies are being
read) with ``{"Error": ...}``; a client that went away gets nothing and is counted as
``code="499"``; anything unexpected is logged and answered with the verb's safe reply
(filter/bind ``Error``, no scores, no preemption candidates), never a 500.

With ``client_ca_file`` the verbs need a client certificate signed by that CA (TLS
verifies it in the handshake; a client without one gets 403 here), and so do
``/topology`` and the page unless ``public_views``. ``/healthz``, ``/readyz`` and
``/metrics`` stay open: the kubelet and Prometheus have no certificate.
"""

from __future__ import annotations

import asyncio
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
from extender.decisions import Answer, Decisions
from extender.encoding import dumps_chunked, json_response
from extender.guard import GUARD, track_requests
from extender.intake import DIGEST, Intake, Shortcut
from extender.logs import Throttle, suppressed
from extender.metrics import CLIENT_GONE, CONTENT_TYPE_LATEST, Metrics
from extender.narrow import top_scored
from extender.page import render_page
from extender.patience import Patience
from extender.pods import RecentPods
from extender.prefetch import Prefetch
from extender.request import GpuRequest
from extender.views import node_view, summary, topology_document
from extender.wire import BadRequest, ClientGone, FilterArgs

__all__ = ["BINDER", "ConfigError", "build_app"]

log = logging.getLogger(__name__)

VerbHandler = Callable[[web.Request, Any], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BINDER = web.AppKey("binder", Binder)


class ConfigError(ValueError):
    """The configuration is unusable; the message lists every problem."""


def _fallback(verb: str, message: str) -> Any:
    if verb == "prioritize":
        return []
    if verb == "preempt":
        return {"NodeNameToMetaVictims": {}}
    if verb == "bind":
        return {"Error": message}
    return filter_verb.error_result(message)


def _has_client_certificate(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and bool(transport.get_extra_info("peercert"))


_NO_CERTIFICATE = ("this endpoint needs a client certificate signed by the extender's "
                   "--client-ca-file (kube-scheduler: tlsConfig.certFile and keyFile)")


#: Answers larger than this are written in pieces of this size (each awaited): no copy of
#: the whole answer in one call, and no whole answer waiting in the transport's buffer.
_PIECE = 256 * 1024


async def _send(request: web.Request, response: web.Response) -> web.StreamResponse:
    body = response.body
    if not isinstance(body, bytes) or len(body) <= 4 * _PIECE:
        return response
    stream = web.StreamResponse(status=response.status)
    stream.content_type = response.content_type
    stream.content_length = len(body)
    await stream.prepare(request)
    view = memoryview(body)
    for i in range(0, len(body), _PIECE):
        await stream.write(view[i:i + _PIECE])
    await stream.write_eof()
    return stream


def _serve(
    verb: str, handler: VerbHandler, *, digested: bool = False,
    shortcut: Callable[[bytes], bytes | None] | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        ext = request.app[CONTEXT]
        start = time.perf_counter()
        code: str | None = None
        try:
            if ext.cfg.authenticated and not _has_client_certificate(request):
                response = json_response({"Error": _NO_CERTIFICATE}, status=403)
            else:
                async with ext.intake.receive(request, digested=digested,
                                              shortcut=shortcut) as data:
                    if isinstance(data, Shortcut):  # answered from the raw body's digest
                        response = web.Response(body=data.body,
                                                content_type="application/json")
                    else:
                        response = await handler(request, data)
                    del data  # the intake frees a large body (see Intake.receive)
        except BadRequest as e:
            n = ext.throttle.allow(("body", verb, type(e).__name__, str(e).split(":", 1)[0]))
            if n is not None:
                log.info("bad request verb=%s peer=%s status=%d error=%r%s", verb,
                         request.remote, e.status, str(e)[:300], suppressed(n))
            response = json_response({"Error": str(e)}, status=e.status)
        except ClientGone as e:
            n = ext.throttle.allow(("gone", verb))
            if n is not None:
                log.info("client gone verb=%s peer=%s reason=%r%s", verb, request.remote,
                         str(e), suppressed(n))
            code = CLIENT_GONE
            response = web.Response(status=400)
        except Exception as e:
            log.exception("internal error verb=%s", verb)
            response = json_response(_fallback(verb, f"internal error in the extender: {e!r}"))
        ext.metrics.requests.labels(verb, code or str(response.status)).inc()
        try:
            return await _send(request, response)
        finally:
            ext.metrics.latency.labels(verb).observe(time.perf_counter() - start)

    return serve


def _view(handler: Handler) -> Handler:
    async def view(request: web.Request) -> web.StreamResponse:
        cfg = request.app[CONTEXT].cfg
        if cfg.authenticated and not cfg.public_views and not _has_client_certificate(request):
            return json_response({"Error": _NO_CERTIFICATE}, status=403)
        return await handler(request)

    return view


async def healthz(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    return json_response({"status": "ok", "mode": ext.cluster.mode})


async def readyz(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    ready, why = ext.cluster.readiness()
    body = {"ready": ready, "reason": why, "leader": ext.cluster.is_leader(),
            **summary(ext.state)}
    return json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    resp = web.Response(body=ext.metrics.exposition())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def topology_all(request: web.Request) -> web.StreamResponse:
    """Every node; each distinct topology once (``topologies`` by fingerprint).

    Built in slices that yield to the event loop, and encoded in pieces in a worker
    thread (the document is a fresh value), so a large cluster's dump never stalls
    filter calls.
    """
    ext = request.app[CONTEXT]
    doc: Any = None
    for doc in topology_document(ext.state):
        if doc is None:
            await asyncio.sleep(0)
    body = await ext.intake.run(dumps_chunked, doc)
    return await _send(request, web.Response(body=body, content_type="application/json"))


async def topology_node(request: web.Request) -> web.Response:
    state = request.app[CONTEXT].state
    name = request.match_info["node"]
    view = node_view(state, name)
    if view is None:
        return json_response({"Error": f"no GPU topology known for node {name!r}"}, status=404)
    return json_response(view)


def _int_arg(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key, "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return default
    return int(raw)


async def page(request: web.Request) -> web.Response:
    ext = request.app[CONTEXT]
    text = render_page(
        ext.state, mode=ext.cluster.mode,
        offset=_int_arg(request, "offset", 0),
        limit=max(1, _int_arg(request, "limit", ext.cfg.page_nodes)),
        node=request.query.get("node"),
    )
    # Names come from outside (GPUTopology objects, pods): never let one break the page.
    body = text.encode("utf-8", "backslashreplace")
    return web.Response(body=body, content_type="text/html", charset="utf-8")


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    ext = app[CONTEXT]
    guard = app.get(GUARD)
    ext.metrics.watch(connections=(lambda: len(guard)) if guard is not None else None,
                      large=lambda: ext.intake.large, waiting=lambda: ext.intake.waiting)
    if guard is not None:
        guard.on_close = lambda reason: ext.metrics.connections_closed.labels(reason).inc()
    await ext.cluster.start()
    try:
        yield
    finally:
        await ext.cluster.stop()
        ext.intake.close()


def build_app(
    cfg: ExtenderConfig, cluster: Cluster, *, decode_executor: Any = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The extender over ``cluster``; refuses an invalid ``cfg`` with every error listed.

    Serve it with ``extender.guard.start_server`` (as ``extender.main.serve`` does): that
    is what bounds connections and leaves request bodies to the intake.
    ``decode_executor``: where large bodies are inflated and decoded (default: a pool
    of ``cfg.large_bodies`` threads). ``clock``: where the verbs read ``now`` (seconds
    since the epoch) for delay scheduling (``extender.patience``).
    """
    errors = validate(cfg, need_source=False)
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(map(str, errors)))
    state = cluster.state
    m = Metrics(state)
    ext = Extender(
        cfg=cfg, cluster=cluster, state=state, metrics=m,
        decisions=Decisions(state, answer_bytes=cfg.answer_cache_bytes),
        intake=Intake(max_body_bytes=cfg.max_body_bytes, body_timeout_s=cfg.body_timeout_s,
                      large_bodies=cfg.large_bodies, executor=decode_executor),
        throttle=Throttle(),
        recent=RecentPods(),
        prefetch=Prefetch(state),
        patience=Patience(cfg.best_set_patience_s, clock=clock),
    )
    # The body limit is enforced (and answered with 400) by the intake; aiohttp's own
    # limit is set just above it so that check is the one that triggers.
    app = web.Application(client_max_size=cfg.max_body_bytes + 1,
                          middlewares=[track_requests])
    app[CONTEXT] = ext
    binder = app[BINDER] = Binder(cluster, state, cfg, m, recent=ext.recent,
                                  patience=ext.patience)

    async def bind_handler(request: web.Request, data: Any) -> web.Response:
        return await bind.handle(binder, data)

    def verb(fn: Callable[[Extender, Any], Awaitable[web.Response]]) -> VerbHandler:
        async def handler(request: web.Request, data: Any) -> web.Response:
            return await fn(ext, data)
        return handler

    narrow: filter_verb.Narrow | None = None
    if cfg.filter_top_scored:
        def narrow(args: FilterArgs, judged: GpuRequest,
                   scored: GpuRequest) -> Answer[filter_verb.FilterCounts]:
            return top_scored(ext.decisions, args, judged, scored)

    async def filter_handler(request: web.Request, data: Any) -> web.Response:
        response, everyone = await filter_verb.handle(ext, data, narrow=narrow)
        key = request.get(DIGEST)
        if everyone is not None and key is not None \
                and len(everyone.names) <= 2 * prioritize.SLICE:
            # kube-scheduler scores next, then asks prioritize about this very body.
            gpu, names = everyone.request, everyone.names
            ext.prefetch.offer(key, lambda: prioritize.answer(ext.decisions, gpu, names).body)
        return response

    def prefetched(key: bytes) -> bytes | None:
        body = ext.prefetch.take(key)
        m.prefetched.labels("miss" if body is None else "hit").inc()
        return body

    verbs: list[tuple[str, VerbHandler, dict[str, Any]]] = [
        ("filter", filter_handler, {"digested": True}),
        ("prioritize", verb(prioritize.handle), {"shortcut": prefetched}),
        ("bind", bind_handler, {}), ("preempt", verb(preempt.handle), {}),
    ]
    prefixes = [""] + ([cfg.path_prefix] if cfg.path_prefix else [])
    routes = []
    for prefix in prefixes:
        routes += [web.post(f"{prefix}/{name}", _serve(name, h, **kw)) for name, h, kw in verbs]
    routes += [
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/topology", _view(topology_all)),
        web.get("/topology/{node}", _view(topology_node)),
        web.get("/", _view(page)),
    ]
    app.add_routes(routes)
    app.cleanup_ctx.append(_lifetime)
    return app
