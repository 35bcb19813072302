"""A stand-in kubelet for laptops and tests: ``python -m plugin.devkubelet``.

It serves the kubelet's Registration service on ``<dir>/kubelet.sock``, waits for a
device plugin to register, prints its devices (and every health change), and can admit
a few containers the way the kubelet does: GetPreferredAllocation over the free healthy
GPUs, then Allocate. Run it beside ``gputopo-device-plugin --standalone --fake-topology
dgx1-v100 --kubelet-dir /tmp/dp`` to see the plugin work without a cluster::

    python -m plugin.devkubelet --kubelet-dir /tmp/dp --admit 2 --admit 4
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from plugin.api import deviceplugin_pb2 as pb
from plugin.api import deviceplugin_pb2_grpc as pb_grpc
from plugin.server import KUBELET_CHANNEL_OPTIONS

__all__ = ["DevKubelet", "main"]


class _Registration(pb_grpc.RegistrationServicer):
    def __init__(self, requests: queue.Queue[pb.RegisterRequest]) -> None:
        self.requests = requests

    def Register(self, request: pb.RegisterRequest, context: Any) -> pb.Empty:
        self.requests.put(request)
        return pb.Empty()


class DevKubelet:
    """The Registration side of a kubelet on ``<directory>/kubelet.sock``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "kubelet.sock"
        self.requests: queue.Queue[pb.RegisterRequest] = queue.Queue()
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_RegistrationServicer_to_server(self.registration_servicer(), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def registration_servicer(self) -> pb_grpc.RegistrationServicer:
        """What answers Register: records each request for ``next_registration``."""
        return _Registration(self.requests)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None
        self.socket.unlink(missing_ok=True)

    def restart(self) -> None:
        """What a restarting kubelet does: its socket and every plugin socket go away."""
        self.stop()
        for sock in self.directory.glob("*.sock"):
            sock.unlink()
        self.start()

    def next_registration(self, timeout: float | None = None) -> pb.RegisterRequest:
        return self.requests.get(timeout=timeout)

    def plugin_stub(self, endpoint: str) -> tuple[grpc.Channel, pb_grpc.DevicePluginStub]:
        channel = grpc.insecure_channel(
            f"unix:{self.directory / endpoint}", options=KUBELET_CHANNEL_OPTIONS)
        return channel, pb_grpc.DevicePluginStub(channel)


def _print(*parts: object) -> None:
    print(*parts, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m plugin.devkubelet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubelet-dir", type=Path, required=True)
    p.add_argument("--admit", type=int, action="append", default=[], metavar="N",
                   help="admit a container asking for N GPUs (repeatable)")
    p.add_argument("--once", action="store_true",
                   help="exit after the admissions instead of following health changes")
    args = p.parse_args(argv)

    kubelet = DevKubelet(args.kubelet_dir)
    kubelet.start()
    _print(f"kubelet: serving Registration on {kubelet.socket}; waiting for a plugin")
    try:
        req = kubelet.next_registration()
        _print(f"kubelet: registered {req.resource_name} at {req.endpoint} "
               f"(version {req.version}, preferred allocation "
               f"{req.options.get_preferred_allocation_available})")
        channel, stub = kubelet.plugin_stub(req.endpoint)
        updates: queue.Queue[pb.ListAndWatchResponse] = queue.Queue()

        def follow() -> None:
            try:
                for resp in stub.ListAndWatch(pb.Empty()):
                    updates.put(resp)
            except grpc.RpcError:
                pass

        threading.Thread(target=follow, daemon=True).start()
        devices = updates.get()
        for d in devices.devices:
            numa = ",".join(str(n.ID) for n in d.topology.nodes) or "-"
            _print(f"  {d.ID}  {d.health}  numa={numa}")
        taken: set[str] = set()
        for size in args.admit:
            free = [d.ID for d in devices.devices if d.health == "Healthy" and d.ID not in taken]
            pref = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=free, allocation_size=size)]))
            chosen = list(pref.container_responses[0].deviceIDs)
            alloc = stub.Allocate(pb.AllocateRequest(container_requests=[
                pb.ContainerAllocateRequest(devices_ids=chosen)]))
            taken.update(chosen)
            envs = dict(alloc.container_responses[0].envs)
            _print(f"kubelet: admitted {size} GPU(s): {', '.join(chosen)}")
            _print(f"  NVIDIA_VISIBLE_DEVICES={envs.get('NVIDIA_VISIBLE_DEVICES', '')}")
        if args.once:
            channel.close()
            return 0
        _print("kubelet: following health changes (Ctrl-C to stop)")
        while True:
            resp = updates.get()
            bad = [d.ID for d in resp.devices if d.health != "Healthy"]
            _print(f"kubelet: devices updated; unhealthy: {', '.join(bad) or 'none'}")
    except KeyboardInterrupt:
        return 0
    finally:
        kubelet.stop()


if __name__ == "__main__":
    sys.exit(main())
