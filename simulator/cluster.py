"""The simulated cluster: nodes of built-in machines, or the extender's cluster file.

``--nodes 64 --node-topology dgx1-v100`` (or ``dgx-a100:40,pcie-8gpu-sys:24``: counts
per preset; entries without a count share what is left of ``--nodes``), or
``--cluster-file FILE`` in the extender's format (see docs/extender.md), whose ``used``
GPUs and ``pods`` stay held for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from simulator.decisions import ClusterFileError, read_cluster_file
from topology.model import Topology, TopologyError
from topology.sources import load_topology

__all__ = ["DEFAULT_NODES", "DEFAULT_PRESET", "Cluster", "ClusterError", "Node", "from_file",
           "from_presets"]

DEFAULT_NODES: Final = 64
DEFAULT_PRESET: Final = "dgx1-v100"


class ClusterError(ValueError):
    """A cluster that cannot be built; the message names the flag or the file's path."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    name: str
    topology: Topology
    #: The machine's kind for reports (preset name, else the topology's name or model).
    kind: str
    #: GPU indices held outside the simulation for the whole run.
    used: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    nodes: tuple[Node, ...]
    #: How it was given, for reports ("64 x dgx1-v100", "cluster file x.yaml").
    source: str

    @property
    def gpus(self) -> int:
        return sum(n.topology.size for n in self.nodes)

    @property
    def max_node_gpus(self) -> int:
        return max(n.topology.size for n in self.nodes)

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.kind] = counts.get(n.kind, 0) + 1
        kinds = ", ".join(f"{c} x {k}" for k, c in counts.items())
        return f"{len(self.nodes)} nodes ({kinds}), {self.gpus} GPUs"


def _kind(t: Topology, fallback: str) -> str:
    return t.name or t.model or fallback


def from_presets(spec: str, nodes: int | None = None) -> Cluster:
    """Nodes from ``PRESET[:COUNT],...`` (a preset name, or a topo -m / JSON file).

    >>> c = from_presets("dgx1-v100:2,pcie-8gpu-sys", nodes=3)
    >>> [n.name for n in c.nodes], c.gpus
    (['dgx1-v100-000', 'dgx1-v100-001', 'pcie-8gpu-sys-000'], 24)
    """
    entries: list[tuple[str, int | None]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, count_text = item.rpartition(":")
        if sep and count_text.strip().isdigit():
            count: int | None = int(count_text)
            if count == 0:
                raise ClusterError(f"--node-topology {item}: a count must be at least 1")
        else:
            name, count = item, None
        entries.append((name.strip(), count))
    if not entries:
        raise ClusterError("--node-topology: no preset given (e.g. dgx1-v100:64)")
    if nodes is not None and nodes < 1:
        raise ClusterError(f"--nodes {nodes}: at least 1 node is needed")
    counted = sum(c for _, c in entries if c is not None)
    open_entries = [n for n, c in entries if c is None]
    total = nodes if nodes is not None else (
        max(DEFAULT_NODES, counted + len(open_entries)) if open_entries else counted)
    if counted > total or (not open_entries and counted != total):
        raise ClusterError(
            f"--node-topology {spec} gives {counted} nodes but --nodes is {total}")
    left = total - counted
    if open_entries and left < len(open_entries):
        raise ClusterError(
            f"--node-topology {spec}: {left} nodes left for {len(open_entries)} presets "
            "without a count")
    shares = {n: left // len(open_entries) + (1 if i < left % len(open_entries) else 0)
              for i, n in enumerate(open_entries)} if open_entries else {}
    out: list[Node] = []
    topologies: dict[str, Topology] = {}
    used_names: dict[str, int] = {}
    for name, count in entries:
        try:
            t = topologies.get(name) or load_topology(name)
        except TopologyError as e:
            raise ClusterError(f"--node-topology: {e}") from None
        topologies[name] = t
        kind = Path(name).stem if Path(name).suffix else name
        for _ in range(count if count is not None else shares[name]):
            k = used_names.get(kind, 0)
            used_names[kind] = k + 1
            out.append(Node(name=f"{kind}-{k:03d}", topology=t, kind=_kind(t, kind)))
    return Cluster(nodes=tuple(out), source=spec)


def from_file(path: str | Path) -> Cluster:
    """Nodes of an extender cluster file (read by the extender's own loader)."""
    try:
        file_nodes = read_cluster_file(path)
    except ClusterFileError as e:
        raise ClusterError(str(e)) from None
    if not file_nodes:
        raise ClusterError(f"{path}: the cluster file lists no nodes")
    return Cluster(
        nodes=tuple(Node(name=n.name, topology=n.topology, kind=_kind(n.topology, "custom"),
                         used=n.used) for n in file_nodes),
        source=f"cluster file {path}",
    )
