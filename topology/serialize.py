"""The project's own JSON form of a ``Topology``, with a schema version.

``load(dump(t)) == t`` for every topology (property-tested).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from topology.links import Link
from topology.model import Gpu, Nic, Topology, TopologyError

__all__ = ["SCHEMA", "dump", "dumps", "load", "loads"]

#: Bumped on any incompatible change of the form below.
SCHEMA: Final = "gputopo.io/topology/v1"

_GPU_FIELDS: Final = (
    "index", "uuid", "pci_bus_id", "model", "memory_mib", "numa_node", "cpu_affinity",
)


def dump(t: Topology) -> dict[str, Any]:
    """A JSON-ready dict: GPUs, NICs and the link matrix as ``topo -m`` cells."""
    return {
        "schema": SCHEMA,
        "name": t.name,
        "fingerprint": t.fingerprint,
        "gpus": [{f: getattr(g, f) for f in _GPU_FIELDS} for g in t.gpus],
        "links": [["X" if c is None else str(c) for c in row] for row in t.links],
        "nics": [{"name": n.name, "links": [str(c) for c in n.links]} for n in t.nics],
    }


def dumps(t: Topology, *, indent: int | None = 2) -> str:
    return json.dumps(dump(t), indent=indent)


def _cell(text: object, where: str) -> Link | None:
    if not isinstance(text, str):
        raise TopologyError(f"{where}: expected a link string, got {text!r}")
    if text.strip().upper() == "X":
        return None
    try:
        return Link.parse(text)
    except ValueError as e:
        raise TopologyError(f"{where}: {e}") from None


def _opt(raw: Mapping[str, Any], key: str, typ: type, where: str) -> Any:
    value = raw.get(key)
    if value is not None and (not isinstance(value, typ) or isinstance(value, bool)):
        raise TopologyError(f"{where}.{key}: expected {typ.__name__}, got {value!r}")
    return value


def load(data: Any) -> Topology:
    """Build a ``Topology`` from ``dump``'s form; errors name the offending field."""
    if not isinstance(data, Mapping):
        raise TopologyError("topology JSON must be an object")
    schema = data.get("schema")
    if schema != SCHEMA:
        raise TopologyError(f"unsupported topology schema {schema!r}; expected {SCHEMA!r}")
    gpus_raw = data.get("gpus")
    links_raw = data.get("links")
    if not isinstance(gpus_raw, list) or not isinstance(links_raw, list):
        raise TopologyError("topology JSON needs 'gpus' and 'links' lists")
    gpus = []
    for i, g in enumerate(gpus_raw):
        where = f"gpus[{i}]"
        if not isinstance(g, Mapping):
            raise TopologyError(f"{where}: expected an object")
        index = g.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise TopologyError(f"{where}.index: expected an integer, got {index!r}")
        gpus.append(Gpu(
            index=index,
            uuid=_opt(g, "uuid", str, where),
            pci_bus_id=_opt(g, "pci_bus_id", str, where),
            model=_opt(g, "model", str, where),
            memory_mib=_opt(g, "memory_mib", int, where),
            numa_node=_opt(g, "numa_node", int, where),
            cpu_affinity=_opt(g, "cpu_affinity", str, where),
        ))
    links = []
    for i, row in enumerate(links_raw):
        if not isinstance(row, list):
            raise TopologyError(f"links[{i}]: expected a list")
        links.append(tuple(_cell(c, f"links[{i}][{j}]") for j, c in enumerate(row)))
    nics_raw = data.get("nics") or []
    if not isinstance(nics_raw, list):
        raise TopologyError("topology JSON 'nics' must be a list")
    nics = []
    for k, n in enumerate(nics_raw):
        if not isinstance(n, Mapping) or not isinstance(n.get("name"), str):
            raise TopologyError(f"nics[{k}]: expected an object with a 'name'")
        nic_links = n.get("links")
        if not isinstance(nic_links, list):
            raise TopologyError(f"nics[{k}].links: expected a list")
        cells = []
        for j, c in enumerate(nic_links):
            cell = _cell(c, f"nics[{k}].links[{j}]")
            if cell is None:
                raise TopologyError(f"nics[{k}].links[{j}]: a NIC has no self link to a GPU")
            cells.append(cell)
        nics.append(Nic(name=n["name"], links=tuple(cells)))
    name = _opt(data, "name", str, "topology")
    return Topology(gpus=tuple(gpus), links=tuple(links), nics=tuple(nics), name=name)


def loads(text: str) -> Topology:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TopologyError(f"topology JSON is not valid JSON: {e}") from None
    return load(data)
