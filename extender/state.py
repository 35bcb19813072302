"""``ClusterState``: every node's topology and free GPUs, and which pods hold which GPUs.

Nodes, holdings (bound pods), reservations (binds in flight) and the free masks they
leave, nothing else: the verdict and answer caches are ``extender.decisions``', the
/topology views ``extender.views``'.

One instance per process, mutated only on the event loop thread (the Kubernetes watch
threads hand their events over with ``call_soon_threadsafe``), so it needs no locks. Per
node it keeps ``(allocator, free_mask)`` ready, where the free mask already excludes the
GPUs of bound pods *and* of binds in flight, and a small int ``key`` naming
``(topology fingerprint, free mask)``: what the decision caches are keyed by, so that
identical nodes share every verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from extender.request import PodRef
from topology.allocate import Allocator, allocator_for
from topology.gpuids import GpuIds
from topology.model import Topology

__all__ = ["BIND_GRACE_S", "FILE_SOURCE", "ClusterState", "GpuSets", "Holding", "NodeState"]

log = logging.getLogger(__name__)

#: Where a holding came from (shown on /topology).
FILE_SOURCE: Final = "cluster-file"
#: A resync list may predate a bind this process just made; keep such a holding this long.
BIND_GRACE_S: Final = 120.0

#: GPU ids per container, sorted by container name.
GpuSets = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Holding:
    """The GPUs one pod holds (or is being bound to) on one node, by GPU id."""

    pod: PodRef
    node: str
    sets: GpuSets
    source: str

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(i for _, ids in self.sets for i in ids)

    def as_json(self) -> dict[str, Any]:
        return {
            "pod": str(self.pod), "uid": self.pod.uid, "node": self.node,
            "source": self.source, "containers": {c: list(ids) for c, ids in self.sets},
        }


class NodeState:
    """One node: topology, allocator, GPU ids, and the masks filter reads."""

    __slots__ = ("allocator", "free_mask", "gpus", "held_mask", "key", "name",
                 "reserved_mask", "topology")

    def __init__(self, name: str, topology: Topology) -> None:
        self.name = name
        self.topology = topology
        self.allocator: Allocator = allocator_for(topology)
        self.gpus = GpuIds.of(topology)
        self.held_mask = 0
        self.reserved_mask = 0
        self.free_mask = self.gpus.full_mask
        #: Id of (fingerprint, free mask), given by ClusterState.key_of (-1 until then).
        self.key = -1

    @property
    def full_mask(self) -> int:
        return self.gpus.full_mask


class ClusterState:
    """Nodes, holdings of bound pods, and reservations of binds in flight."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeState] = {}
        #: node name -> its NodeState.key: what filter and prioritize look up.
        self.node_keys: dict[str, int] = {}
        self._key_ids: dict[tuple[str, int], int] = {}
        self.holdings: dict[str, Holding] = {}
        self.reservations: dict[str, Holding] = {}
        self._held_on: dict[str, set[str]] = {}
        self._reserved_on: dict[str, set[str]] = {}
        self._bound_at: dict[str, float] = {}
        self.synced = False
        #: Bumped on every change (answers are reused only within one version).
        self.version = 0

    # -- nodes --------------------------------------------------------------------------
    def set_topology(self, name: str, topology: Topology) -> None:
        old = self.nodes.get(name)
        if old is not None and old.topology == topology:
            return
        self.nodes[name] = NodeState(name, topology)
        self._refresh(name)
        log.info("node topology set node=%s gpus=%d fingerprint=%s",
                 name, topology.size, topology.fingerprint)

    def remove_node(self, name: str) -> None:
        self.node_keys.pop(name, None)
        if self.nodes.pop(name, None) is not None:
            self.version += 1
            log.info("node removed node=%s", name)

    # -- holdings (bound pods) ----------------------------------------------------------
    def hold(self, holding: Holding) -> None:
        """Record what a bound pod holds (replacing what it held before)."""
        uid = holding.pod.uid
        old = self.holdings.get(uid)
        if old == holding:
            return
        if old is not None:
            self._held_on.get(old.node, set()).discard(uid)
        self.holdings[uid] = holding
        self._held_on.setdefault(holding.node, set()).add(uid)
        if old is not None and old.node != holding.node:
            self._refresh(old.node)
        self._refresh(holding.node)

    def release(self, uid: str) -> Holding | None:
        """Forget what a pod holds (deleted, terminal)."""
        old = self.holdings.pop(uid, None)
        self._bound_at.pop(uid, None)
        if old is not None:
            self._held_on.get(old.node, set()).discard(uid)
            self._refresh(old.node)
            log.info("gpus released pod=%s node=%s gpus=%s", old.pod, old.node,
                     ",".join(sorted(old.ids)))
        return old

    def held_on(self, name: str) -> list[Holding]:
        """The holdings on node ``name``, by pod UID."""
        return [self.holdings[u] for u in sorted(self._held_on.get(name, ()))]

    # -- reservations (binds in flight) -------------------------------------------------
    def reserve(self, holding: Holding) -> None:
        uid = holding.pod.uid
        self.unreserve(uid)
        self.reservations[uid] = holding
        self._reserved_on.setdefault(holding.node, set()).add(uid)
        self._refresh(holding.node)

    def unreserve(self, uid: str) -> Holding | None:
        old = self.reservations.pop(uid, None)
        if old is not None:
            self._reserved_on.get(old.node, set()).discard(uid)
            self._refresh(old.node)
        return old

    def reserved_on(self, name: str) -> list[Holding]:
        """The reservations on node ``name``, by pod UID."""
        return [self.reservations[u] for u in sorted(self._reserved_on.get(name, ()))]

    def commit(self, uid: str, source: str) -> Holding | None:
        """A bind finished: its reservation becomes a holding.

        When the watch already delivered the bound pod (its annotation is the record now,
        possibly the plugin's allocated set), that holding stays as it is.
        """
        res = self.reservations.get(uid)
        if res is None:
            return None
        held = self.holdings.get(uid)
        if held is None or held.node != res.node:
            held = Holding(pod=res.pod, node=res.node, sets=res.sets, source=source)
            self.hold(held)
        self.unreserve(uid)
        self._bound_at[uid] = time.monotonic()
        return held

    # -- resync -------------------------------------------------------------------------
    def replace(
        self, topologies: Mapping[str, Topology], holdings: Iterable[Holding],
        *, now: float | None = None,
    ) -> None:
        """Rebuild nodes and holdings from fresh lists (see the two methods below)."""
        self.replace_topologies(topologies, refresh=False)
        self.replace_holdings(holdings, now=now)

    def replace_topologies(
        self, topologies: Mapping[str, Topology], *, refresh: bool = True
    ) -> None:
        """Make the known nodes exactly ``topologies`` (a fresh list of GPUTopology objects)."""
        for name in list(self.nodes):
            if name not in topologies:
                self.remove_node(name)
        for name, t in topologies.items():
            old = self.nodes.get(name)
            if old is None or old.topology != t:
                self.nodes[name] = NodeState(name, t)
                if refresh:
                    self._refresh(name)

    def replace_holdings(self, holdings: Iterable[Holding], *, now: float | None = None) -> None:
        """Make the holdings exactly those of a fresh list of pods.

        Reservations stay (binds in flight), and so do holdings this process committed in
        the last ``BIND_GRACE_S`` seconds that the list does not show yet: the list may
        have been read before the bind's patch landed; the watch confirms them.
        """
        now = time.monotonic() if now is None else now
        fresh = {h.pod.uid: h for h in holdings}
        for uid, at in list(self._bound_at.items()):
            if now - at > BIND_GRACE_S:
                del self._bound_at[uid]
            elif uid not in fresh and uid in self.holdings:
                fresh[uid] = self.holdings[uid]
        self.holdings.clear()
        self._held_on.clear()
        for h in fresh.values():
            self.holdings[h.pod.uid] = h
            self._held_on.setdefault(h.node, set()).add(h.pod.uid)
        for name in self.nodes:
            self._refresh(name)

    def _refresh(self, name: str) -> None:
        self.version += 1
        node = self.nodes.get(name)
        if node is None:
            return
        held = 0
        for uid in self._held_on.get(name, ()):
            held |= node.gpus.mask_of_ids(self.holdings[uid].ids)
        reserved = 0
        for uid in self._reserved_on.get(name, ()):
            reserved |= node.gpus.mask_of_ids(self.reservations[uid].ids)
        node.held_mask = held
        node.reserved_mask = reserved
        node.free_mask = node.full_mask & ~held & ~reserved
        node.key = self.key_of(node.topology.fingerprint, node.free_mask)
        self.node_keys[name] = node.key

    # -- node keys ----------------------------------------------------------------------
    def key_of(self, fingerprint: str, free_mask: int) -> int:
        """A small int naming ``(fingerprint, free mask)``: cheap to hash on the hot path.

        Ids are never reused, so a cached verdict by key stays true; there are at most
        ``2**gpus`` per distinct topology.
        """
        k = (fingerprint, free_mask)
        key = self._key_ids.get(k)
        if key is None:
            key = self._key_ids[k] = len(self._key_ids)
        return key
