"""What the extender and the device plugin hand each other through the API server.

Pure encode/decode of the pod annotations and of the ``GPUTopology`` object; the
daemons do the I/O. Decoding never raises on foreign data without saying which key
and value are wrong.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from topology.gpuids import GpuIds, stable_gpu_uuid
from topology.model import Topology, TopologyError
from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_KIND, GPUTOPOLOGY_VERSION
from topology.serialize import dump, load

__all__ = [
    "HandoffError",
    "decode_gpu_sets",
    "encode_gpu_sets",
    "gpu_ids",
    "gputopology_object",
    "nvlink_summary",
    "stable_gpu_uuid",
    "topology_from_gputopology",
]


def gpu_ids(topology: Topology) -> tuple[str, ...]:
    """The id of every GPU: its UUID, or :func:`stable_gpu_uuid` when it has none."""
    return GpuIds.of(topology).ids


class HandoffError(ValueError):
    """An annotation or object written by someone else that cannot be read."""


def encode_gpu_sets(sets: Mapping[str, list[str] | tuple[str, ...]]) -> str:
    """``{container: [uuid, ...]}`` as the compact, sorted JSON stored on the pod.

    >>> encode_gpu_sets({"main": ["GPU-b", "GPU-a"]})
    '{"main":["GPU-a","GPU-b"]}'
    """
    return json.dumps(
        {name: sorted(uuids) for name, uuids in sorted(sets.items())},
        separators=(",", ":"),
    )


def decode_gpu_sets(key: str, value: str) -> dict[str, tuple[str, ...]]:
    """Read an assigned/allocated annotation; ``key`` names it in errors.

    >>> decode_gpu_sets("k", '{"main":["GPU-a"]}')
    {'main': ('GPU-a',)}
    """
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise HandoffError(f"annotation {key}: not JSON: {value[:80]!r}") from None
    if not isinstance(data, dict):
        raise HandoffError(f"annotation {key}: expected an object of container -> [GPU UUID]")
    out: dict[str, tuple[str, ...]] = {}
    for container, uuids in data.items():
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise HandoffError(
                f"annotation {key}: container {container!r} must map to a list of GPU UUIDs"
            )
        out[str(container)] = tuple(uuids)
    return out


def nvlink_summary(topology: Topology) -> str:
    """The NVLink classes between the node's GPUs, weakest first, or ``none``.

    What ``kubectl get gputopologies`` shows in its NVLink column.

    >>> from topology.presets import preset
    >>> nvlink_summary(preset("dgx1-v100")), nvlink_summary(preset("pcie-8gpu-sys"))
    ('NV1,NV2', 'none')
    """
    links = sorted({c for row in topology.links for c in row if c is not None and c.is_nvlink})
    return ",".join(map(str, links)) or "none"


def _model_summary(topology: Topology) -> str:
    if topology.model is not None:
        return topology.model
    return "mixed" if len({g.model for g in topology.gpus}) > 1 else "unknown"


def gputopology_object(
    node_name: str, topology: Topology, *, node_uid: str | None = None
) -> dict[str, Any]:
    """The cluster-scoped ``GPUTopology`` object a device plugin publishes for its node.

    ``spec.topology`` is the truth (``topology.serialize`` form); ``gpuCount``, ``model``
    and ``nvlink`` are derived from it for the printer columns of ``kubectl get`` (the
    CRD checks ``gpuCount`` against the topology).
    """
    metadata: dict[str, Any] = {"name": node_name}
    if node_uid:
        metadata["ownerReferences"] = [{
            "apiVersion": "v1",
            "kind": "Node",
            "name": node_name,
            "uid": node_uid,
        }]
    return {
        "apiVersion": f"{GPUTOPOLOGY_GROUP}/{GPUTOPOLOGY_VERSION}",
        "kind": GPUTOPOLOGY_KIND,
        "metadata": metadata,
        "spec": {
            "nodeName": node_name,
            "gpuCount": topology.size,
            "model": _model_summary(topology),
            "nvlink": nvlink_summary(topology),
            "topology": dump(topology),
        },
    }


def topology_from_gputopology(obj: Mapping[str, Any]) -> tuple[str, Topology]:
    """``(node name, topology)`` from a ``GPUTopology`` object."""
    spec = obj.get("spec")
    meta = obj.get("metadata") or {}
    name = (spec or {}).get("nodeName") or meta.get("name")
    if not isinstance(spec, Mapping) or not isinstance(name, str):
        raise HandoffError("GPUTopology object has no spec.nodeName or metadata.name")
    try:
        return name, load(spec.get("topology"))
    except TopologyError as e:
        raise HandoffError(f"GPUTopology {name}: {e}") from None
