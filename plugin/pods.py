"""A local cache of the pods bound to this node, fed by a watch on a background thread.

GetPreferredAllocation reads ``PodCache.snapshot()``: an immutable mapping swapped in
whole on every change, so the call path takes no lock held across I/O and never talks
to the API server. Annotations are decoded here, once per pod change, not per call.

``live`` says whether the watch is delivering now (listed, and not failed since): only
then is it worth waiting for a pod the cache does not have yet (``plugin.catchup``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from plugin.cluster import NodeCluster, PodEvent, PodInfo, PodKey
from plugin.log import fields
from topology.handoff import HandoffError, decode_gpu_sets
from topology.names import ALLOCATED_GPUS_ANNOTATION, ASSIGNED_GPUS_ANNOTATION

__all__ = ["GpuSets", "PodCache", "PodEntry", "entry_for"]

log = logging.getLogger(__name__)

GpuSets = Mapping[str, tuple[str, ...]]
"""container name -> GPU UUIDs"""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodEntry:
    """A cached pod with its assigned/allocated annotations decoded."""

    pod: PodInfo
    assigned: GpuSets | None
    allocated: GpuSets | None


def _decode(pod: PodInfo, key: str) -> GpuSets | None:
    raw = pod.annotations.get(key)
    if raw is None:
        return None
    try:
        return decode_gpu_sets(key, raw)
    except HandoffError as e:
        log.warning("ignoring unreadable annotation", extra=fields(pod=pod.ref, error=str(e)))
        return None


def entry_for(pod: PodInfo) -> PodEntry:
    return PodEntry(
        pod=pod,
        assigned=_decode(pod, ASSIGNED_GPUS_ANNOTATION),
        allocated=_decode(pod, ALLOCATED_GPUS_ANNOTATION),
    )


class PodCache:
    """Pods bound to ``node_name``; ``run`` keeps it fresh until ``stop`` is set."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._pods: Mapping[PodKey, PodEntry] = MappingProxyType({})
        self._lock = threading.Lock()
        self.synced = threading.Event()
        self._live = False
        self._on_change: list[Callable[[], None]] = []

    def snapshot(self) -> Mapping[PodKey, PodEntry]:
        return self._pods

    @property
    def live(self) -> bool:
        """The watch has listed and has not failed since: missing pods are on their way."""
        return self._live

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the watch thread) after every change of ``snapshot()``."""
        self._on_change.append(callback)

    def apply(self, event: PodEvent, relisting: dict[PodKey, PodEntry] | None) -> None:
        """Apply one event (``relisting`` collects a full listing until SYNCED)."""
        pod = event.pod
        with self._lock:
            pods = dict(self._pods)
            if event.type in ("ADDED", "MODIFIED") and pod is not None:
                if relisting is not None:
                    relisting[pod.key] = entry_for(pod)
                    return
                pods[pod.key] = entry_for(pod)
            elif event.type == "DELETED" and pod is not None:
                if relisting is not None:
                    relisting.pop(pod.key, None)
                    return
                pods.pop(pod.key, None)
            elif event.type == "SYNCED" and relisting is not None:
                pods = relisting
            else:
                return
            self._pods = MappingProxyType(pods)
        for callback in self._on_change:
            callback()

    def run(
        self,
        cluster: NodeCluster,
        stop: threading.Event,
        *,
        retry_seconds: float = 5.0,
    ) -> None:
        """Watch until ``stop``; a broken watch is logged and started again (relist)."""
        while not stop.is_set():
            relisting: dict[PodKey, PodEntry] | None = None
            try:
                for event in cluster.watch_pods(self.node_name, stop):
                    if stop.is_set():
                        return
                    if event.type == "RELIST":
                        relisting = {}
                        continue
                    self.apply(event, relisting)
                    if event.type == "SYNCED":
                        relisting = None
                        self._live = True
                        if not self.synced.is_set():
                            log.info("pod cache synced", extra=fields(
                                node=self.node_name, pods=len(self._pods)))
                        self.synced.set()
            except Exception as e:  # the API server may be away; keep the last cache
                self._live = False
                log.warning("pod watch failed; retrying", extra=fields(
                    node=self.node_name, error=str(e), retry_s=retry_seconds))
            self._live = False  # until the next listing
            stop.wait(retry_seconds)
