"""Prometheus metrics of the device plugin, in a registry of its own (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["PluginMetrics"]


class PluginMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.devices = Gauge(
            "gputopo_plugin_devices", "GPUs advertised to the kubelet, by health",
            ["health"], registry=r)
        self.registrations = Counter(
            "gputopo_plugin_registrations_total", "Registrations with the kubelet, by result",
            ["result"], registry=r)
        self.preferred = Counter(
            "gputopo_plugin_preferred_allocations_total",
            "GetPreferredAllocation answers, by source (assigned, allocator, fallback)",
            ["source"], registry=r)
        self.allocations = Counter(
            "gputopo_plugin_allocations_total", "Allocate container requests, by result",
            ["result"], registry=r)
        self.xid_events = Counter(
            "gputopo_plugin_xid_events_total", "NVML XID events, by XID and whether ignored",
            ["xid", "ignored"], registry=r)
        self.reconcile_patches = Counter(
            "gputopo_plugin_allocated_records_written_total",
            "Pods whose allocated-gpus annotation was written from the kubelet's record",
            registry=r)
        self.pod_watch_live = Gauge(
            "gputopo_plugin_pod_watch_live",
            "1 while the watch of this node's pods delivers (listed, not failed since)",
            registry=r)
        self.pod_cache_checks = Counter(
            "gputopo_plugin_pod_cache_checks_total",
            "Preferred sets without an assigned one, by what the pod cache check found "
            "(known, in_sync, delivered, timed_out, watch_down, kubelet_unreachable)",
            ["result"], registry=r)
        self.pod_cache_wait_seconds = Histogram(
            "gputopo_plugin_pod_cache_wait_seconds",
            "Time a preferred-allocation call waited for the pod cache to deliver a pod "
            "the kubelet already had", buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5, 1.0, 2.5, 5.0), registry=r)
        self.rpc_seconds = Histogram(
            "gputopo_plugin_rpc_seconds", "Time to answer a kubelet RPC", ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        start_http_server(port, addr=addr, registry=self.registry)
