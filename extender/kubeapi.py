"""The Kubernetes API over aiohttp, on the event loop: requests, paged lists, watches.

The one module that imports ``kubernetes``, and only for its credential loaders.

Credentials and TLS come from the ``kubernetes`` package's own loaders, so a kubeconfig
with client certificates, a token, a token file or an exec plugin, and the pod's
service account (whose projected token rotates), work as they do for ``kubectl``; the
current bearer token is asked of the loaded configuration on every request, which
refreshes expiring ones. Nothing blocks the loop and no thread pool sits between the
extender and the API server.

Two connection pools: one for requests, bounded (``max_requests`` at once, so a burst of
binds cannot open hundreds of connections), and one for the long-lived watches. Watch
events are decoded one line at a time with a size bound, and only as JSON dicts (no
client model objects); callers keep the few fields they need.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlencode

import aiohttp

__all__ = [
    "ApiCredentials",
    "ApiError",
    "ApiUnreachable",
    "AsyncKubeApi",
    "KubeApi",
    "WatchExpired",
    "load_api",
    "load_credentials",
]

log = logging.getLogger(__name__)

#: One watch event larger than this ends the watch (the caller lists again).
MAX_EVENT_BYTES: Final = 32 << 20
_LIST_PAGE: Final = 500


class ApiError(Exception):
    """A non-2xx answer from the API server (``status``, its Status ``reason``)."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def conflict(self) -> bool:
        return self.status == 409


class ApiUnreachable(ApiError):
    """No answer at all: connection refused, reset, or timed out."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message, "Unreachable")


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class KubeApi(Protocol):
    """Raw JSON requests, paged lists and watches on the API server, on the event loop.

    :class:`AsyncKubeApi` is the real one; tests put an in-memory API server behind it.
    """

    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json",
    ) -> Any:
        """The decoded JSON answer; raises :class:`ApiError` (:class:`ApiUnreachable`)."""
        ...

    async def list(
        self, path: str, *, query: Mapping[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item and the list's resourceVersion."""
        ...

    def watch(
        self, path: str, *, query: Mapping[str, str], timeout_s: float = 300.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events as dicts; raises :class:`WatchExpired` on 410."""
        ...

    async def close(self) -> None:
        """End every open watch and connection (shutdown)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiCredentials:
    """Where the API server is and how to reach it."""

    server: str
    ssl: ssl.SSLContext | bool
    #: The ``Authorization`` header value now (None: none); called per request.
    authorization: Callable[[], str | None] = lambda: None


def load_credentials(*, kubeconfig: str | None, in_cluster: bool) -> ApiCredentials:
    """Credentials from a kubeconfig file, or the pod's service account."""
    from kubernetes import client, config

    c = client.Configuration()
    if in_cluster:
        config.load_incluster_config(client_configuration=c)  # type: ignore[no-untyped-call]
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=c)
    return credentials_from_configuration(c)


def load_api(*, kubeconfig: str | None, in_cluster: bool, max_requests: int = 32
             ) -> AsyncKubeApi:
    """The API client for a kubeconfig file, or the pod's service account."""
    return AsyncKubeApi(load_credentials(kubeconfig=kubeconfig, in_cluster=in_cluster),
                        max_requests=max_requests)


def credentials_from_configuration(c: Any) -> ApiCredentials:
    """An ``ApiCredentials`` over a loaded ``kubernetes.client.Configuration``."""
    context: ssl.SSLContext | bool
    if not str(c.host).startswith("https"):
        context = False
    elif not c.verify_ssl:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context = ssl.create_default_context(cafile=c.ssl_ca_cert or None)
        if c.tls_server_name or c.assert_hostname is False:
            # The server's certificate names another host (tls-server-name): check the
            # chain, and the name below by server_hostname.
            context.check_hostname = bool(c.tls_server_name)
    if c.cert_file:
        assert isinstance(context, ssl.SSLContext)
        context.load_cert_chain(c.cert_file, c.key_file or None)

    def authorization() -> str | None:
        token = c.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token and not token.lower().startswith(("bearer ", "basic ")):
            token = f"Bearer {token}"
        return str(token) if token else None

    return ApiCredentials(server=str(c.host).rstrip("/"), ssl=context,
                          authorization=authorization)


def status_message(data: bytes) -> tuple[str, str]:
    """``(message, reason)`` of a Status body (or the first bytes of anything else)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace"), ""
    if not isinstance(obj, dict):
        return str(obj)[:200], ""
    return str(obj.get("message") or obj.get("reason") or ""), str(obj.get("reason") or "")


class AsyncKubeApi:
    """Raw JSON requests and watches on the Kubernetes API (one instance per process)."""

    def __init__(
        self, credentials: ApiCredentials, *, max_requests: int = 32,
        request_timeout_s: float = 30.0, user_agent: str = "gputopo-extender",
    ) -> None:
        self.credentials = credentials
        self.max_requests = max_requests
        self.request_timeout_s = request_timeout_s
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_requests,
                                               ssl=self.credentials.ssl),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout_s),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"})
        if self._watch_session is None or self._watch_session.closed:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16, ssl=self.credentials.ssl),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"})
        return self._session, self._watch_session

    async def close(self) -> None:
        """Close both pools; open watches end (their iterators raise ``ApiUnreachable``)."""
        for s in (self._session, self._watch_session):
            if s is not None and not s.closed:
                await s.close()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {}
        auth = self.credentials.authorization()
        if auth:
            headers["Authorization"] = auth
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        return self.credentials.server + path + (f"?{urlencode(query)}" if query else "")

    async def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json",
    ) -> Any:
        """The decoded JSON answer; raises :class:`ApiError` (:class:`ApiUnreachable`)."""
        session, _ = self._sessions()
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            async with session.request(
                method, self.url(path, query), data=data,
                headers=self._headers(content_type if data is not None else None),
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ApiUnreachable(f"{method} {path}: {type(e).__name__}: {e}") from None
        if not 200 <= status <= 299:
            message, reason = status_message(payload)
            raise ApiError(status, message, reason)
        return json.loads(payload) if payload else None

    async def list(
        self, path: str, *, query: Mapping[str, str] | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every item, page by page; and the list's resourceVersion (to watch from)."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            q = {**(query or {}), "limit": str(_LIST_PAGE)}
            if cont:
                q["continue"] = cont
            page = await self.request("GET", path, query=q)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    async def watch(
        self, path: str, *, query: Mapping[str, str], timeout_s: float = 300.0,
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events as dicts, until the server ends the watch.

        Raises :class:`WatchExpired` on 410 Gone (as a status or an ERROR event),
        :class:`ApiError` on other errors, :class:`ApiUnreachable` when the connection
        fails or goes silent for longer than the watch's own time-out.
        """
        _, session = self._sessions()
        q = {**query, "watch": "true", "timeoutSeconds": str(int(timeout_s))}
        try:
            async with session.get(
                self.url(path, q), headers=self._headers(None),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                              sock_read=timeout_s + 30),
            ) as resp:
                if resp.status == 410:
                    raise WatchExpired(status_message(await resp.read())[0])
                if not 200 <= resp.status <= 299:
                    message, reason = status_message(await resp.read())
                    raise ApiError(resp.status, message, reason)
                async for line in _lines(resp.content):
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        obj = event.get("object") or {}
                        if obj.get("code") == 410:
                            raise WatchExpired(str(obj.get("message") or "too old"))
                        raise ApiError(int(obj.get("code") or 500), str(obj.get("message")))
                    yield event
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise ApiUnreachable(f"watch {path}: {type(e).__name__}: {e}") from None


async def _lines(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Newline-delimited records of ``stream``, each at most ``MAX_EVENT_BYTES``."""
    buf = bytearray()
    async for chunk in stream.iter_any():
        buf += chunk
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            if end > start:
                yield bytes(buf[start:end])
            start = end + 1
        del buf[:start]
        if len(buf) > MAX_EVENT_BYTES:
            raise ApiError(500, f"watch event over {MAX_EVENT_BYTES} bytes")
    if buf.strip():
        yield bytes(buf)



_: type[KubeApi] = AsyncKubeApi
