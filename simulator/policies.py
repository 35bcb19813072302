"""The four ways of placing GPU pods that the simulator compares.

Each is a kube-scheduler configuration plus what picks the devices on the node:

* ``count``: the default profile, GPUs as a count, no extender. Its scoring weighs cpu
  and memory only (``LeastAllocated``), so among the nodes that fit by count the choice
  is all but random for GPU pods. The device plugin states no preference, and the
  kubelet takes the free devices it iterates first: a Go map, so a random order.
* ``binpack``: the same with the common tuning ``NodeResourcesFit`` ``MostAllocated``
  on ``nvidia.com/gpu`` (fill nodes first); devices still random.
* ``local``: ``count``'s node choice, and NVIDIA's best-effort GetPreferredAllocation
  on the node (``topology.besteffort``).
* ``topology``: this project. The gputopo profile (``percentageOfNodesToScore: 100``)
  calls the extender: its filter and prioritize choose the node (scores combined as
  kube-scheduler does), its bind chooses the set on fresh state, asynchronously, and the
  device plugin's GetPreferredAllocation hands out that set; all through the services'
  own code (``simulator.decisions``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = ["EXTRA_POLICIES", "POLICIES", "POLICY_NAMES", "Policy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    name: str
    summary: str
    #: NodeResourcesFit's scoring strategy.
    scoring: Literal["least-allocated", "most-allocated-gpu"]
    #: Whether the gputopo extender is in the profile (filter, prioritize, bind).
    extender: bool
    #: Who picks the devices on the node when the kubelet admits the pod.
    devices: Literal["random", "best-effort", "plugin"]
    #: percentageOfNodesToScore (None: the adaptive default).
    nodes_to_score_percent: int | None


_ALL: Final = (
    Policy(name="count", summary="kube-scheduler by count, random devices",
           scoring="least-allocated", extender=False, devices="random",
           nodes_to_score_percent=None),
    Policy(name="binpack", summary="MostAllocated on nvidia.com/gpu, random devices",
           scoring="most-allocated-gpu", extender=False, devices="random",
           nodes_to_score_percent=None),
    Policy(name="local", summary="count's nodes, NVIDIA best-effort devices",
           scoring="least-allocated", extender=False, devices="best-effort",
           nodes_to_score_percent=None),
    Policy(name="topology", summary="gputopo extender + device plugin",
           scoring="least-allocated", extender=True, devices="plugin",
           nodes_to_score_percent=100),
)

POLICIES: Final[Mapping[str, Policy]] = MappingProxyType({p.name: p for p in _ALL})
POLICY_NAMES: Final = tuple(POLICIES)

#: Not one of the four compared by default: ``topology`` in a profile that also sets
#: ``NodeResourcesFit`` ``MostAllocated`` on ``nvidia.com/gpu``, to measure what packing
#: would change (``--policy topology-binpack``).
EXTRA_POLICIES: Final[Mapping[str, Policy]] = MappingProxyType({
    "topology-binpack": Policy(
        name="topology-binpack", summary="gputopo extender + MostAllocated on nvidia.com/gpu",
        scoring="most-allocated-gpu", extender=True, devices="plugin",
        nodes_to_score_percent=100),
})
