"""One node's GPU ids: index <-> id (UUID) <-> bit mask, in one place.

The allocator works on bit masks of GPU indices; the pod annotations, the kubelet and
NVML speak GPU UUIDs. ``GpuIds`` converts between the three for one topology, and
:func:`mask_of` / :func:`indices_of` are the index <-> mask halves on their own.

>>> from topology.presets import preset
>>> ids = GpuIds.of(preset("dgx1-v100"))
>>> ids.mask_of_ids(["GPU-00000000-0000-0000-0000-000000000003", "GPU-unknown"])
8
>>> ids.ids_of_mask(0b101)
('GPU-00000000-0000-0000-0000-000000000000', 'GPU-00000000-0000-0000-0000-000000000002')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from topology.model import Topology

__all__ = ["GpuIds", "indices_of", "mask_of", "stable_gpu_uuid"]


def stable_gpu_uuid(index: int) -> str:
    """The id of GPU ``index`` on a node whose topology carries no UUIDs (presets, files).

    The extender writes it in the assigned annotation and the plugin's fake NVML
    advertises it, so both name the same device; a person reading logs sees the index.

    >>> stable_gpu_uuid(7)
    'GPU-00000000-0000-0000-0000-000000000007'
    """
    return f"GPU-00000000-0000-0000-0000-{index:012d}"


def mask_of(indices: Iterable[int]) -> int:
    """Bit ``i`` set for every GPU index ``i``.

    >>> mask_of([0, 3])
    9
    """
    m = 0
    for i in indices:
        m |= 1 << i
    return m


def indices_of(mask: int) -> tuple[int, ...]:
    """The GPU indices of a mask, ascending.

    >>> indices_of(9)
    (0, 3)
    """
    out = []
    i = 0
    while mask:
        if mask & 1:
            out.append(i)
        mask >>= 1
        i += 1
    return tuple(out)


@dataclass(frozen=True, slots=True)
class GpuIds:
    """The id of every GPU of one topology (its UUID, else :func:`stable_gpu_uuid`)."""

    ids: tuple[str, ...]
    index_of: Mapping[str, int] = field(compare=False, repr=False)

    @classmethod
    def of(cls, topology: Topology) -> GpuIds:
        ids = tuple(g.uuid or stable_gpu_uuid(g.index) for g in topology.gpus)
        return cls(ids, {gid: i for i, gid in enumerate(ids)})

    @property
    def full_mask(self) -> int:
        return (1 << len(self.ids)) - 1

    def mask_of_ids(self, ids: Iterable[str]) -> int:
        """The mask of the ids this node has (unknown ids are left out)."""
        m = 0
        get = self.index_of.get
        for gid in ids:
            i = get(gid)
            if i is not None:
                m |= 1 << i
        return m

    def unknown(self, ids: Iterable[str]) -> tuple[str, ...]:
        """The ids of ``ids`` that are not GPUs of this node, in order."""
        return tuple(gid for gid in ids if gid not in self.index_of)

    def ids_of(self, indices: Iterable[int]) -> tuple[str, ...]:
        return tuple(self.ids[i] for i in indices)

    def ids_of_mask(self, mask: int) -> tuple[str, ...]:
        return self.ids_of(indices_of(mask))
