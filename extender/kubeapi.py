"""The Kubernetes API as raw JSON: requests and watches over the ``kubernetes`` client.

The one module that imports ``kubernetes``: credentials from a kubeconfig or the pod's
service account, auth, TLS and exec plugins come from its ``ApiClient``; bodies are
handled raw (no model deserialization): faster, and nothing is lost. Blocking; the
callers run it in threads. :class:`KubeApi` is the Protocol both the API-backed cluster
and the Lease election use (tests put an in-memory API server behind it).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final, Protocol

__all__ = ["ApiClientKube", "ApiError", "KubeApi", "WatchExpired", "load_api"]

_WATCH_TIMEOUT_S: Final = 300


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class KubeApi(Protocol):
    """Raw JSON requests to the API server (blocking; called from threads)."""

    def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json",
    ) -> Any:
        """The decoded JSON answer; raises :class:`ApiError` on a non-2xx status."""
        ...

    def watch(self, path: str, *, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Watch events as dicts; raises :class:`WatchExpired` on 410."""
        ...

    def abort_watches(self) -> None:
        """End every open watch now (shutdown): their threads must not linger."""
        ...


class ApiClientKube:
    """:class:`KubeApi` over ``kubernetes.client.ApiClient`` (auth, TLS, exec plugins)."""

    def __init__(self, api_client: Any, *, timeout_s: float = 30.0) -> None:
        self.api = api_client
        self.timeout_s = timeout_s
        self._open: set[Any] = set()
        self._lock = threading.Lock()

    def abort_watches(self) -> None:
        with self._lock:
            responses = list(self._open)
        for resp in responses:
            # urllib3 >= 2.3 can shut a response down from another thread; else close it
            close = getattr(resp, "shutdown", None) or resp.close
            with contextlib.suppress(Exception):
                close()

    def _call(self, method: str, path: str, query: Mapping[str, str] | None, body: Any,
              content_type: str, timeout: float) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = self.api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        return self.api.call_api(*params, _request_timeout=timeout)

    def request(
        self, method: str, path: str, *, query: Mapping[str, str] | None = None,
        body: Any = None, content_type: str = "application/json",
    ) -> Any:
        resp = self._call(method, path, query, body, content_type, self.timeout_s)
        data = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiError(resp.status, _status_message(data))
        return json.loads(data) if data else None

    def watch(self, path: str, *, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        from kubernetes.watch.watch import iter_resp_lines

        q = {**query, "watch": "true"}
        timeout = float(q.get("timeoutSeconds", _WATCH_TIMEOUT_S)) + 30.0
        resp = self._call("GET", path, q, None, "application/json", timeout)
        with self._lock:
            self._open.add(resp.response)
        try:
            if resp.status == 410:
                raise WatchExpired(_status_message(resp.read()))
            if not 200 <= resp.status <= 299:
                raise ApiError(resp.status, _status_message(resp.read()))
            for line in iter_resp_lines(resp.response):  # type: ignore[no-untyped-call]
                if not line:
                    continue
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    obj = event.get("object") or {}
                    if obj.get("code") == 410:
                        raise WatchExpired(str(obj.get("message", "resource version too old")))
                    raise ApiError(int(obj.get("code") or 500), str(obj.get("message", "")))
                yield event
        finally:
            with self._lock:
                self._open.discard(resp.response)
            resp.response.release_conn()


def _status_message(data: bytes | None) -> str:
    if not data:
        return ""
    try:
        obj = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace")
    return str(obj.get("message") or obj.get("reason") or obj) if isinstance(obj, dict) else ""


def load_api(*, kubeconfig: str | None, in_cluster: bool) -> ApiClientKube:
    """Credentials from a kubeconfig file, or the pod's service account."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if in_cluster:
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    else:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration)
    return ApiClientKube(client.ApiClient(configuration))
