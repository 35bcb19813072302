"""Keep every pod's ``gputopo.io/allocated-gpus`` equal to what the kubelet really gave it.

The kubelet's GetPreferredAllocation carries no pod identity, so when two pods of the
same size are admitted in the opposite order of their binds they swap assigned sets.
Both sets are good; what must not happen is a record that lies. After each Allocate
(and every ``interval`` seconds) we read the kubelet's PodResources ``List`` and write
the allocated annotation on each pod whose record is missing or differs.

The last record read is also what GetPreferredAllocation consults to skip containers
that already hold devices, so it is refreshed here, off the call path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from plugin.cluster import ClusterError, NodeCluster, PodKey
from plugin.log import fields
from plugin.metrics import PluginMetrics
from plugin.pods import PodEntry
from plugin.resources import KubeletRecord
from topology.handoff import encode_gpu_sets
from topology.names import ALLOCATED_GPUS_ANNOTATION

__all__ = ["AnnotationPatch", "Reconciler", "plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnotationPatch:
    pod: PodKey
    sets: Mapping[str, tuple[str, ...]]
    value: str
    previous: str | None

    @property
    def ref(self) -> str:
        return f"{self.pod[0]}/{self.pod[1]}"


def plan(record: KubeletRecord, pods: Mapping[PodKey, PodEntry]) -> list[AnnotationPatch]:
    """Patches for pods (known to the cache) whose allocated record is missing or wrong."""
    out: list[AnnotationPatch] = []
    for key, containers in sorted(record.items()):
        entry = pods.get(key)
        if entry is None or not containers:
            continue  # not (yet) in the cache: the next round sees it
        want = {c: tuple(sorted(ids)) for c, ids in containers.items()}
        have = {c: tuple(sorted(ids)) for c, ids in (entry.allocated or {}).items()}
        if want != have:
            out.append(AnnotationPatch(
                pod=key,
                sets=want,
                value=encode_gpu_sets(want),
                previous=entry.pod.annotations.get(ALLOCATED_GPUS_ANNOTATION),
            ))
    return out


class Reconciler:
    """Reads the kubelet's record and corrects pod annotations, on its own thread."""

    def __init__(
        self,
        lister: Callable[[], KubeletRecord],
        pods: Callable[[], Mapping[PodKey, PodEntry]],
        cluster: NodeCluster | None,
        *,
        interval: float = 30.0,
        settle: float = 0.5,
        followups: int = 3,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self._lister = lister
        self._pods = pods
        self._cluster = cluster
        self.interval = interval
        self.settle = settle
        self.followups = followups
        self._metrics = metrics
        self._record: KubeletRecord = MappingProxyType({})
        self._wake = threading.Event()
        self._pending = 0
        self._lock = threading.Lock()

    def record(self) -> KubeletRecord:
        """The kubelet's record as last read (never blocks)."""
        return self._record

    def trigger(self) -> None:
        """An Allocate happened: look again shortly, a few times, until the kubelet shows it."""
        with self._lock:
            self._pending = self.followups
        self._wake.set()

    def refresh(self) -> KubeletRecord | None:
        try:
            self._record = self._lister()
        except Exception as e:  # kubelet restarting, socket not there yet
            log.warning("pod resources list failed", extra=fields(error=str(e)))
            return None
        return self._record

    def reconcile_once(self) -> list[AnnotationPatch]:
        """Read the kubelet's record and write every missing or wrong annotation."""
        record = self.refresh()
        if record is None or self._cluster is None:
            return []
        done: list[AnnotationPatch] = []
        for patch in plan(record, self._pods()):
            try:
                self._cluster.patch_pod_annotations(
                    patch.pod[0], patch.pod[1], {ALLOCATED_GPUS_ANNOTATION: patch.value}
                )
            except ClusterError as e:
                log.warning("allocated record not written", extra=fields(
                    pod=patch.ref, error=str(e)))
                continue
            except Exception as e:
                log.warning("allocated record not written", extra=fields(
                    pod=patch.ref, error=f"{type(e).__name__}: {e}"))
                continue
            for container, gpus in sorted(patch.sets.items()):
                log.info("allocated record written", extra=fields(
                    pod=patch.ref, container=container, gpus=gpus,
                    previous=patch.previous or "none"))
            if self._metrics is not None:
                self._metrics.reconcile_patches.inc()
            done.append(patch)
        return done

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.reconcile_once()
            with self._lock:
                followup = self._pending > 0
                if followup:
                    self._pending -= 1
            if followup:
                stop.wait(self.settle)
            else:
                self._wake.wait(self.interval)
                if self._wake.is_set():
                    self._wake.clear()
                    stop.wait(self.settle)  # let the kubelet record the allocation

    def wake(self) -> None:
        self._wake.set()
