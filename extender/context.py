"""What every verb handler needs, stored once on the app under a typed key."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from extender.cluster import Cluster
from extender.config import ExtenderConfig
from extender.decisions import Decisions
from extender.intake import Intake
from extender.logs import Throttle, suppressed
from extender.metrics import Metrics
from extender.patience import Patience
from extender.pods import Pod, RecentPods, decode_pod
from extender.prefetch import Prefetch
from extender.request import RequestError, pod_ref
from extender.state import ClusterState
from extender.validation import show

__all__ = ["CONTEXT", "Extender"]

log = logging.getLogger("extender")


@dataclass(frozen=True, slots=True, kw_only=True)
class Extender:
    cfg: ExtenderConfig
    cluster: Cluster
    state: ClusterState
    metrics: Metrics
    decisions: Decisions
    intake: Intake
    #: Requests from clients that break the rules are logged once per kind and interval.
    throttle: Throttle
    #: Pods decoded from requests, by UID: filter, prioritize and bind share one decode.
    recent: RecentPods
    #: Prioritize answers made right after filter (see extender.prefetch).
    prefetch: Prefetch
    #: Delay scheduling's per-pod clocks (and the clock the handlers read ``now`` from).
    patience: Patience

    def pod(
        self, verb: str, raw: Mapping[str, Any], *, need_uid: bool = True
    ) -> Pod | RequestError:
        """The request's pod, decoded once per version of it (filter, then prioritize, then
        bind see the same pod); an invalid pod is counted and logged, and each verb
        answers it in its own way."""
        uid, version = _identity(raw)
        if uid and version:
            known = self.recent.get(uid, version)
            if known is not None:
                return known
        try:
            pod = decode_pod(raw, self.cfg.resource_names, need_uid=need_uid)
        except RequestError as e:
            self.metrics.pod_errors.labels(verb).inc()
            n = self.throttle.allow(("pod", verb, str(e).split(":", 1)[0]))
            if n is not None:
                ref = pod_ref(raw)
                log.info("%s: bad pod=%s/%s error=%r%s", verb, show(ref.namespace)[1:-1],
                         show(ref.name)[1:-1], str(e)[:300], suppressed(n))
            return e
        if pod.ref.uid and not pod.request.empty:
            self.recent.put(pod, version)  # for bind, even without a resourceVersion
        return pod


def _identity(raw: Mapping[str, Any]) -> tuple[str, str]:
    """``(uid, resourceVersion)`` of a Pod object, or empty strings."""
    meta = raw.get("metadata")
    if not isinstance(meta, Mapping):
        return "", ""
    uid, version = meta.get("uid"), meta.get("resourceVersion")
    return (uid if isinstance(uid, str) else "", version if isinstance(version, str) else "")


CONTEXT = web.AppKey("extender", Extender)
