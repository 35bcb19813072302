"""Hypothesis strategies shared by the test suites.

``topologies(min_gpus=1, max_gpus=10)`` draws a valid ``Topology``: a random symmetric
link matrix (PCIe classes and NVLink bonds NV1..NV18, some pairs drawn from a small
palette so equal links are common), with random GPU models, memory, NUMA nodes, CPU
affinities, UUIDs, bus ids, NICs and name; any of the optional fields may be missing.
Every value it draws is also written and read back exactly by ``topo -m`` text
(affinities and NIC names have no blanks; an affinity is never ``N/A``).
"""

from __future__ import annotations

from hypothesis import strategies as st

from topology.links import Link, LinkKind
from topology.model import Gpu, Nic, Topology

__all__ = ["MIN_LINKS", "Request", "links", "pcie_links", "requests", "topologies"]

_MODELS = (
    "Tesla V100-SXM2-16GB",
    "NVIDIA A100-SXM4-40GB",
    "NVIDIA H100 80GB HBM3",
    "NVIDIA GeForce RTX 3090",
    "NVIDIA L4",
)


def pcie_links() -> st.SearchStrategy[Link]:
    """SYS, NODE, PHB, PXB or PIX."""
    return st.sampled_from([Link.pcie(k) for k in LinkKind if k is not LinkKind.NVLINK])


def links() -> st.SearchStrategy[Link]:
    """Any link class: a PCIe path or NV1..NV18."""
    return st.one_of(pcie_links(), st.integers(1, 18).map(Link.nvlink))


_affinities = st.from_regex(r"[0-9]{1,3}(-[0-9]{1,3})?(,[0-9]{1,3}-[0-9]{1,3})?", fullmatch=True)


@st.composite
def topologies(draw: st.DrawFn, min_gpus: int = 1, max_gpus: int = 10) -> Topology:
    """A random valid ``Topology`` with ``min_gpus..max_gpus`` GPUs."""
    n = draw(st.integers(min_gpus, max_gpus))
    palette = draw(st.lists(links(), min_size=1, max_size=4))
    cell = st.one_of(st.sampled_from(palette), links())
    matrix: list[list[Link | None]] = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i][j] = matrix[j][i] = draw(cell)

    model = draw(st.none() | st.sampled_from(_MODELS))
    mixed_models = draw(st.booleans())
    numa_count = draw(st.integers(1, 4))
    numa_ids = draw(st.lists(st.integers(0, 7), min_size=numa_count, max_size=numa_count,
                             unique=True))
    with_numa = draw(st.booleans())
    affinity_by_numa = {k: draw(_affinities) for k in numa_ids}
    gpus = []
    for i in range(n):
        numa = draw(st.sampled_from(numa_ids))
        gpus.append(Gpu(
            index=i,
            uuid=draw(st.none() | st.uuids().map(lambda u: f"GPU-{u}")),
            pci_bus_id=draw(st.none() | st.integers(0, 255).map(
                lambda b: f"00000000:{b:02X}:00.0")),
            model=draw(st.none() | st.sampled_from(_MODELS)) if mixed_models else model,
            memory_mib=draw(st.none() | st.integers(1024, 200_000)),
            numa_node=numa if with_numa else draw(st.none() | st.sampled_from(numa_ids)),
            cpu_affinity=draw(st.none() | st.just(affinity_by_numa[numa])),
        ))

    nic_count = draw(st.integers(0, 3))
    nic_names = draw(st.lists(
        st.from_regex(r"mlx5_[0-9a-z]{1,6}", fullmatch=True),
        min_size=nic_count, max_size=nic_count, unique=True,
    ))
    nics = [
        Nic(name=name, links=tuple(draw(pcie_links()) for _ in range(n))) for name in nic_names
    ]
    name = draw(st.none() | st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
    return Topology(
        gpus=tuple(gpus),
        links=tuple(tuple(row) for row in matrix),
        nics=tuple(nics),
        name=name,
    )


#: The min-link values a request draws (None: no constraint), as users write them.
MIN_LINKS = [None, "sys", "node", "phb", "pxb", "pix", "nvlink", "NV2", "NV4", "NV12"]

#: (topology, size, free GPU indices, must-include indices, min-link text or None)
Request = tuple[Topology, int, set[int], set[int], str | None]


@st.composite
def requests(draw: st.DrawFn, max_gpus: int = 10, must_include: bool = True) -> Request:
    """One allocation request on a random topology: the one strategy of both brute-force
    property tests (the allocator's, and the extender filter's, which leaves
    ``must_include`` off: pods cannot ask for particular GPUs)."""
    t = draw(topologies(min_gpus=1, max_gpus=max_gpus))
    free = set(draw(st.sets(st.integers(0, t.size - 1))))
    size = draw(st.integers(0, t.size + 1))
    must = set(draw(st.sets(st.integers(0, t.size - 1), max_size=3))) if must_include else set()
    min_link = draw(st.sampled_from(MIN_LINKS))
    return t, size, free, must, min_link
