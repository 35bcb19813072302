"""The server's edge: connections, slow clients, and what the server logs about them.

aiohttp gives every connection a handler and waits as long as the client likes. The
extender adds, in :class:`ConnectionGuard` (wrapping each connection's protocol):

* **A header timeout**: once a client has sent the first byte of a request, its head
  must be complete within ``header_timeout_s``; **an idle timeout** closes keep-alive
  connections that send nothing for ``idle_timeout_s``. (The body has its own timeout,
  in ``extender.intake``; TLS handshakes are bounded by the header timeout.)
* **A connection limit**, kept below the process's file-descriptor limit: at the limit,
  a new connection makes room by closing the connection that has been idle (or stuck in
  its request head) longest; only when every connection is busy with a request is the
  new one turned away. Stalled clients can never lock out the scheduler.
* **Rate-limited logs** (``extender.logs.Throttle``): a client's malformed HTTP message is one
  WARNING line with the peer and the reason, no traceback (:class:`ServerLog`, the
  logger aiohttp's server writes to), and the same error again within 10 s is counted,
  not written (also for the event loop's own errors, such as ``accept()`` failing with
  "Too many open files").

:func:`start_server` runs an app with all of this; the extender's command and the tests
use it, so there is one way to serve.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from extender.logs import Throttle, suppressed

__all__ = [
    "GUARD",
    "ConnectionGuard",
    "GuardedSite",
    "ServerLog",
    "Serving",
    "loop_exception_handler",
    "start_server",
    "track_requests",
]

log = logging.getLogger("extender.http")


class ServerLog:
    """The logger aiohttp's server writes to (``RequestHandler(logger=...)``).

    A malformed HTTP message from a client is the client's problem: one WARNING line
    with the peer and the reason, throttled, no traceback. Anything else goes to the
    ``extender.http`` logger as it came (with its traceback), throttled by message.
    """

    def __init__(self, throttle: Throttle, logger: logging.Logger = log) -> None:
        self.throttle = throttle
        self.logger = logger

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError | ConnectionError):
            reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            n = self.throttle.allow(("client", type(exc).__name__))
            if n is not None:
                peer = args[0] if args and "%s" in msg else "unknown"
                self.logger.warning("bad request from client peer=%s reason=%r%s", peer,
                                    str(reason).strip()[:200] or type(exc).__name__,
                                    suppressed(n))
            return
        n = self.throttle.allow(("server", msg, type(exc).__name__))
        if n is not None:
            self.logger.error(msg + suppressed(n), *args, exc_info=exc_info, **kw)

    def debug(self, msg: str, *args: Any, **kw: Any) -> None:
        self.logger.debug(msg, *args, **kw)

    def info(self, msg: str, *args: Any, **kw: Any) -> None:
        self.logger.info(msg, *args, **kw)

    def warning(self, msg: str, *args: Any, **kw: Any) -> None:
        self.logger.warning(msg, *args, **kw)

    def error(self, msg: str, *args: Any, **kw: Any) -> None:
        self.logger.error(msg, *args, **kw)

    def isEnabledFor(self, level: int) -> bool:
        return self.logger.isEnabledFor(level)


def loop_exception_handler(
    throttle: Throttle, logger: logging.Logger = log
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """An event-loop exception handler that logs each kind of error once per interval
    (``accept()`` out of file descriptors would otherwise log on every retry)."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message") or "event loop error")
        n = throttle.allow(("loop", message, type(exc).__name__, getattr(exc, "errno", None)))
        if n is None:
            return
        if isinstance(exc, OSError):
            logger.error("%s error=%r%s", message, str(exc), suppressed(n))
        else:
            logger.error("%s%s", message, suppressed(n), exc_info=exc)

    return handle


# -- connections -------------------------------------------------------------------------
class _Conn:
    __slots__ = ("busy", "head", "inner", "timer", "transport")

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        self.transport = transport
        self.inner = inner
        self.busy = False
        #: Bytes of a request head arrived while idle (the header timeout runs).
        self.head = False
        self.timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Tracks every connection of a server; see the module docstring."""

    def __init__(
        self, *, max_connections: int, header_timeout_s: float, idle_timeout_s: float,
        on_close: Callable[[str], None] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.on_close = on_close
        #: Open connections, those idle longest first.
        self._conns: OrderedDict[asyncio.BaseTransport, _Conn] = OrderedDict()
        self.closed: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _Guarded(self, inner)

    # called by _Guarded
    def opened(self, conn: _Conn) -> bool:
        """Admit a new connection (making room if needed); False: turned away."""
        if len(self._conns) >= self.max_connections:
            victim = next((c for c in self._conns.values() if not c.busy), None)
            if victim is None:
                self._count("refused")
                return False
            self._close(victim, "evicted")
        self._conns[conn.transport] = conn
        self._arm(conn, self.idle_timeout_s, "idle_timeout")
        return True

    def data(self, conn: _Conn) -> None:
        if not conn.busy and not conn.head:
            conn.head = True
            self._arm(conn, self.header_timeout_s, "header_timeout")

    def lost(self, conn: _Conn) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        self._conns.pop(conn.transport, None)

    # called around each request (track_requests)
    def begin(self, transport: asyncio.BaseTransport | None) -> _Conn | None:
        conn = None if transport is None else self._conns.get(transport)
        if conn is not None:
            conn.busy = True
            conn.head = False
            if conn.timer is not None:
                conn.timer.cancel()
                conn.timer = None
        return conn

    def end(self, conn: _Conn | None) -> None:
        if conn is None or conn.transport not in self._conns:
            return
        conn.busy = False
        self._conns.move_to_end(conn.transport)
        self._arm(conn, self.idle_timeout_s, "idle_timeout")

    def _arm(self, conn: _Conn, delay: float, reason: str) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(delay, self._expire, conn, reason)

    def _expire(self, conn: _Conn, reason: str) -> None:
        conn.timer = None
        if not conn.busy and conn.transport in self._conns:
            self._close(conn, reason)

    def _close(self, conn: _Conn, reason: str) -> None:
        self._count(reason)
        self.lost(conn)
        conn.transport.abort()

    def _count(self, reason: str) -> None:
        self.closed[reason] = self.closed.get(reason, 0) + 1
        if self.on_close is not None:
            self.on_close(reason)


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told what happens."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        conn = _Conn(transport, self.inner)
        if not self.guard.opened(conn):
            transport.abort()
            return
        self.conn = conn
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            return
        self.guard.data(self.conn)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.conn is None else self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is None:
            return
        self.guard.lost(self.conn)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


GUARD = web.AppKey("guard", ConnectionGuard)


@web.middleware
async def track_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Marks the connection busy while its request is handled (never evicted, no timer)."""
    guard = request.app.get(GUARD)
    if guard is None:
        return await handler(request)
    conn = guard.begin(request.transport)
    try:
        return await handler(request)
    finally:
        guard.end(conn)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through a :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *, guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None, backlog: int = 128,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._guard = guard
        self._host = host
        self._port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        guard = self._guard
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: guard.protocol(server()), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog, reuse_address=True,
            ssl_handshake_timeout=guard.header_timeout_s if self._ssl_context else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Serving:
    runner: web.AppRunner
    guard: ConnectionGuard
    port: int


async def start_server(
    app: web.Application, *, host: str, port: int, ssl_context: ssl.SSLContext | None,
    max_connections: int, header_timeout_s: float, idle_timeout_s: float,
    throttle: Throttle | None = None, on_close: Callable[[str], None] | None = None,
) -> Serving:
    """Serve ``app`` on ``host:port`` behind a :class:`ConnectionGuard`; call
    ``serving.runner.cleanup()`` to stop. Bodies are not inflated by aiohttp (the
    extender's intake does it, within its limits)."""
    guard = ConnectionGuard(max_connections=max_connections, header_timeout_s=header_timeout_s,
                            idle_timeout_s=idle_timeout_s, on_close=on_close)
    app[GUARD] = guard
    runner = web.AppRunner(
        app, access_log=None, auto_decompress=False, keepalive_timeout=idle_timeout_s,
        logger=ServerLog(throttle or Throttle()),
    )
    await runner.setup()
    try:
        site = GuardedSite(runner, host, port, guard=guard, ssl_context=ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return Serving(runner=runner, guard=guard, port=int(bound))
