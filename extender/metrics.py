"""Prometheus metrics, in a registry of the app's own (tests build many apps)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from extender.state import ClusterState

__all__ = ["CLIENT_GONE", "CONTENT_TYPE_LATEST", "Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0)
#: The ``code`` of a request whose client closed the connection before it was read
#: (nginx's "client closed request"): it got no answer at all.
CLIENT_GONE = "499"


class Metrics:
    """Requests and latency per verb, decisions, bind outcomes, conflicts, connections."""

    def __init__(self, state: ClusterState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gputopo_extender_requests", "Extender HTTP requests by verb and HTTP status "
            f"({CLIENT_GONE}: the client closed the connection before its body was read).",
            ["verb", "code"], registry=r)
        self.latency = Histogram(
            "gputopo_extender_request_duration_seconds",
            "Time to answer an extender request, by verb.", ["verb"], buckets=_BUCKETS,
            registry=r)
        self.decisions = Counter(
            "gputopo_extender_node_decisions",
            "Per-node filter outcomes: passed, failed (GPUs in use), unresolvable, unknown "
            "(no topology), waiting (for the best set), outscored (--filter-top-scored).",
            ["result"], registry=r)
        self.pod_errors = Counter(
            "gputopo_extender_pod_errors",
            "Requests answered with an Error about the pod itself (invalid pod, bad "
            "annotation), by verb.", ["verb"], registry=r)
        self.binds = Counter(
            "gputopo_extender_binds", "Bind outcomes: bound, retry (already bound), error.",
            ["result"], registry=r)
        self.prefetched = Counter(
            "gputopo_extender_prioritize_prefetch",
            "Prioritize requests answered from the answer made right after their filter "
            "(hit) or computed when they came (miss).", ["result"], registry=r)
        self.bind_phases = Histogram(
            "gputopo_extender_bind_phase_seconds",
            "Where a bind's time goes: lock (waiting for the node's lock), choose (the set "
            "on fresh state), api (the Binding, or reading the pod when it was not seen in "
            "filter).", ["phase"], buckets=_BUCKETS, registry=r)
        self.bind_conflicts = Counter(
            "gputopo_extender_bind_conflicts",
            "Binds whose node could no longer give a set on fresh state, or whose pod was "
            "changed by someone else.", registry=r)
        self.preempt_nodes = Counter(
            "gputopo_extender_preempt_nodes",
            "Preemption candidates: kept (victims free a good set) or dropped.", ["result"],
            registry=r)
        self.connections_closed = Counter(
            "gputopo_extender_connections_closed",
            "Connections the server closed: header_timeout, idle_timeout, evicted (to make "
            "room at the connection limit), refused (at the limit, every connection busy).",
            ["reason"], registry=r)
        self.connections = Gauge("gputopo_extender_connections", "Open client connections.",
                                 registry=r)
        self.large_bodies = Gauge(
            "gputopo_extender_large_bodies",
            "Large request bodies being read or handled (reading), or waiting for a slot.",
            ["state"], registry=r)
        nodes = Gauge("gputopo_extender_nodes", "Nodes with a known topology.", registry=r)
        nodes.set_function(lambda: len(state.nodes))
        free = Gauge("gputopo_extender_free_gpus", "GPUs neither held nor being bound.",
                     registry=r)
        free.set_function(lambda: sum(n.free_mask.bit_count() for n in state.nodes.values()))
        inflight = Gauge("gputopo_extender_binds_in_flight",
                         "Binds that chose a set and are writing it.", registry=r)
        inflight.set_function(lambda: len(state.reservations))

    def watch(self, *, connections: Callable[[], int] | None = None,
              large: Callable[[], int] | None = None,
              waiting: Callable[[], int] | None = None) -> None:
        """Gauges read from the server's parts, once they exist."""
        if connections is not None:
            self.connections.set_function(connections)
        if large is not None:
            self.large_bodies.labels("reading").set_function(large)
        if waiting is not None:
            self.large_bodies.labels("waiting").set_function(waiting)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
