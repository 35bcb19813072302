"""The ``Topology`` value: a node's GPUs, its NICs, and the link between every pair."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from topology.links import Link, bandwidth_gbps, nvlink_gb_per_link

__all__ = ["MAX_ALLOCATOR_GPUS", "Gpu", "Nic", "Topology", "TopologyError"]

#: The allocator tabulates every subset of a node's GPUs: 2**16 masks at 16 GPUs.
MAX_ALLOCATOR_GPUS = 16


class TopologyError(ValueError):
    """A topology that cannot be built or parsed; the message names the culprit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gpu:
    """One GPU as ``nvidia-smi`` numbers it."""

    index: int
    uuid: str | None = None
    pci_bus_id: str | None = None
    model: str | None = None
    memory_mib: int | None = None
    numa_node: int | None = None
    cpu_affinity: str | None = None

    @property
    def name(self) -> str:
        return f"GPU{self.index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Nic:
    """A network device and its PCIe path to each GPU (``links[i]`` is to GPU ``i``)."""

    name: str
    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """A node's GPUs and the link between every pair.

    ``links[i][j]`` is the link between GPU ``i`` and GPU ``j``; the diagonal is
    ``None``. The value is immutable and checked at construction: square, symmetric,
    GPU indices ``0..n-1`` in order.

    >>> from topology.links import Link
    >>> nv, sys = Link.parse("NV2"), Link.parse("SYS")
    >>> t = Topology.from_matrix([[None, nv], [nv, None]])
    >>> t.size, str(t.link(0, 1))
    (2, 'NV2')
    """

    gpus: tuple[Gpu, ...]
    links: tuple[tuple[Link | None, ...], ...]
    nics: tuple[Nic, ...] = ()
    name: str | None = None
    fingerprint: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.gpus)
        if n == 0:
            raise TopologyError("a topology needs at least one GPU")
        for i, gpu in enumerate(self.gpus):
            if gpu.index != i:
                raise TopologyError(f"GPU at position {i} has index {gpu.index}; expected {i}")
        if len(self.links) != n:
            raise TopologyError(f"link matrix has {len(self.links)} rows for {n} GPUs")
        for i, row in enumerate(self.links):
            if len(row) != n:
                raise TopologyError(f"link matrix row GPU{i} has {len(row)} cells for {n} GPUs")
        for i, row in enumerate(self.links):
            if row[i] is not None:
                raise TopologyError(f"GPU{i} has a link to itself ({row[i]})")
            for j, cell in enumerate(row):
                if j != i and cell is None:
                    raise TopologyError(f"no link given between GPU{i} and GPU{j}")
                if cell != self.links[j][i]:
                    raise TopologyError(
                        f"asymmetric link: GPU{i}-GPU{j} is {cell} "
                        f"but GPU{j}-GPU{i} is {self.links[j][i]}"
                    )
        for nic in self.nics:
            if len(nic.links) != n:
                raise TopologyError(f"NIC {nic.name} has links to {len(nic.links)} of {n} GPUs")
        object.__setattr__(self, "fingerprint", _fingerprint(self))

    @classmethod
    def from_matrix(
        cls,
        links: Sequence[Sequence[Link | None]],
        *,
        gpus: Iterable[Gpu] | None = None,
        nics: Iterable[Nic] = (),
        name: str | None = None,
    ) -> Topology:
        """Build from a square matrix; GPUs default to bare ``Gpu(index=i)``."""
        gpu_tuple = tuple(gpus) if gpus is not None else tuple(
            Gpu(index=i) for i in range(len(links))
        )
        return cls(
            gpus=gpu_tuple,
            links=tuple(tuple(row) for row in links),
            nics=tuple(nics),
            name=name,
        )

    @property
    def size(self) -> int:
        return len(self.gpus)

    def link(self, i: int, j: int) -> Link:
        cell = self.links[i][j]
        if cell is None:
            raise TopologyError(f"GPU{i} has no link to itself")
        return cell

    @property
    def gb_per_nvlink(self) -> float:
        """GB/s per NVLink for this node's GPU model (see ``topology.links``)."""
        return nvlink_gb_per_link(self.gpus[0].model)

    def bandwidth(self, i: int, j: int) -> float:
        return bandwidth_gbps(self.link(i, j), self.gb_per_nvlink)

    @property
    def has_nvlink(self) -> bool:
        return any(c is not None and c.is_nvlink for row in self.links for c in row)

    @property
    def model(self) -> str | None:
        """The GPU model when every GPU has the same one."""
        models = {g.model for g in self.gpus}
        return models.pop() if len(models) == 1 else None

    def index_of_uuid(self, uuid: str) -> int:
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu.index
        raise KeyError(uuid)

    def with_gpus(self, gpus: Iterable[Gpu]) -> Topology:
        """The same links with other GPU details (UUIDs, bus ids) filled in."""
        return Topology(gpus=tuple(gpus), links=self.links, nics=self.nics, name=self.name)


def _fingerprint(t: Topology) -> str:
    """Hash of what placement depends on: links, models and NUMA nodes.

    UUIDs, bus ids, names and NICs are left out, so identical machines share every
    cache. The allocator breaks ties by NUMA node, so NUMA is part of the identity.
    """
    h = hashlib.sha256()
    for i, row in enumerate(t.links):
        gpu = t.gpus[i]
        h.update(f"{gpu.model}|{gpu.numa_node}|".encode())
        h.update(",".join("X" if c is None else str(c) for c in row).encode())
        h.update(b";")
    return h.hexdigest()[:16]
