"""Built-in topologies of real machines, for tests, the simulator and machines without GPUs.

Each preset is the project's own compact description (an edge list or a rule), taken
from a real ``nvidia-smi topo -m`` matrix; ``tests/topology/test_presets.py`` checks
every preset that has a fixture in ``shared/fixtures/topologies/`` against the parsed
fixture: the same link matrix, NUMA nodes, CPU affinity and NICs. Where a fixture has no
NUMA column (the DGX-1 report), NUMA ids are the ones the parser infers from CPU
affinity. GPU models and memory sizes are what ``nvidia-smi`` reports for the model named
in the fixture's source line; where the source does not name the model, the description
says which one was assumed. UUIDs and bus ids are left empty: give them per node with
``Topology.with_gpus``.

>>> t = preset("dgx1-v100")
>>> t.name, t.size, str(t.link(0, 3)), str(t.link(0, 5)), t.gpus[4].numa_node
('dgx1-v100', 8, 'NV2', 'SYS', 1)
>>> sorted(PRESETS)[:3]
['aws-p4d', 'dgx-a100', 'dgx1-v100']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from topology.links import Link
from topology.model import Gpu, Nic, Topology, TopologyError

__all__ = ["PRESETS", "Preset", "preset"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """A named machine: ``build()`` returns its ``Topology`` (a fresh, equal value each call)."""

    name: str
    description: str
    build: Callable[[], Topology]


_SYS: Final = Link.parse("SYS")

#: A rule giving the link between GPUs i and j (i != j).
_Rule = Callable[[int, int], Link]


def _machine(
    name: str,
    *,
    model: str,
    memory_mib: int,
    numa: Sequence[int],
    cpu: Mapping[int, str],
    rule: _Rule,
    nics: Sequence[tuple[str, str]] = (),
) -> Topology:
    """Build a topology from a link rule.

    ``numa[i]`` is GPU i's NUMA node and ``cpu`` its CPU affinity by NUMA node; each NIC is
    ``(name, "<link to GPU0> <link to GPU1> ...")``.
    """
    n = len(numa)
    gpus = tuple(
        Gpu(
            index=i,
            model=model,
            memory_mib=memory_mib,
            numa_node=numa[i],
            cpu_affinity=cpu[numa[i]],
        )
        for i in range(n)
    )
    links = tuple(
        tuple(None if i == j else rule(min(i, j), max(i, j)) for j in range(n)) for i in range(n)
    )
    nic_values = tuple(
        Nic(name=nic, links=tuple(Link.parse(c) for c in cells.split())) for nic, cells in nics
    )
    return Topology(gpus=gpus, links=links, nics=nic_values, name=name)


def _edges(table: str, default: Link = _SYS) -> _Rule:
    """A rule from ``"0-3:NV2 1-2:NV2 ..."``; unlisted pairs get ``default``."""
    pairs: dict[tuple[int, int], Link] = {}
    for item in table.split():
        pair, cell = item.split(":")
        a, b = (int(x) for x in pair.split("-"))
        pairs[min(a, b), max(a, b)] = Link.parse(cell)
    return lambda i, j: pairs.get((i, j), default)


def _all(cell: str) -> _Rule:
    link = Link.parse(cell)
    return lambda i, j: link


def _nic_pairs(names: Sequence[str], near: str, far: str, gpus: int) -> list[tuple[str, str]]:
    """NICs ``2k`` and ``2k+1`` sit near GPUs ``2k`` and ``2k+1`` (DGX A100 style)."""
    return [
        (nic, " ".join(near if g // 2 == k // 2 else far for g in range(gpus)))
        for k, nic in enumerate(names)
    ]


# --- the machines -----------------------------------------------------------------------

#: DGX-1 V100 hybrid cube-mesh: two quads (0-3, 4-7), each a ring of NV2 with NV1
#: diagonals, joined GPU i to GPU i+4. Every GPU has six NVLinks.
_DGX1_EDGES: Final = (
    "0-1:NV1 0-2:NV1 0-3:NV2 0-4:NV2 1-2:NV2 1-3:NV1 1-5:NV2 2-3:NV2 2-6:NV1 3-7:NV1 "
    "4-5:NV1 4-6:NV1 4-7:NV2 5-6:NV2 5-7:NV1 6-7:NV2"
)


def _dgx1_v100() -> Topology:
    return _machine(
        "dgx1-v100",
        model="Tesla V100-SXM2-16GB",
        memory_mib=16160,
        numa=[0, 0, 0, 0, 1, 1, 1, 1],
        cpu={0: "0-11,24-35", 1: "12-23,36-47"},
        rule=_edges(_DGX1_EDGES),
        nics=[("mlx5_0", "NODE NODE PIX PIX SYS SYS SYS SYS")],
    )


def _dgx_a100() -> Topology:
    return _machine(
        "dgx-a100",
        model="NVIDIA A100-SXM4-40GB",
        memory_mib=40960,
        numa=[3, 3, 1, 1, 7, 7, 5, 5],
        cpu={3: "48-63,176-191", 1: "16-31,144-159", 7: "112-127,240-255", 5: "80-95,208-223"},
        rule=_all("NV12"),
        nics=[
            *_nic_pairs([f"mlx5_{k}" for k in range(8)], "PXB", "SYS", 8),
            ("mlx5_8", "SYS " * 8),
            ("mlx5_9", "SYS " * 8),
        ],
    )


def _hgx_h100() -> Topology:
    # Per socket: two IB NICs behind each GPU pair's switch (PIX to one GPU, PXB to the
    # other, NODE to the other pair); five Ethernet NICs on socket 1 (NODE there).
    ib = []
    for k in range(8):
        cells = []
        for g in range(8):
            if g // 4 != k // 4:
                cells.append("SYS")
            elif g // 2 != k // 2:
                cells.append("NODE")
            else:
                cells.append("PIX" if g == k else "PXB")
        ib.append((f"mlx5_ib{k}", " ".join(cells)))
    eth = [(f"mlx5_eth{k}", "SYS SYS SYS SYS NODE NODE NODE NODE") for k in range(5)]
    return _machine(
        "hgx-h100",
        model="NVIDIA H100 80GB HBM3",
        memory_mib=81559,
        numa=[0, 0, 0, 0, 1, 1, 1, 1],
        cpu={0: "0-55,112-167", 1: "56-111,168-223"},
        rule=_all("NV18"),
        nics=ib + eth,
    )


def _aws_p4d() -> Topology:
    return _machine(
        "aws-p4d",
        model="NVIDIA A100-SXM4-40GB",
        memory_mib=40960,
        numa=[0, 0, 0, 0, 1, 1, 1, 1],
        cpu={0: "0-23,48-71", 1: "24-47,72-95"},
        rule=_all("NV12"),
    )


def _pcie_8gpu_nvlink_pairs() -> Topology:
    return _machine(
        "pcie-8gpu-nvlink-pairs",
        model="NVIDIA A100 80GB PCIe",
        memory_mib=81920,
        numa=[0, 0, 0, 0, 1, 1, 1, 1],
        cpu={0: "0-31", 1: "32-63"},
        rule=_edges("0-2:NV12 1-3:NV12 4-5:NV12 6-7:NV12"),
    )


def _pcie_4gpu_nvlink_pairs() -> Topology:
    return _machine(
        "pcie-4gpu-nvlink-pairs",
        model="NVIDIA A100-PCIE-40GB",
        memory_mib=40960,
        numa=[0, 0, 1, 1],
        cpu={0: "0-27,56-83", 1: "28-55,84-111"},
        rule=_edges("0-1:NV12 2-3:NODE"),
        nics=[("mlx5_0", "NODE NODE SYS SYS"), ("mlx5_1", "NODE NODE SYS SYS")],
    )


def _pcie_8gpu_sys() -> Topology:
    return _machine(
        "pcie-8gpu-sys",
        model="NVIDIA GeForce RTX 4090",
        memory_mib=24564,
        numa=[0, 0, 0, 0, 1, 1, 1, 1],
        cpu={0: "0-55,112-167", 1: "56-111,168-223"},
        rule=_all("SYS"),
        nics=[(nic, "SYS SYS SYS SYS SYS SYS PHB SYS") for nic in ("NIC0", "NIC1")],
    )


def _workstation_2gpu_nvlink() -> Topology:
    return _machine(
        "workstation-2gpu-nvlink",
        model="NVIDIA GeForce RTX 3090",
        memory_mib=24576,
        numa=[0, 0],
        cpu={0: "0-5"},
        rule=_all("NV4"),
    )


def _gb200_4gpu() -> Topology:
    return _machine(
        "gb200-4gpu",
        model="NVIDIA GB200",
        memory_mib=189471,
        numa=[0, 0, 1, 1],
        cpu={0: "0-71", 1: "72-143"},
        rule=_all("NV18"),
    )


def _nvswitch_16gpu() -> Topology:
    return _machine(
        "nvswitch-16gpu",
        model="Tesla V100-SXM3-32GB",
        memory_mib=32480,
        numa=[0] * 8 + [1] * 8,
        cpu={0: "0-23,48-71", 1: "24-47,72-95"},
        rule=_all("NV6"),
    )


def _pcie_tree(i: int, j: int) -> Link:
    """Pairs under a PCIe switch, two switches under an upper switch, two of those per socket."""
    if i // 2 == j // 2:
        return Link.parse("PIX")
    if i // 4 == j // 4:
        return Link.parse("PXB")
    if i // 8 == j // 8:
        return Link.parse("NODE")
    return _SYS


def _pcie_16gpu_tree() -> Topology:
    return _machine(
        "pcie-16gpu-tree",
        model="NVIDIA L4",
        memory_mib=23034,
        numa=[0] * 8 + [1] * 8,
        cpu={0: "0-31,64-95", 1: "32-63,96-127"},
        rule=_pcie_tree,
    )


_ALL: Final = (
    Preset(
        name="dgx1-v100",
        description="DGX-1 V100: 8x V100-SXM2-16GB, hybrid cube-mesh of NV1/NV2 links "
        "(not all pairs linked), 2 sockets, 1 EDR NIC",
        build=_dgx1_v100,
    ),
    Preset(
        name="dgx-a100",
        description="DGX A100: 8x A100-SXM4-40GB on NVSwitch (NV12 all pairs), "
        "GPUs on NUMA nodes 3,3,1,1,7,7,5,5, 10 ConnectX NICs",
        build=_dgx_a100,
    ),
    Preset(
        name="hgx-h100",
        description="HGX/DGX H100 class: 8x H100 80GB HBM3 on NVSwitch (NV18 all pairs), "
        "2 sockets, 8 IB + 5 Ethernet NICs",
        build=_hgx_h100,
    ),
    Preset(
        name="aws-p4d",
        description="AWS p4d.24xlarge: 8x A100-SXM4-40GB on NVSwitch (NV12), 2 sockets",
        build=_aws_p4d,
    ),
    Preset(
        name="pcie-8gpu-nvlink-pairs",
        description="PCIe server, 8 GPUs in NVLink-bridged pairs 0-2, 1-3, 4-5, 6-7 (NV12), "
        "other pairs SYS, 2 sockets; model assumed A100 80GB PCIe (source does not say)",
        build=_pcie_8gpu_nvlink_pairs,
    ),
    Preset(
        name="pcie-4gpu-nvlink-pairs",
        description="PCIe server, 4x A100 PCIe (40GB assumed): GPUs 0-1 NVLink-bridged "
        "(NV12), 2-3 NODE (the report mentions a second bridge; its matrix shows none), "
        "2 sockets, 2 NICs",
        build=_pcie_4gpu_nvlink_pairs,
    ),
    Preset(
        name="pcie-8gpu-sys",
        description="PCIe server, 8x RTX 4090, every pair SYS, NUMA 0 for GPUs 0-3 and 1 "
        "for 4-7, 2 NICs",
        build=_pcie_8gpu_sys,
    ),
    Preset(
        name="workstation-2gpu-nvlink",
        description="Workstation, 2x RTX 3090 with an NVLink bridge (NV4), one socket",
        build=_workstation_2gpu_nvlink,
    ),
    Preset(
        name="gb200-4gpu",
        description="GB200 compute tray: 4 GPUs NV18 all pairs, 2 Grace CPUs (NUMA 0,0,1,1)",
        build=_gb200_4gpu,
    ),
    Preset(
        name="nvswitch-16gpu",
        description="DGX-2 class (benchmarks): 16x V100-SXM3-32GB on NVSwitch, NV6 all "
        "pairs, NUMA 0 for GPUs 0-7 and 1 for 8-15",
        build=_nvswitch_16gpu,
    ),
    Preset(
        name="pcie-16gpu-tree",
        description="PCIe tree (benchmarks): 16x L4; pairs under a switch (PIX), two "
        "switches under an upper switch (PXB), two of those per socket on different host "
        "bridges (NODE), two sockets (SYS)",
        build=_pcie_16gpu_tree,
    ),
)

#: Every preset by name.
PRESETS: Final[Mapping[str, Preset]] = MappingProxyType({p.name: p for p in _ALL})


def preset(name: str) -> Topology:
    """The topology of the preset called ``name``.

    Raises
    ------
    TopologyError
        For an unknown name; the message lists the known ones.

    Examples
    --------
    >>> preset("hgx-h100").gpus[0].model
    'NVIDIA H100 80GB HBM3'
    >>> preset("dgx-2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    topology.model.TopologyError: unknown preset 'dgx-2'; known: aws-p4d, dgx-a100, ...
    """
    found = PRESETS.get(name)
    if found is None:
        raise TopologyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return found.build()
