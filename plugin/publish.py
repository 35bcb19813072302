"""Publish the node's topology: the ``GPUTopology`` object and a few node labels.

The object (cluster-scoped, named after the node, owned by the Node so it goes away with
it) carries the topology JSON the extender schedules with. The labels are for people
and selectors: ``kubectl get nodes -L gputopo.io/gpu-model``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Final

from plugin.cluster import NodeCluster
from plugin.log import fields
from topology.handoff import gputopology_object
from topology.model import Topology
from topology.names import LABEL_FINGERPRINT, LABEL_GPU_COUNT, LABEL_GPU_MODEL, LABEL_NVLINK

__all__ = ["Publisher", "label_value", "node_labels", "wanted_object"]

log = logging.getLogger(__name__)

_LABEL_BAD: Final = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(text: str) -> str:
    """A valid label value: <= 63 chars of [A-Za-z0-9._-], alphanumeric at both ends.

    >>> label_value("NVIDIA H100 80GB HBM3")
    'NVIDIA-H100-80GB-HBM3'
    """
    return _LABEL_BAD.sub("-", text)[:63].strip("-._")


def node_labels(topology: Topology) -> dict[str, str]:
    labels = {
        LABEL_GPU_COUNT: str(topology.size),
        LABEL_NVLINK: "true" if topology.has_nvlink else "false",
        LABEL_FINGERPRINT: topology.fingerprint,
    }
    model = topology.model
    if model:
        labels[LABEL_GPU_MODEL] = label_value(model)
    return labels


def wanted_object(node_name: str, topology: Topology, node_uid: str | None) -> dict[str, Any]:
    obj = gputopology_object(node_name, topology, node_uid=node_uid)
    obj["metadata"]["labels"] = {LABEL_FINGERPRINT: topology.fingerprint}
    return obj


class Publisher:
    """Publishes at start (retrying until it works), then re-asserts every ``interval``."""

    def __init__(
        self,
        cluster: NodeCluster,
        node_name: str,
        topology: Topology,
        *,
        interval: float = 300.0,
        retry_interval: float = 10.0,
    ) -> None:
        self.cluster = cluster
        self.node_name = node_name
        self.topology = topology
        self.interval = interval
        self.retry_interval = retry_interval
        self.published = threading.Event()

    def publish_once(self) -> str:
        """Create or update the object and the labels; returns what happened to the object."""
        node_uid = self.cluster.node_uid(self.node_name)
        result = self.cluster.apply_gputopology(
            wanted_object(self.node_name, self.topology, node_uid))
        labels = node_labels(self.topology)
        current = self.cluster.node_labels(self.node_name)
        if any(current.get(k) != v for k, v in labels.items()):
            self.cluster.label_node(self.node_name, labels)
            log.info("node labels set", extra=fields(node=self.node_name, labels=[
                f"{k}={v}" for k, v in sorted(labels.items())]))
        if result != "unchanged":
            log.info("GPUTopology published", extra=fields(
                node=self.node_name, result=result, gpus=self.topology.size,
                fingerprint=self.topology.fingerprint))
        return result

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.publish_once()
            except Exception as e:  # API server away, RBAC missing, CRD not installed
                log.warning("publishing topology failed; retrying", extra=fields(
                    node=self.node_name, error=f"{type(e).__name__}: {e}",
                    retry_s=self.retry_interval))
                stop.wait(self.retry_interval)
                continue
            self.published.set()
            stop.wait(self.interval)
