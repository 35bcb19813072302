"""``ClusterState``: every node's topology and which GPUs are held, by whom.

One instance per process, mutated only on the event loop thread (the Kubernetes watch
threads hand their events over with ``call_soon_threadsafe``), so it needs no locks.

Per node it keeps ``(allocator, free_mask)`` ready, where the free mask already excludes
the GPUs of bound pods *and* of decisions in flight (binds that have chosen a set but not
finished). Filter and prioritize then cost two dict lookups per node: verdicts are
cached per pod shape and ``(topology fingerprint, free mask)`` (named by a small int, the
node's key), identical nodes share them, and each verb keeps what it derives from a
verdict (an outcome code and an encoded reason, a score) in a table of its own by key.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

from extender.plan import Rejection, Verdict, place
from extender.request import GpuRequest, PodRef
from topology.allocate import Allocator, allocator_for, indices_of
from topology.handoff import gpu_ids
from topology.model import Topology
from topology.serialize import dump

__all__ = [
    "FILE_SOURCE",
    "UNKNOWN",
    "Answer",
    "ClusterState",
    "Holding",
    "Key",
    "NodeState",
]

log = logging.getLogger(__name__)

#: Where a holding came from (shown on /topology).
FILE_SOURCE: Final = "cluster-file"

_VERDICTS_PER_SHAPE: Final = 100_000
#: The verdict of a node whose topology is not known (yet).
UNKNOWN: Final = Rejection(reason="no GPU topology known for this node (yet)", unresolvable=False)
_SHAPES: Final = 512
#: A resync list may predate a bind this process just made; keep such a holding this long.
BIND_GRACE_S: Final = 120.0

#: A node key as filter and prioritize see it (``NodeState.key``); None: unknown node.
Key = int | None
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """A verb's encoded answer, and counts for its metrics."""

    body: bytes
    counts: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Memo:
    version: int
    names: list[str]
    answer: Answer


@dataclass(frozen=True, slots=True, kw_only=True)
class Holding:
    """The GPUs one pod holds (or is being bound to) on one node, by GPU id."""

    pod: PodRef
    node: str
    sets: tuple[tuple[str, tuple[str, ...]], ...]
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

    __slots__ = (
        "allocator", "free_mask", "full_mask", "held_mask", "ids", "index_of", "key",
        "name", "reserved_mask", "topology",
    )

    def __init__(self, name: str, topology: Topology) -> None:
        self.name = name
        self.topology = topology
        self.allocator: Allocator = allocator_for(topology)
        self.ids = gpu_ids(topology)
        self.index_of = {gid: i for i, gid in enumerate(self.ids)}
        self.full_mask = (1 << topology.size) - 1
        self.held_mask = 0
        self.reserved_mask = 0
        self.free_mask = self.full_mask
        #: Id of (fingerprint, free mask), given by ClusterState.key_of (-1 until then).
        self.key = -1

    def mask_of_ids(self, ids: Iterable[str]) -> int:
        m = 0
        for gid in ids:
            i = self.index_of.get(gid)
            if i is not None:
                m |= 1 << i
        return m

    def ids_of(self, indices: Iterable[int]) -> tuple[str, ...]:
        return tuple(self.ids[i] for i in indices)


class ClusterState:
    """Nodes, holdings of bound pods, and reservations of binds in flight."""

    def __init__(self, *, remembered_pods: int = 2_000) -> None:
        self.nodes: dict[str, NodeState] = {}
        #: node name -> its NodeState.key: what filter and prioritize look up.
        self.node_keys: dict[str, int] = {}
        self._key_ids: dict[tuple[str, int], int] = {}
        #: Per-shape memos of the verbs (their last answers); cleared with the verdicts.
        self.scratch: dict[tuple[object, ...], dict[Any, Any]] = {}
        self.holdings: dict[str, Holding] = {}
        self.reservations: dict[str, Holding] = {}
        self._held_on: dict[str, set[str]] = {}
        self._reserved_on: dict[str, set[str]] = {}
        self._verdicts: dict[tuple[object, ...], dict[int, Verdict]] = {}
        #: Per pod shape, the verbs' own tables by node key (see ``table``).
        self._tables: dict[tuple[object, ...], dict[Callable[[], object], object]] = {}
        self._pods: OrderedDict[str, Mapping[str, Any]] = OrderedDict()
        self._remembered = remembered_pods
        self._bound_at: dict[str, float] = {}
        self.synced = False
        #: Bumped on every change (for views and tests).
        self.version = 0

    # -- nodes --------------------------------------------------------------------------
    def set_topology(self, name: str, topology: Topology) -> None:
        old = self.nodes.get(name)
        if old is not None and old.topology == topology:
            return
        node = NodeState(name, topology)
        self.nodes[name] = node
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
            held |= node.mask_of_ids(self.holdings[uid].ids)
        reserved = 0
        for uid in self._reserved_on.get(name, ()):
            reserved |= node.mask_of_ids(self.reservations[uid].ids)
        node.held_mask = held
        node.reserved_mask = reserved
        node.free_mask = node.full_mask & ~held & ~reserved
        node.key = self.key_of(node.topology.fingerprint, node.free_mask)
        self.node_keys[name] = node.key

    # -- decisions ----------------------------------------------------------------------
    def key_of(self, fingerprint: str, free_mask: int) -> int:
        """A small int naming ``(fingerprint, free mask)``: cheap to hash on the hot path."""
        k = (fingerprint, free_mask)
        key = self._key_ids.get(k)
        if key is None:
            key = self._key_ids[k] = len(self._key_ids)
        return key

    def verdicts(self, request: GpuRequest) -> dict[int, Verdict]:
        """The verdict cache for pods of this shape: ``{node.key: Verdict}``."""
        shape = request.shape
        cache = self._verdicts.get(shape)
        if cache is None:
            if len(self._verdicts) >= _SHAPES:
                self._verdicts.clear()
                self._tables.clear()
                self.scratch.clear()
            cache = self._verdicts[shape] = {}
        elif len(cache) >= _VERDICTS_PER_SHAPE:
            cache.clear()
            self._tables.pop(shape, None)
        if None not in cache:
            cache[None] = UNKNOWN  # type: ignore[index]
        return cache

    @staticmethod
    def judge(
        node: NodeState, request: GpuRequest, cache: dict[int, Verdict]
    ) -> Verdict:
        v = cache.get(node.key)
        if v is None:
            v = cache[node.key] = place(node.allocator, node.free_mask, request)
        return v

    def table(self, request: GpuRequest, kind: Callable[[], _T]) -> _T:
        """A verb's own table for pods of this shape, made by ``kind()`` the first time.

        Filter and prioritize keep there what they derive from a verdict (an outcome
        code, an encoded reason, a score), by node key, so that judging a candidate
        costs a dict lookup or two. Tables go when the shape's verdicts do.
        """
        tables = self._tables.setdefault(request.shape, {})
        t = tables.get(kind)
        if t is None:
            t = tables[kind] = kind()
        return cast(_T, t)

    def keys_of(self, names: list[str]) -> list[Key]:
        """Per name, in order, its node key (None: unknown node). One C-level ``map``."""
        return list(map(self.node_keys.get, names))

    def judge_new(
        self, request: GpuRequest, names: list[str], keys: list[Key],
        known: Container[Key], add: Callable[[Key, Verdict], None],
    ) -> None:
        """``add(key, verdict)`` once for each of ``keys`` (those of ``names``) not in
        ``known``; ``add`` must make the key known. An unknown node's verdict is
        :data:`UNKNOWN`; only node states never seen for this pod shape are placed."""
        cache = self.verdicts(request)
        nodes = self.nodes
        for name, key in zip(names, keys, strict=True):
            if key not in known:
                add(key, UNKNOWN if key is None else self.judge(nodes[name], request, cache))

    def answer(
        self, verb: str, request: GpuRequest, names: list[str], compute: Callable[[], Answer]
    ) -> Answer:
        """``compute()``, or the same answer as last time when nothing changed.

        kube-scheduler asks the same question often: the pods of one Job share a shape,
        and a pending pod is retried on every cluster event. One answer is kept per verb
        and pod shape, for one state version and one candidate list (compared in full).
        """
        slot = self.scratch.setdefault((verb, request.shape), {})
        hit: _Memo | None = slot.get("last")
        if hit is not None and hit.version == self.version and hit.names == names:
            return hit.answer
        version = self.version
        answer = compute()
        slot["last"] = _Memo(version=version, names=names, answer=answer)
        return answer

    # -- pods seen in filter (cluster-file mode binds by UID) ---------------------------
    def remember_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata")
        uid = meta.get("uid") if isinstance(meta, Mapping) else None
        if not isinstance(uid, str) or not uid:
            return
        self._pods[uid] = pod
        self._pods.move_to_end(uid)
        while len(self._pods) > self._remembered:
            self._pods.popitem(last=False)

    def recall_pod(self, uid: str) -> Mapping[str, Any] | None:
        return self._pods.get(uid)

    # -- views --------------------------------------------------------------------------
    def users(self, name: str) -> dict[int, str]:
        """GPU index -> who holds it ("ns/name", or "ns/name (binding)")."""
        node = self.nodes.get(name)
        if node is None:
            return {}
        out: dict[int, str] = {}
        for uid in self._held_on.get(name, ()):
            h = self.holdings[uid]
            for i in indices_of(node.mask_of_ids(h.ids)):
                out[i] = str(h.pod) if h.pod.namespace else h.pod.name
        for uid in self._reserved_on.get(name, ()):
            h = self.reservations[uid]
            for i in indices_of(node.mask_of_ids(h.ids)):
                out.setdefault(i, f"{h.pod} (binding)")
        return out

    def node_view(self, name: str, *, with_topology: bool = True) -> dict[str, Any] | None:
        """A node for /topology: GPUs free or used and by whom, pods, the topology."""
        node = self.nodes.get(name)
        if node is None:
            return None
        held: dict[int, str] = {}
        for uid in self._held_on.get(name, ()):
            h = self.holdings[uid]
            for i in indices_of(node.mask_of_ids(h.ids)):
                held[i] = str(h.pod) if h.pod.namespace else h.pod.name
        binding: dict[int, str] = {}
        for uid in self._reserved_on.get(name, ()):
            h = self.reservations[uid]
            for i in indices_of(node.mask_of_ids(h.ids)):
                binding[i] = str(h.pod)
        gpus = [{
            "index": g.index, "id": node.ids[g.index], "model": g.model,
            "numa_node": g.numa_node, "free": bool(node.free_mask >> g.index & 1),
            "pod": held.get(g.index) or binding.get(g.index),
            "binding": g.index in binding and g.index not in held,
        } for g in node.topology.gpus]
        users = self.users(name)
        return {
            "name": name,
            "preset": node.topology.name,
            "model": node.topology.model,
            "gpu_count": node.topology.size,
            "fingerprint": node.topology.fingerprint,
            "free": list(indices_of(node.free_mask)),
            "used": {str(i): who for i, who in sorted(users.items())},
            "gpus": gpus,
            "pods": [self.holdings[u].as_json() for u in sorted(self._held_on.get(name, ()))],
            "binding": [self.reservations[u].as_json()
                        for u in sorted(self._reserved_on.get(name, ()))],
            **({"topology": dump(node.topology)} if with_topology else {}),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "synced": self.synced,
            "nodes": len(self.nodes),
            "gpus": sum(n.topology.size for n in self.nodes.values()),
            "free_gpus": sum(bin(n.free_mask).count("1") for n in self.nodes.values()),
            "pods": len(self.holdings),
            "binds_in_flight": len(self.reservations),
        }
