"""Serve, register, and register again whenever the kubelet restarts.

A restarting kubelet deletes every socket in its device-plugin directory (ours too),
recreates ``kubelet.sock`` and forgets every plugin. We watch the directory by polling
``stat`` (one syscall a second, no inotify dependency): when ``kubelet.sock`` is a new
file, or our own socket has gone, the gRPC server is restarted on a fresh socket and
Register is called again. SIGHUP asks for the same (``request_restart``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import grpc

from plugin.log import fields
from plugin.metrics import PluginMetrics
from plugin.server import KUBELET_SOCKET, DevicePluginServicer, PluginServer, register, socket_name

__all__ = ["PluginRunner"]

log = logging.getLogger(__name__)

_FileId = tuple[int, int, int]


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
        self._restart = threading.Event()
        self.ready = threading.Event()

    def request_restart(self) -> None:
        self._restart.set()

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
        self.registrations += 1
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
                        stop.wait(self.retry_interval)
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
                        stop.wait(self.retry_interval)
                        continue
                stop.wait(self.watch_interval)
        finally:
            self.server.stop()
            log.info("device plugin server stopped", extra=fields(
                socket=str(self.server.socket_path)))
