"""``gputopo-device-plugin``: discover the GPUs, serve the kubelet, keep records true.

Threads (all stop on one Event, set by SIGTERM/SIGINT):

* main: kubelet registration (``PluginRunner``), re-registering when the kubelet
  restarts or on SIGHUP; deviceplugin-grpc: the gRPC server's event loop;
* health: the NVML XID loop and probes; health-apply: drains its queue into the
  resource manager, which wakes the ListAndWatch streams;
* pods: the watch of pods bound to this node (cache for GetPreferredAllocation, which
  asks the kubelet's PodResources whether the cache is behind when no assigned set fits);
* reconcile: the kubelet's PodResources record -> ``allocated-gpus`` on each pod;
* publish: the GPUTopology object and node labels.

Exit codes: 0 clean stop, 2 bad flags, 3 NVML missing or failing, 4 no Kubernetes
credentials, 5 the fake topology cannot be loaded.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from plugin.catchup import KubeletPods, PodCacheCatchUp
from plugin.cluster import ClusterError, NodeCluster
from plugin.config import PluginConfig, from_args
from plugin.health import HealthEvent, HealthMonitor
from plugin.log import configure, fields
from plugin.metrics import PluginMetrics
from plugin.nvml import Discovery, NvmlUnavailable, discover, load_pynvml, start_nvml
from plugin.pods import PodCache
from plugin.publish import Publisher
from plugin.reconcile import Reconciler
from plugin.resources import AllocateOptions, KubeletRecord, TopologyResourceManager
from plugin.runner import PluginRunner
from plugin.server import DevicePluginServicer

__all__ = ["EXIT_BAD_FLAGS", "EXIT_NO_CLUSTER", "EXIT_NO_NVML", "PluginApp", "Timings", "main"]

log = logging.getLogger("plugin")

EXIT_BAD_FLAGS: Final = 2
EXIT_NO_NVML: Final = 3
EXIT_NO_CLUSTER: Final = 4
EXIT_BAD_TOPOLOGY: Final = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Timings:
    """Intervals of the background loops; tests shrink them instead of sleeping."""

    watch: float = 1.0
    register_retry: float = 5.0
    health_wait_ms: int = 1000
    reconcile_settle: float = 0.5
    watch_retry: float = 5.0
    publish_retry: float = 10.0


class PluginApp:
    """Every part wired together for one node; ``run`` blocks until ``stop`` is set."""

    def __init__(
        self,
        cfg: PluginConfig,
        *,
        nvml: Any,
        discovery: Discovery,
        cluster: NodeCluster | None,
        pod_resources: Callable[[], KubeletRecord] | None,
        kubelet_pods: KubeletPods | None = None,
        timings: Timings = Timings(),
        metrics: PluginMetrics | None = None,
    ) -> None:
        """``pod_resources``: the kubelet's record (read by the reconciler's thread);
        ``kubelet_pods``: the pods it has (awaited on a GetPreferredAllocation whose pod
        the cache may lack); both from PodResources, neither with ``--standalone``."""
        self.cfg = cfg
        self.nvml = nvml
        self.discovery = discovery
        self.cluster = cluster
        self.metrics = metrics or PluginMetrics()
        self.timings = timings
        topology = discovery.topology
        self.pods = PodCache(cfg.node_name)
        self.metrics.pod_watch_live.set_function(lambda: 1.0 if self.pods.live else 0.0)
        self.reconciler = Reconciler(
            pod_resources or (lambda: {}),
            self.pods.snapshot,
            cluster,
            interval=cfg.reconcile_interval_seconds,
            settle=timings.reconcile_settle,
            metrics=self.metrics,
        )
        self._reconcile = pod_resources is not None
        self.rm = TopologyResourceManager(
            topology,
            minors=discovery.minors,
            pods=self.pods.snapshot,
            kubelet=self.reconciler.record,
            options=AllocateOptions(pass_device_specs=cfg.pass_device_specs,
                                    dev_root=cfg.dev_root),
            resource_name=cfg.resource_name,
        )
        self.health_events: queue.Queue[HealthEvent] = queue.Queue()
        self.health = HealthMonitor(
            nvml,
            [g.uuid for g in topology.gpus if g.uuid],
            self.health_events,
            ignored_xids=cfg.ignored_xids,
            wait_ms=timings.health_wait_ms,
            recheck_interval=cfg.health_interval_seconds,
            xid_recovery=cfg.xid_recovery_seconds,
            metrics=self.metrics,
        )
        self.stop = threading.Event()
        self.catch_up = PodCacheCatchUp(
            self.pods, kubelet_pods, max_wait=cfg.pod_cache_wait_seconds, metrics=self.metrics,
        ) if cluster is not None and kubelet_pods is not None \
            and cfg.pod_cache_wait_seconds > 0 else None
        self.servicer = DevicePluginServicer(
            self.rm, on_allocate=self._allocated, metrics=self.metrics, catch_up=self.catch_up)
        self.runner = PluginRunner(
            self.servicer, cfg.kubelet_dir, cfg.resource_name,
            watch_interval=timings.watch, retry_interval=timings.register_retry,
            metrics=self.metrics)
        self.publisher = Publisher(
            cluster, cfg.node_name, topology, interval=cfg.publish_interval_seconds,
            retry_interval=timings.publish_retry,
        ) if cluster is not None else None
        self._threads: list[threading.Thread] = []

    def _allocated(self, device_ids: Sequence[str]) -> None:
        if self._reconcile:
            self.reconciler.trigger()

    def _apply_health(self) -> None:
        while not self.stop.is_set():
            try:
                event = self.health_events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.rm.set_health(event.uuid, event.healthy, event.reason)

    def _relay(self, outer: threading.Event) -> None:
        while not self.stop.is_set():
            if outer.wait(0.1):
                self.stop.set()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def run(self, stop: threading.Event | None = None) -> None:
        """Start the background threads and serve until ``stop`` (or ``self.stop``)."""
        if stop is not None:
            outer = stop
            self._spawn("stop-relay", lambda: self._relay(outer))
        t = self.discovery.topology
        log.info("gpus discovered", extra=fields(
            node=self.cfg.node_name, gpus=t.size, model=t.model, nvlink=t.has_nvlink,
            fingerprint=t.fingerprint, driver=self.discovery.driver_version,
            uuids=[g.uuid for g in t.gpus]))
        self.rm.warm_up()
        if self.cfg.metrics_port:
            try:
                self.metrics.serve(self.cfg.metrics_port)
                log.info("metrics serving", extra=fields(port=self.cfg.metrics_port))
            except OSError as e:  # GPUs matter more than metrics: serve on without them
                log.error("metrics port unavailable; running without metrics", extra=fields(
                    port=self.cfg.metrics_port, error=str(e)))
        self._spawn("health", lambda: self.health.run(self.stop))
        self._spawn("health-apply", self._apply_health)
        if self.cluster is not None:
            cluster = self.cluster
            self._spawn("pods", lambda: self.pods.run(
                cluster, self.stop, retry_seconds=self.timings.watch_retry))
        if self.publisher is not None:
            publisher = self.publisher
            self._spawn("publish", lambda: publisher.run(self.stop))
        if self._reconcile:
            self._spawn("reconcile", lambda: self.reconciler.run(self.stop))
        try:
            self.runner.run(self.stop)
        finally:
            self.stop.set()
            self.reconciler.wake()
            for thread in self._threads:
                thread.join(timeout=5)


def _fake_nvml(spec: str) -> Any:
    from plugin.fakenvml import FakeNvml
    from topology.sources import load_topology

    return FakeNvml(load_topology(spec))


def main(argv: Sequence[str] | None = None) -> int:
    cfg, errors = from_args(argv)
    if cfg is None:
        configure()
        for e in errors:
            log.error("bad configuration", extra=fields(error=e))
        return EXIT_BAD_FLAGS
    configure(cfg.log_format, cfg.log_level)

    if cfg.fake_topology:
        from topology.model import TopologyError

        try:
            nvml = _fake_nvml(cfg.fake_topology)
        except (TopologyError, OSError) as e:
            log.error("fake topology cannot be loaded", extra=fields(
                topology=cfg.fake_topology, error=str(e)))
            return EXIT_BAD_TOPOLOGY
        log.info("using fake NVML", extra=fields(topology=cfg.fake_topology))
    try:
        if not cfg.fake_topology:
            nvml = load_pynvml()
        start_nvml(nvml)
        discovery = discover(nvml, name=cfg.node_name,
                             sysfs=None if cfg.fake_topology else Path("/sys"))
    except NvmlUnavailable as e:
        log.error("NVML unavailable: no GPUs to advertise", extra=fields(
            error=str(e), hint="run on a GPU node with the NVIDIA driver, "
            "or use --fake-topology PRESET"))
        return EXIT_NO_NVML

    cluster: NodeCluster | None = None
    pod_resources: Callable[[], KubeletRecord] | None = None
    kubelet_pods: KubeletPods | None = None
    if not cfg.standalone:
        from plugin.kube import KubeCluster, api_client
        from plugin.podresources import PodResourcesClient

        try:
            cluster = KubeCluster(api_client(cfg.kubeconfig))
        except ClusterError as e:
            log.error("no Kubernetes API access", extra=fields(
                error=str(e), hint="pass --kubeconfig, or --standalone to run without one"))
            return EXIT_NO_CLUSTER
        kubelet = PodResourcesClient(cfg.pod_resources_socket, cfg.resource_name)
        pod_resources, kubelet_pods = kubelet.list, kubelet.listed_pods

    app = PluginApp(cfg, nvml=nvml, discovery=discovery, cluster=cluster,
                    pod_resources=pod_resources, kubelet_pods=kubelet_pods)

    def on_signal(signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: restarting and registering again")
            app.runner.request_restart()
            return
        log.info("stopping", extra=fields(signal=signal.Signals(signum).name))
        app.stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        app.run()
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as e:  # shutting down anyway
            log.debug("nvml shutdown failed", extra=fields(error=str(e)))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
