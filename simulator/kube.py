"""What kube-scheduler does with a GPU pod, as formulas (pkg/scheduler, v1.3x).

Score plugins that differ between nodes for these pods:

* ``NodeResourcesFit`` (weight 1): ``LeastAllocated`` over cpu and memory by default
  (``((capacity - requested) * 100) / capacity`` per resource, integer, averaged by
  weight), or ``MostAllocated`` (``requested * 100 / capacity``) with the common
  tuning ``resources: [{name: nvidia.com/gpu, weight: 1}]``. ``requested`` includes the
  pod; for cpu and memory it is the *non-zero* request (a container asking none counts
  as 100m CPU and 200 MiB, ``pkg/scheduler/util/pod_resources.go``).
* ``NodeResourcesBalancedAllocation`` (weight 1): ``(1 - std(cpu, memory fractions)) *
  100`` over actual requests.

The other default score plugins (ImageLocality, InterPodAffinity, NodeAffinity,
PodTopologySpread, TaintToleration, VolumeBinding) give every node the same score for
these pods: one image everywhere, no affinities, taints, spread constraints of their own
or volumes; they cannot change a choice and are left out.

An extender's 0..10 is added as ``score * weight * (100 / 10)``; the highest total wins,
ties broken uniformly at random (``selectHost``'s reservoir sampling). With one feasible
node no scoring happens. Feasible nodes are searched from a rotating start until
``numFeasibleNodesToFind`` are found (all nodes below 100; else
``max(100, n * pct / 100)`` with ``pct`` = percentageOfNodesToScore, adaptive
``max(5, 50 - n / 125)`` when unset, as in the default profile; the gputopo profile sets
100).

An unschedulable pod is tried again on every cluster event (an extender registers no
queueing hints, so every event counts) and at the latest
``podMaxInUnschedulablePodsDuration`` (5 minutes) after its last try
(``flushUnschedulablePodsLeftover``, pkg/scheduler/backend/queue).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from topology.model import Topology

__all__ = [
    "DEFAULT_MEMORY",
    "DEFAULT_MILLI_CPU",
    "MAX_NODE_SCORE",
    "MAX_UNSCHEDULABLE_S",
    "NodeCapacity",
    "balanced_allocation",
    "capacity_of",
    "least_allocated",
    "most_allocated",
    "num_feasible_nodes_to_find",
]

MAX_NODE_SCORE: Final = 100
#: ``podMaxInUnschedulablePodsDuration``: an unschedulable pod is tried again this long
#: after its last try at the latest, cluster events or not.
MAX_UNSCHEDULABLE_S: Final = 300.0
#: Non-zero defaults for a container without cpu/memory requests (scoring only).
DEFAULT_MILLI_CPU: Final = 100
DEFAULT_MEMORY: Final = 200 * 1024 * 1024
#: Assumed memory per CPU when a node's memory is not known (the presets carry none).
MEMORY_PER_CPU: Final = 8 * 1024**3
_MIN_FEASIBLE_NODES: Final = 100
_MIN_FEASIBLE_PERCENT: Final = 5
_BASE_PERCENT: Final = 50


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCapacity:
    """Allocatable cpu (millicores), memory (bytes) and GPUs of a node."""

    milli_cpu: int
    memory: int
    gpus: int


def _cpu_count(affinity: str) -> int:
    n = 0
    for part in affinity.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if m:
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            n += max(0, hi - lo + 1)
    return n


def capacity_of(t: Topology) -> NodeCapacity:
    """CPUs from the GPUs' CPU affinity (64 when unknown), memory assumed per CPU.

    >>> from topology.presets import preset
    >>> capacity_of(preset("dgx1-v100"))
    NodeCapacity(milli_cpu=48000, memory=412316860416, gpus=8)
    """
    cpus = sum(_cpu_count(a) for a in {g.cpu_affinity for g in t.gpus if g.cpu_affinity})
    cpus = cpus or 64
    return NodeCapacity(milli_cpu=cpus * 1000, memory=cpus * MEMORY_PER_CPU, gpus=t.size)


def _least(requested: int, capacity: int) -> int:
    if capacity == 0 or requested > capacity:
        return 0
    return ((capacity - requested) * MAX_NODE_SCORE) // capacity


def _most(requested: int, capacity: int) -> int:
    if capacity == 0:
        return 0
    return (min(requested, capacity) * MAX_NODE_SCORE) // capacity


def least_allocated(cpu: int, memory: int, cap: NodeCapacity) -> int:
    """``LeastAllocated`` over cpu and memory (weights 1, 1), requests including the pod.

    >>> cap = NodeCapacity(milli_cpu=48000, memory=48 * 8 * 1024**3, gpus=8)
    >>> least_allocated(100, 200 * 1024**2, cap), least_allocated(0, 0, cap)
    (99, 100)
    """
    return (_least(cpu, cap.milli_cpu) + _least(memory, cap.memory)) // 2


def most_allocated(gpus: int, cap: NodeCapacity) -> int:
    """``MostAllocated`` over ``nvidia.com/gpu`` alone, requests including the pod.

    >>> most_allocated(6, NodeCapacity(milli_cpu=1000, memory=1, gpus=8))
    75
    """
    return _most(gpus, cap.gpus)


def balanced_allocation(cpu: int, memory: int, cap: NodeCapacity) -> int:
    """``NodeResourcesBalancedAllocation`` over cpu and memory (actual requests)."""
    fc = min(1.0, cpu / cap.milli_cpu) if cap.milli_cpu else 0.0
    fm = min(1.0, memory / cap.memory) if cap.memory else 0.0
    return int((1.0 - abs(fc - fm) / 2.0) * MAX_NODE_SCORE)


def num_feasible_nodes_to_find(percentage: int | None, nodes: int) -> int:
    """How many feasible nodes the scheduler looks for before it stops searching.

    >>> num_feasible_nodes_to_find(None, 64), num_feasible_nodes_to_find(None, 1024)
    (64, 430)
    >>> num_feasible_nodes_to_find(100, 1024)
    1024
    """
    if nodes < _MIN_FEASIBLE_NODES or percentage == 100:
        return nodes
    pct = percentage if percentage is not None else max(
        _MIN_FEASIBLE_PERCENT, _BASE_PERCENT - nodes // 125)
    return max(_MIN_FEASIBLE_NODES, nodes * pct // 100)
