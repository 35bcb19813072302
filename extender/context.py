"""What every handler needs, stored once on the app under a typed key."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from extender.cluster import Cluster
from extender.config import ExtenderConfig
from extender.metrics import Metrics
from extender.request import GpuRequest, RequestError, pod_ref
from extender.state import ClusterState

if TYPE_CHECKING:
    from extender.bind import Binder

__all__ = ["CONTEXT", "Extender"]

log = logging.getLogger("extender")


@dataclass(frozen=True, slots=True, kw_only=True)
class Extender:
    cfg: ExtenderConfig
    cluster: Cluster
    state: ClusterState
    metrics: Metrics
    binder: Binder

    def gpu_request(self, verb: str, pod: Mapping[str, Any]) -> GpuRequest | RequestError:
        """The pod's GPU request, decoded once per call; a bad pod is counted and logged,
        and each verb answers it in its own way."""
        try:
            return GpuRequest.from_pod(pod, self.cfg.resource_names)
        except RequestError as e:
            self.metrics.pod_errors.labels(verb).inc()
            log.info("%s: bad pod=%s error=%r", verb, pod_ref(pod), str(e))
            return e


CONTEXT = web.AppKey("extender", Extender)
