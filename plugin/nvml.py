"""NVML discovery: the node's GPUs and every pairwise link, as a ``topology.Topology``.

This is the only module that imports ``pynvml`` (package ``nvidia-ml-py``). Everything
else takes an *NVML module object*: the real ``pynvml`` module or a
``plugin.fakenvml.FakeNvml``, so tests run this exact code. Only attributes of that
object are used (functions, constants and its ``NVMLError`` class).

Discovery runs once at start; nothing here is on the kubelet's call path.

Links, best first:

* NVLink between GPUs: links whose remote PCI id is another GPU, counted per pair.
* NVSwitch: links whose remote end is a switch. Every GPU on the same fabric (sharing a
  switch, transitively) is NVLink-connected to every other at the smaller of the two
  GPUs' switch link counts; that is what ``nvidia-smi topo -m`` prints (NV12 on
  DGX A100, NV18 on H100). Counting only GPU-to-GPU links finds no NVLink there.
* Otherwise the PCIe common ancestor: PIX/PXB/PHB/NODE/SYS.
"""

from __future__ import annotations

import logging
import socket
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from topology.links import Link, LinkKind
from topology.model import Gpu, Topology, TopologyError

__all__ = [
    "Discovery",
    "NvmlUnavailable",
    "cpu_list",
    "discover",
    "error_code",
    "load_pynvml",
    "normalize_bus_id",
    "start_nvml",
]

log = logging.getLogger(__name__)

#: Words of 64 CPUs asked for in ``nvmlDeviceGetCpuAffinity`` (4096 CPUs).
_CPU_SET_WORDS: Final = 64
#: Words of 64 NUMA nodes asked for in ``nvmlDeviceGetMemoryAffinity``.
_NODE_SET_WORDS: Final = 4

# NVML_TOPOLOGY_* level -> link class; INTERNAL is two GPUs on one board (nvidia-smi: PIX).
_ANCESTOR_LINKS: Final = {
    0: LinkKind.PIX,
    10: LinkKind.PIX,
    20: LinkKind.PXB,
    30: LinkKind.PHB,
    40: LinkKind.NODE,
    50: LinkKind.SYS,
}


class NvmlUnavailable(RuntimeError):
    """NVML cannot be loaded or initialised; the message says why, for one log line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Discovery:
    """What the plugin needs from NVML: the topology plus the /dev minor of each GPU."""

    topology: Topology
    minors: Mapping[str, int]
    driver_version: str | None = None


def load_pynvml() -> ModuleType:
    """Import the real binding; a missing package is an ``NvmlUnavailable``."""
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - the package is a dependency
        raise NvmlUnavailable(f"cannot import pynvml (package nvidia-ml-py): {e}") from None
    module: ModuleType = pynvml
    return module


def error_code(nvml: Any, exc: BaseException) -> int | None:
    """The NVML return code of an ``NVMLError`` (``None`` for anything else)."""
    if isinstance(exc, nvml.NVMLError):
        value = getattr(exc, "value", None)
        return value if isinstance(value, int) else None
    return None


def start_nvml(nvml: Any) -> None:
    """``nvmlInit`` with a one-line reason when the library or driver is missing."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML initialisation failed: {e}") from None
    except OSError as e:  # ctypes could not even load libnvidia-ml.so
        raise NvmlUnavailable(f"NVML library could not be loaded: {e}") from None


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value.rstrip("\x00").strip()


def normalize_bus_id(raw: str | bytes) -> str:
    """NVML's 8-hex-digit-domain form, upper case: ``00000000:3B:00.0``.

    NVML returns either width of domain depending on the call (``busId`` or
    ``busIdLegacy``); peers are matched on this normal form.

    >>> normalize_bus_id(b"0000:3b:00.0")
    '00000000:3B:00.0'
    """
    text = _text(raw)
    try:
        domain, bus, rest = text.split(":")
        device, function = rest.split(".")
        return f"{int(domain, 16):08X}:{int(bus, 16):02X}:{int(device, 16):02X}.{int(function, 16)}"
    except ValueError:
        return text.upper()


def _sysfs_bus_id(bus_id: str) -> str:
    domain, rest = bus_id.split(":", 1)
    return f"{int(domain, 16):04x}:{rest.lower()}"


def _bits(words: Iterable[int]) -> list[int]:
    """Positions of the set bits in a mask of 64-bit words, low word first."""
    return [w * 64 + b for w, word in enumerate(words) for b in range(64) if int(word) >> b & 1]


def cpu_list(words: Iterable[int]) -> str | None:
    """A CPU bitmask (64-bit words, low CPU first) as ``0-11,24-35``.

    >>> cpu_list([0xFFF | (0xFFF << 24)])
    '0-11,24-35'
    """
    cpus = _bits(words)
    if not cpus:
        return None
    ranges: list[str] = []
    start = prev = cpus[0]
    for cpu in [*cpus[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        ranges.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(ranges)


def _optional(nvml: Any, fn: str, *args: Any) -> Any:
    """Call an NVML function that a driver or GPU may not support; ``None`` then."""
    func = getattr(nvml, fn, None)
    if func is None:
        return None
    try:
        return func(*args)
    except nvml.NVMLError as e:
        log.debug("nvml %s unavailable: %s", fn, e)
        return None


def _numa_node(nvml: Any, handle: Any, bus_id: str, sysfs: Path | None) -> int | None:
    """The CPU NUMA node nearest the GPU (what ``topo -m`` prints as NUMA Affinity).

    ``nvmlDeviceGetNumaNodeId`` is *not* used first: on coherent platforms (Grace) it
    names the GPU's own memory node, not the CPUs' node the kubelet aligns with.
    """
    words = _optional(
        nvml, "nvmlDeviceGetMemoryAffinity", handle, _NODE_SET_WORDS,
        getattr(nvml, "NVML_AFFINITY_SCOPE_NODE", 0),
    )
    if words is not None:
        nodes = _bits(words)
        if len(nodes) == 1:
            return nodes[0]
    if sysfs is not None:
        try:
            value = int((sysfs / "bus/pci/devices" / _sysfs_bus_id(bus_id) / "numa_node")
                        .read_text().strip())
            return value if value >= 0 else None
        except (OSError, ValueError):
            pass
    return None


def _nvlink_ends(
    nvml: Any, handle: Any, gpu_bus_ids: Mapping[str, int]
) -> tuple[dict[int, int], list[str]]:
    """(links per peer GPU index, remote switch bus id per link to a switch)."""
    peers: dict[int, int] = defaultdict(int)
    switches: list[str] = []
    enabled = getattr(nvml, "NVML_FEATURE_ENABLED", 1)
    gpu_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_GPU", 0)
    switch_type = getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2)
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != enabled:
                continue
            remote = normalize_bus_id(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)
        except nvml.NVMLError:
            continue  # no such link on this GPU, or NVLink unsupported altogether
        kind = _optional(nvml, "nvmlDeviceGetNvLinkRemoteDeviceType", handle, link)
        if remote in gpu_bus_ids and kind in (None, gpu_type):
            peers[gpu_bus_ids[remote]] += 1
        elif kind == switch_type or (kind is None and remote not in gpu_bus_ids):
            # Drivers without the remote-type call: a non-GPU NVLink end is a switch.
            switches.append(remote)
    return dict(peers), switches


def _fabrics(switch_ends: Sequence[Sequence[str]]) -> list[int]:
    """Fabric id per GPU (union of GPUs sharing a switch); -1 for GPUs without switch links."""
    parent = list(range(len(switch_ends)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, ends in enumerate(switch_ends):
        for sw in ends:
            if sw in owner:
                parent[find(i)] = find(owner[sw])
            else:
                owner[sw] = i
    return [find(i) if ends else -1 for i, ends in enumerate(switch_ends)]


def _pcie_link(nvml: Any, a: Any, b: Any, i: int, j: int) -> Link:
    try:
        level = int(nvml.nvmlDeviceGetTopologyCommonAncestor(a, b))
    except nvml.NVMLError as e:
        log.warning("nvml common ancestor GPU%d-GPU%d unknown (%s): assuming SYS", i, j, e)
        return Link.pcie(LinkKind.SYS)
    return Link.pcie(_ANCESTOR_LINKS.get(level, LinkKind.SYS))


def discover(nvml: Any, *, name: str | None = None, sysfs: Path | None = None) -> Discovery:
    """Read every GPU and link through ``nvml`` (already initialised).

    ``sysfs`` is where to look up a GPU's NUMA node when NVML does not say
    (``Path("/sys")`` on a real node; ``None`` with the fake NVML).
    Raises ``NvmlUnavailable`` when NVML cannot enumerate the GPUs at all.
    """
    try:
        count = int(nvml.nvmlDeviceGetCount())
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    except nvml.NVMLError as e:
        raise NvmlUnavailable(f"NVML cannot enumerate GPUs: {e}") from None
    if count == 0:
        raise NvmlUnavailable("NVML found no GPUs on this node")

    gpus: list[Gpu] = []
    minors: dict[str, int] = {}
    for i, h in enumerate(handles):
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(h))
            bus_id = normalize_bus_id(nvml.nvmlDeviceGetPciInfo(h).busId)
        except nvml.NVMLError as e:
            raise NvmlUnavailable(f"NVML cannot read GPU{i}: {e}") from None
        model = _optional(nvml, "nvmlDeviceGetName", h)
        memory = _optional(nvml, "nvmlDeviceGetMemoryInfo", h)
        affinity = _optional(nvml, "nvmlDeviceGetCpuAffinity", h, _CPU_SET_WORDS)
        minor = _optional(nvml, "nvmlDeviceGetMinorNumber", h)
        minors[uuid] = int(minor) if minor is not None else i
        gpus.append(Gpu(
            index=i,
            uuid=uuid,
            pci_bus_id=bus_id,
            model=_text(model) if model is not None else None,
            memory_mib=int(memory.total) // (1024 * 1024) if memory is not None else None,
            numa_node=_numa_node(nvml, h, bus_id, sysfs),
            cpu_affinity=cpu_list(affinity) if affinity is not None else None,
        ))

    by_bus = {g.pci_bus_id: g.index for g in gpus if g.pci_bus_id}
    ends = [_nvlink_ends(nvml, h, by_bus) for h in handles]
    fabric = _fabrics([sw for _, sw in ends])
    links: list[list[Link | None]] = [[None] * count for _ in range(count)]
    for i in range(count):
        for j in range(i + 1, count):
            # Both ends count the same bond; take the larger in case one side misread.
            direct = max(ends[i][0].get(j, 0), ends[j][0].get(i, 0))
            switched = 0
            if fabric[i] >= 0 and fabric[i] == fabric[j]:
                switched = min(len(ends[i][1]), len(ends[j][1]))
            n = direct + switched
            link = Link.nvlink(n) if n else _pcie_link(nvml, handles[i], handles[j], i, j)
            links[i][j] = links[j][i] = link

    driver = _optional(nvml, "nvmlSystemGetDriverVersion")
    try:
        topology = Topology.from_matrix(
            links, gpus=gpus, name=name if name is not None else socket.gethostname()
        )
    except TopologyError as e:
        raise NvmlUnavailable(f"NVML reported an inconsistent topology: {e}") from None
    return Discovery(
        topology=topology,
        minors=minors,
        driver_version=_text(driver) if driver is not None else None,
    )
