"""The cluster file: nodes and what they hold, for running with no cluster at all.

YAML or JSON (JSON is YAML)::

    nodes:
    - name: gpu-node-1
      topology: dgx1-v100        # a preset name, or a topo -m / JSON file (relative paths
                                 # are relative to the cluster file)
      used: [0, 3]               # GPU indices already held (optional)
    pods:                        # optional: pods already running, by GPU index
    - {namespace: ml, name: trainer-0, node: gpu-node-1, gpus: {main: [4, 5]}}

Every problem is reported at once, each with its path (``nodes[2].used[1]: ...``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from extender.memory import MemoryCluster
from extender.request import PodRef
from extender.state import FILE_SOURCE, ClusterState, Holding
from topology.gpuids import GpuIds
from topology.model import Topology, TopologyError
from topology.names import DEFAULT_RESOURCE_NAME
from topology.sources import load_topology

__all__ = ["ClusterFile", "ClusterFileError", "file_cluster", "load_cluster_file", "parse_cluster"]


class ClusterFileError(ValueError):
    """The cluster file is unreadable; the message lists every problem with its path."""


class ClusterFile:
    """The decoded file: topologies per node and the holdings it declares."""

    def __init__(self, topologies: dict[str, Topology], holdings: list[Holding]) -> None:
        self.topologies = topologies
        self.holdings = holdings


def load_cluster_file(path: str | Path) -> ClusterFile:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ClusterFileError(f"{p}: cannot read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClusterFileError(f"{p}: not YAML/JSON: {e}") from None
    return parse_cluster(data, base=p.parent, where=str(p))


def parse_cluster(data: Any, *, base: Path | None = None, where: str = "cluster") -> ClusterFile:
    """Decode the file's content (already parsed YAML/JSON)."""
    errors: list[str] = []
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
        raise ClusterFileError(f"{where}: expected an object with a 'nodes' list")
    cache: dict[str, Topology] = {}
    topologies: dict[str, Topology] = {}
    holdings: list[Holding] = []
    for i, raw in enumerate(data["nodes"]):
        path = f"nodes[{i}]"
        if not isinstance(raw, Mapping):
            errors.append(f"{path}: expected an object with name and topology")
            continue
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            errors.append(f"{path}.name: expected a node name, got {name!r}")
            continue
        if name in topologies:
            errors.append(f"{path}.name: node {name!r} is listed twice")
            continue
        topo = _topology(raw.get("topology"), base, cache, f"{path}.topology", errors)
        if topo is None:
            continue
        topologies[name] = topo
        used = raw.get("used", [])
        indices = _indices(used, topo, f"{path}.used", errors)
        if indices:
            ids = GpuIds.of(topo)
            holdings.append(Holding(
                pod=PodRef(namespace="", name=FILE_SOURCE, uid=f"{FILE_SOURCE}:{name}"),
                node=name, sets=(("used", ids.ids_of(indices)),),
                source=FILE_SOURCE,
            ))
    pods = data.get("pods", [])
    if not isinstance(pods, list):
        errors.append("pods: expected a list")
        pods = []
    for i, raw in enumerate(pods):
        h = _pod(raw, topologies, f"pods[{i}]", errors)
        if h is not None:
            holdings.append(h)
    if errors:
        raise ClusterFileError(f"{where}: " + "; ".join(errors))
    return ClusterFile(topologies, holdings)


def file_cluster(
    path: str | Path, *, state: ClusterState | None = None, state_file: str | Path | None = None,
    resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,),
) -> MemoryCluster:
    """A :class:`MemoryCluster` loaded from a cluster file (mode ``file``).

    ``state_file``: where the holdings of binds are kept across restarts (None: in
    memory only; ``extender.statefile.default_path(path)`` is the usual place).
    """
    f = load_cluster_file(path)
    return MemoryCluster(topologies=f.topologies, fixed=f.holdings, state=state, mode="file",
                         resource_names=resource_names,
                         state_file=None if state_file is None else Path(state_file))


def _topology(
    spec: object, base: Path | None, cache: dict[str, Topology], path: str, errors: list[str]
) -> Topology | None:
    if not isinstance(spec, str) or not spec:
        errors.append(f"{path}: expected a preset name or a file path, got {spec!r}")
        return None
    if spec in cache:
        return cache[spec]
    resolved = spec
    if base is not None and not Path(spec).is_absolute() and (base / spec).exists():
        resolved = str(base / spec)
    try:
        t = load_topology(resolved)
    except TopologyError as e:
        errors.append(f"{path}: {e}")
        return None
    cache[spec] = t
    return t


def _indices(value: object, topo: Topology, path: str, errors: list[str]) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list):
        errors.append(f"{path}: expected a list of GPU indices")
        return []
    out: list[int] = []
    for k, v in enumerate(value):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < topo.size:
            errors.append(f"{path}[{k}]: {v!r} is not a GPU index 0..{topo.size - 1}")
        elif v in out:
            errors.append(f"{path}[{k}]: GPU {v} is listed twice")
        else:
            out.append(v)
    return out


def _pod(
    raw: object, topologies: Mapping[str, Topology], path: str, errors: list[str]
) -> Holding | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: expected an object")
        return None
    bad = [k for k in ("namespace", "name", "node") if not isinstance(raw.get(k), str)]
    if bad:
        errors.append(f"{path}: {', '.join(bad)} must be strings")
        return None
    node = raw["node"]
    topo = topologies.get(node)
    if topo is None:
        errors.append(f"{path}.node: {node!r} is not one of the file's nodes")
        return None
    gpus = raw.get("gpus")
    if not isinstance(gpus, Mapping) or not gpus:
        errors.append(f"{path}.gpus: expected {{container: [GPU index, ...]}}")
        return None
    ids = GpuIds.of(topo)
    sets = []
    for container, value in gpus.items():
        indices = _indices(value, topo, f"{path}.gpus.{container}", errors)
        sets.append((str(container), ids.ids_of(indices)))
    uid = raw.get("uid") or f"{FILE_SOURCE}:{raw['namespace']}/{raw['name']}"
    return Holding(
        pod=PodRef(namespace=raw["namespace"], name=raw["name"], uid=str(uid)),
        node=node, sets=tuple(sorted(sets)), source=FILE_SOURCE,
    )
