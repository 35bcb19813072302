"""Link classes between two devices, in the terms of ``nvidia-smi topo -m``.

Order, worst to best::

    SYS < NODE < PHB < PXB < PIX < NV1 < NV2 < ... < NV18 < ...

A link is a frozen value with a single integer ``rank`` that carries that order, so
the allocator compares plain integers. NVSwitch systems show every GPU pair as
``NV<n>`` (n = links per GPU into the fabric) and are modelled exactly so.

The bandwidth model turns a class into GB/s (one direction). It is used for the
allocator's total-bandwidth criterion and for reports; the classes alone already order
sets, and the model is monotone in ``rank`` for every generation (tested).

Figures (GB/s, one direction, per pair):

* NVLink, per link: NVLink1 (P100) 20; NVLink2 (V100) 25; NVLink3 (A100) 25, and
  14.0625 on GA102 boards (RTX 3090 / A40 / A6000 bridges: 4 links = 56.25);
  NVLink4 (H100/H200) 25 (18 links = 450, the "900 GB/s" bidirectional figure);
  NVLink5 (B200/GB200) 50 (18 links = 900). Source: NVIDIA architecture white papers
  and product briefs.
* PCIe peer-to-peer as measured by ``p2pBandwidthLatencyTest`` on PCIe Gen3 x16 hosts,
  rounded down: PIX 12, PXB 11, PHB 10, NODE 9, SYS 6 (crossing the socket
  interconnect roughly halves P2P throughput, or P2P is off and copies are staged
  through host memory). Newer PCIe generations scale these up together; the order
  holds and only the order matters for placement.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_NVLINKS",
    "NVLINK_GB_PER_LINK",
    "PCIE_GBPS",
    "Link",
    "LinkKind",
    "bandwidth_gbps",
    "nvlink_gb_per_link",
    "parse_min_link",
]

#: The widest bond ``nvidia-smi`` prints today is NV18; leave room for what comes next.
MAX_NVLINKS: Final = 64


class LinkKind(enum.IntEnum):
    """The PCIe path classes, then NVLink; values are the rank order."""

    SYS = 0
    NODE = 1
    PHB = 2
    PXB = 3
    PIX = 4
    NVLINK = 5


_PCIE_RANK_BASE: Final = int(LinkKind.PIX)

_CELL = re.compile(r"^(?:NV(?P<n>\d+)|(?P<pcie>SYS|NODE|PHB|PXB|PIX|SOC))$", re.IGNORECASE)


@dataclass(frozen=True, slots=True, order=True)
class Link:
    """The connection between two devices.

    >>> Link.parse("NV2") > Link.parse("pix") > Link.parse("SYS")
    True
    >>> str(Link.parse("nv12")), Link.parse("NV12").nvlinks
    ('NV12', 12)
    """

    rank: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank <= _PCIE_RANK_BASE + MAX_NVLINKS:
            raise ValueError(f"link rank {self.rank} is out of range")

    @classmethod
    def pcie(cls, kind: LinkKind) -> Link:
        if kind is LinkKind.NVLINK:
            raise ValueError("use Link.nvlink(n) for NVLink")
        return cls(int(kind))

    @classmethod
    def nvlink(cls, count: int) -> Link:
        if not 1 <= count <= MAX_NVLINKS:
            raise ValueError(f"NVLink count must be 1..{MAX_NVLINKS}, got {count}")
        return cls(_PCIE_RANK_BASE + count)

    @classmethod
    def parse(cls, text: str) -> Link:
        """Parse a ``topo -m`` cell (``NV4``, ``PIX``, ``SYS``; ``SOC`` is the old ``SYS``)."""
        m = _CELL.match(text.strip())
        if m is None:
            raise ValueError(
                f"unknown link {text!r}: expected NV<n>, PIX, PXB, PHB, NODE or SYS"
            )
        if m.group("n") is not None:
            return cls.nvlink(int(m.group("n")))
        name = m.group("pcie").upper()
        return cls.pcie(LinkKind.SYS if name == "SOC" else LinkKind[name])

    @property
    def kind(self) -> LinkKind:
        return LinkKind.NVLINK if self.rank > _PCIE_RANK_BASE else LinkKind(self.rank)

    @property
    def nvlinks(self) -> int:
        """Number of bonded NVLinks (0 for a PCIe path)."""
        return max(0, self.rank - _PCIE_RANK_BASE)

    @property
    def is_nvlink(self) -> bool:
        return self.rank > _PCIE_RANK_BASE

    def __str__(self) -> str:
        return f"NV{self.nvlinks}" if self.is_nvlink else self.kind.name


#: Any NVLink at all: what ``gputopo.io/min-link: nvlink`` means.
ANY_NVLINK: Final = Link.nvlink(1)


def parse_min_link(text: str) -> Link:
    """Parse a user's ``min-link`` value: ``nvlink``, ``NV1``..``NV18``, ``pix``..``sys``.

    >>> parse_min_link("NVLink"), parse_min_link("nv2"), parse_min_link("PXB")
    (Link(rank=5), Link(rank=6), Link(rank=3))
    """
    value = text.strip()
    if value.lower() == "nvlink":
        return ANY_NVLINK
    if value.upper() == "SOC":
        raise ValueError(f"unknown link class {text!r}; allowed: {MIN_LINK_VALUES_TEXT}")
    try:
        return Link.parse(value)
    except ValueError:
        raise ValueError(f"unknown link class {text!r}; allowed: {MIN_LINK_VALUES_TEXT}") from None


MIN_LINK_VALUES_TEXT: Final = "nvlink, NV1..NV18, pix, pxb, phb, node, sys (case-insensitive)"

#: PCIe peer-to-peer GB/s (one direction) per class; see the module docstring.
PCIE_GBPS: Final = {
    LinkKind.SYS: 6.0,
    LinkKind.NODE: 9.0,
    LinkKind.PHB: 10.0,
    LinkKind.PXB: 11.0,
    LinkKind.PIX: 12.0,
}

#: GB/s per NVLink per direction, by GPU model family (matched as a substring, in order).
NVLINK_GB_PER_LINK: Final[tuple[tuple[str, float], ...]] = (
    ("GB200", 50.0),
    ("B200", 50.0),
    ("B100", 50.0),
    ("H100", 25.0),
    ("H200", 25.0),
    ("H800", 25.0),
    ("GH200", 25.0),
    ("A100", 25.0),
    ("A800", 25.0),
    ("3090", 14.0625),
    ("A40", 14.0625),
    ("A6000", 14.0625),
    ("V100", 25.0),
    ("P100", 20.0),
)
_DEFAULT_GB_PER_LINK: Final = 25.0


def nvlink_gb_per_link(model: str | None) -> float:
    """GB/s per NVLink per direction for a GPU model name (25 when unknown)."""
    if model:
        upper = model.upper()
        for key, gbps in NVLINK_GB_PER_LINK:
            if key in upper:
                return gbps
    return _DEFAULT_GB_PER_LINK


def bandwidth_gbps(link: Link, gb_per_link: float = _DEFAULT_GB_PER_LINK) -> float:
    """Nominal one-direction bandwidth of ``link`` in GB/s.

    >>> bandwidth_gbps(Link.parse("NV2")), bandwidth_gbps(Link.parse("SYS"))
    (50.0, 6.0)
    """
    if link.is_nvlink:
        return link.nvlinks * gb_per_link
    return PCIE_GBPS[link.kind]
