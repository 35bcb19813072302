"""A ``networkx`` view of a topology, for analysis and drawing.

Nodes are GPU indices carrying the ``Gpu`` fields as attributes; every pair of GPUs is
an edge with

``link``
    the ``topo -m`` cell (``"NV2"``, ``"PIX"``, ``"SYS"``, ...);
``rank``
    ``Link.rank``: larger is better, comparable across classes;
``weight``
    nominal one-direction bandwidth in GB/s (``Topology.bandwidth``);
``nvlink``
    whether the pair is joined by NVLink; ``nvlinks`` the number of bonded links.

The helpers take a ``Topology`` or a graph made by ``build_graph``.

>>> from topology.presets import preset
>>> t = preset("pcie-8gpu-nvlink-pairs")
>>> G = build_graph(t)
>>> G.number_of_nodes(), G.number_of_edges(), G.edges[0, 2]["link"], G.edges[0, 2]["weight"]
(8, 28, 'NV12', 300.0)
>>> nvlink_islands(t)
[frozenset({0, 2}), frozenset({1, 3}), frozenset({4, 5}), frozenset({6, 7})]
"""

from __future__ import annotations

from typing import Any, TypeAlias

import networkx as nx  # type: ignore[import-untyped, unused-ignore]

from topology.model import Topology

__all__ = ["build_graph", "numa_groups", "nvlink_graph", "nvlink_islands"]

#: A ``Topology`` or the graph ``build_graph`` made of one.
TopologyLike: TypeAlias = "Topology | nx.Graph"

_GPU_ATTRIBUTES = ("uuid", "pci_bus_id", "model", "memory_mib", "numa_node", "cpu_affinity")


def build_graph(t: Topology) -> nx.Graph:
    """The complete graph of ``t``'s GPUs, every edge labelled with its link.

    Parameters
    ----------
    t : Topology

    Returns
    -------
    networkx.Graph
        Nodes ``0..n-1`` with the GPU's fields as attributes (and ``name``, e.g.
        ``"GPU0"``); graph attributes ``name`` and ``fingerprint``.

    Examples
    --------
    >>> from topology.presets import preset
    >>> G = build_graph(preset("dgx1-v100"))
    >>> G.nodes[4]["numa_node"], G.edges[0, 3]["link"], G.edges[0, 3]["nvlinks"]
    (1, 'NV2', 2)
    >>> sorted(G.edges[0, 5].items())
    [('link', 'SYS'), ('nvlink', False), ('nvlinks', 0), ('rank', 0), ('weight', 6.0)]
    """
    G = nx.Graph(name=t.name, fingerprint=t.fingerprint)
    for gpu in t.gpus:
        G.add_node(gpu.index, name=gpu.name, **{a: getattr(gpu, a) for a in _GPU_ATTRIBUTES})
    for i in range(t.size):
        for j in range(i + 1, t.size):
            link = t.link(i, j)
            G.add_edge(
                i,
                j,
                link=str(link),
                rank=link.rank,
                weight=t.bandwidth(i, j),
                nvlink=link.is_nvlink,
                nvlinks=link.nvlinks,
            )
    return G


def _as_graph(G: TopologyLike) -> Any:
    return build_graph(G) if isinstance(G, Topology) else G


def nvlink_graph(G: TopologyLike) -> nx.Graph:
    """Every GPU, and only the NVLink edges.

    Examples
    --------
    >>> from topology.presets import preset
    >>> H = nvlink_graph(preset("dgx1-v100"))
    >>> H.number_of_nodes(), H.number_of_edges(), H.has_edge(0, 5)
    (8, 16, False)
    """
    G = _as_graph(G)
    H = nx.Graph()
    H.graph.update(G.graph)
    H.add_nodes_from(G.nodes(data=True))
    H.add_edges_from((u, v, d) for u, v, d in G.edges(data=True) if d["nvlink"])
    return H


def nvlink_islands(G: TopologyLike) -> list[frozenset[int]]:
    """GPU sets that NVLink connects (directly or through other GPUs), by lowest index.

    A GPU without any NVLink is an island of its own.

    Examples
    --------
    >>> from topology.presets import preset
    >>> nvlink_islands(preset("pcie-4gpu-nvlink-pairs"))
    [frozenset({0, 1}), frozenset({2}), frozenset({3})]
    >>> nvlink_islands(preset("dgx1-v100"))
    [frozenset({0, 1, 2, 3, 4, 5, 6, 7})]
    """
    islands = [frozenset(int(n) for n in c) for c in nx.connected_components(nvlink_graph(G))]
    return sorted(islands, key=min)


def numa_groups(G: TopologyLike) -> dict[int | None, frozenset[int]]:
    """GPUs by NUMA node, in node order (``None``, unknown, last).

    Examples
    --------
    >>> from topology.presets import preset
    >>> numa_groups(preset("dgx-a100"))
    {1: frozenset({2, 3}), 3: frozenset({0, 1}), 5: frozenset({6, 7}), 7: frozenset({4, 5})}
    """
    G = _as_graph(G)
    groups: dict[int | None, set[int]] = {}
    for n, numa in G.nodes(data="numa_node"):
        groups.setdefault(numa, set()).add(int(n))
    order = sorted(groups, key=lambda k: (k is None, -1 if k is None else k))
    return {k: frozenset(groups[k]) for k in order}
