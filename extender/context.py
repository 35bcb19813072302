"""What every handler needs, stored once on the app under a typed key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from extender.cluster import Cluster
from extender.config import ExtenderConfig
from extender.metrics import Metrics
from extender.state import ClusterState

if TYPE_CHECKING:
    from extender.bind import Binder

__all__ = ["CONTEXT", "Extender"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Extender:
    cfg: ExtenderConfig
    cluster: Cluster
    state: ClusterState
    metrics: Metrics
    binder: Binder


CONTEXT = web.AppKey("extender", Extender)
