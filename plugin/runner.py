"""Serve, register, and register again whenever the kubelet restarts.

A restarting kubelet deletes every socket in its device-plugin directory (ours too),
recreates ``kubelet.sock`` and forgets every plugin. We watch the directory by polling
``stat`` (one syscall a second, no inotify dependency): when ``kubelet.sock`` is a new
file, or our own socket has gone, the gRPC server is restarted on a fresh socket and
Register is called again. SIGHUP asks for the same (``request_restart``).

After a failed Register (or server start) we back off ``retry_interval``, but watch
``kubelet.sock`` meanwhile (every ``_BACKOFF_POLL_S``): a kubelet that comes back is
registered with at once, not after the rest of the back-off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Final

import grpc

from plugin.log import fields
from plugin.metrics import PluginMetrics
from plugin.server import KUBELET_SOCKET, DevicePluginServicer, PluginServer, register, socket_name

__all__ = ["PluginRunner"]

log = logging.getLogger(__name__)

_FileId = tuple[int, int, int]

#: How often the kubelet's socket is looked at while backing off after a failure.
_BACKOFF_POLL_S: Final = 0.1


def _file_id(path: Path) -> _FileId | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


class PluginRunner:
    def __init__(
        self,
        servicer: DevicePluginServicer,
        kubelet_dir: Path,
        resource_name: str,
        *,
        watch_interval: float = 1.0,
        retry_interval: float = 5.0,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.servicer = servicer
        self.kubelet_dir = kubelet_dir
        self.resource_name = resource_name
        self.kubelet_socket = kubelet_dir / KUBELET_SOCKET
        self.endpoint = socket_name(resource_name)
        self.server = PluginServer(servicer, kubelet_dir / self.endpoint)
        self.watch_interval = watch_interval
        self.retry_interval = retry_interval
        self.metrics = metrics or servicer.metrics
        self.registrations = 0
        self._registered = threading.Condition()
        self._restart = threading.Event()
        self.ready = threading.Event()

    def request_restart(self) -> None:
        self._restart.set()

    def wait_registered(self, count: int, timeout: float | None = None) -> bool:
        """Block until ``count`` registrations have succeeded (False after ``timeout``)."""
        with self._registered:
            return self._registered.wait_for(lambda: self.registrations >= count, timeout)

    def _back_off(self, stop: threading.Event, kubelet_id: _FileId | None) -> None:
        """Wait ``retry_interval``, or less: until ``kubelet.sock`` is not the file it was
        (``kubelet_id``: a kubelet restarted or appeared), our socket is gone, a restart
        is asked for, or ``stop``."""
        deadline = time.monotonic() + self.retry_interval
        poll = min(self.watch_interval, _BACKOFF_POLL_S)
        while not stop.is_set() and not self._restart.is_set():
            if _file_id(self.kubelet_socket) != kubelet_id:
                log.info("kubelet.sock changed; retrying now", extra=fields(
                    kubelet=str(self.kubelet_socket)))
                return
            if self.server.serving and not self.server.socket_path.exists():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            stop.wait(min(poll, remaining))

    def _restart_server(self, why: str) -> None:
        log.info("starting device plugin server", extra=fields(reason=why))
        self.server.stop()
        self.server.start()
        self.server.wait_ready()

    def _register(self) -> bool:
        try:
            register(self.kubelet_socket, endpoint=self.endpoint, resource_name=self.resource_name)
        except grpc.RpcError as e:
            self.metrics.registrations.labels("error").inc()
            code = e.code() if isinstance(e, grpc.Call) else None
            log.warning("registration with kubelet failed; retrying", extra=fields(
                kubelet=str(self.kubelet_socket), code=getattr(code, "name", None),
                error=e.details() if isinstance(e, grpc.Call) else str(e),
                retry_s=self.retry_interval))
            return False
        with self._registered:
            self.registrations += 1
            self._registered.notify_all()
        self.metrics.registrations.labels("ok").inc()
        log.info("registered with kubelet", extra=fields(
            kubelet=str(self.kubelet_socket), endpoint=self.endpoint,
            resource=self.resource_name, version="v1beta1"))
        return True

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: keep the server up and registered with the current kubelet."""
        kubelet_id: _FileId | None = None
        registered = False
        waiting_logged = False
        why: str | None = "start"
        try:
            while not stop.is_set():
                current = _file_id(self.kubelet_socket)
                if self._restart.is_set():
                    self._restart.clear()
                    why = "restart requested"
                elif why is None and not self.server.socket_path.exists():
                    why = "plugin socket removed"
                elif why is None and current is not None and kubelet_id is not None \
                        and current != kubelet_id:
                    why = "kubelet.sock recreated (kubelet restarted)"
                if why is not None:
                    registered = False
                    try:
                        self._restart_server(why)
                    except Exception as e:  # e.g. the directory was being cleaned meanwhile
                        log.warning("device plugin server start failed; retrying", extra=fields(
                            socket=str(self.server.socket_path),
                            error=f"{type(e).__name__}: {e}", retry_s=self.retry_interval))
                        self._back_off(stop, current)
                        continue
                    why = None
                    self.ready.set()
                if current is None:
                    if not waiting_logged:
                        log.info("waiting for kubelet", extra=fields(
                            kubelet=str(self.kubelet_socket)))
                        waiting_logged = True
                    registered = False
                    kubelet_id = None
                elif not registered or current != kubelet_id:
                    waiting_logged = False
                    kubelet_id = current
                    registered = self._register()
                    if not registered:
                        self._back_off(stop, kubelet_id)
                        continue
                stop.wait(self.watch_interval)
        finally:
            self.server.stop()
            log.info("device plugin server stopped", extra=fields(
                socket=str(self.server.socket_path)))
