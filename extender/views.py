"""What ``/topology``, ``/readyz`` and the page show of the state: plain JSON-able values.

Pure reads of :class:`~extender.state.ClusterState`; nothing here is cached or kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from extender.state import ClusterState, Holding
from topology.gpuids import indices_of
from topology.serialize import dump

__all__ = ["node_view", "summary", "topology_document", "users"]


def _who(h: Holding) -> str:
    return str(h.pod) if h.pod.namespace else h.pod.name


def users(state: ClusterState, name: str) -> dict[int, str]:
    """GPU index -> who holds it ("ns/name", or "ns/name (binding)")."""
    node = state.nodes.get(name)
    if node is None:
        return {}
    out: dict[int, str] = {}
    for h in state.held_on(name):
        for i in indices_of(node.gpus.mask_of_ids(h.ids)):
            out[i] = _who(h)
    for h in state.reserved_on(name):
        for i in indices_of(node.gpus.mask_of_ids(h.ids)):
            out.setdefault(i, f"{h.pod} (binding)")
    return out


def node_view(
    state: ClusterState, name: str, *, with_topology: bool = True
) -> dict[str, Any] | None:
    """A node for /topology: GPUs free or used and by whom, pods, the topology."""
    node = state.nodes.get(name)
    if node is None:
        return None
    held: dict[int, str] = {}
    for h in state.held_on(name):
        for i in indices_of(node.gpus.mask_of_ids(h.ids)):
            held[i] = _who(h)
    binding: dict[int, str] = {}
    for h in state.reserved_on(name):
        for i in indices_of(node.gpus.mask_of_ids(h.ids)):
            binding[i] = str(h.pod)
    gpus = [{
        "index": g.index, "id": node.gpus.ids[g.index], "model": g.model,
        "numa_node": g.numa_node, "free": bool(node.free_mask >> g.index & 1),
        "pod": held.get(g.index) or binding.get(g.index),
        "binding": g.index in binding and g.index not in held,
    } for g in node.topology.gpus]
    who = users(state, name)
    return {
        "name": name,
        "preset": node.topology.name,
        "model": node.topology.model,
        "gpu_count": node.topology.size,
        "fingerprint": node.topology.fingerprint,
        "free": list(indices_of(node.free_mask)),
        "used": {str(i): w for i, w in sorted(who.items())},
        "gpus": gpus,
        "pods": [h.as_json() for h in state.held_on(name)],
        "binding": [h.as_json() for h in state.reserved_on(name)],
        **({"topology": dump(node.topology)} if with_topology else {}),
    }


def summary(state: ClusterState) -> dict[str, Any]:
    return {
        "synced": state.synced,
        "nodes": len(state.nodes),
        "gpus": sum(n.topology.size for n in state.nodes.values()),
        "free_gpus": sum(n.free_mask.bit_count() for n in state.nodes.values()),
        "pods": len(state.holdings),
        "binds_in_flight": len(state.reservations),
    }


def topology_document(state: ClusterState, *, slice_size: int = 250) -> Iterator[Any]:
    """``/topology``: every node, each distinct topology once (``topologies`` by
    fingerprint). A generator: it yields ``None`` after every ``slice_size`` nodes (so a
    caller on the event loop can let others run), then the document itself."""
    nodes: list[Any] = []
    topologies: dict[str, Any] = {}
    for k, name in enumerate(sorted(state.nodes)):
        node = state.nodes.get(name)
        if node is None:  # removed while the caller yielded
            continue
        nodes.append(node_view(state, name, with_topology=False))
        fp = node.topology.fingerprint
        if fp not in topologies:
            topologies[fp] = dump(node.topology)
        if k % slice_size == slice_size - 1:
            yield None
    yield {"summary": summary(state), "topologies": topologies, "nodes": nodes}
