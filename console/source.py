"""Where the operator tools read the cluster from: the Kubernetes API, or a cluster file.

Either way the result is a :class:`Snapshot`: the extender's own ``ClusterState`` filled
the way the extender fills it (``topology_from_gputopology`` for every GPUTopology
object, ``holding_from_pod`` for every bound pod that is not finished), so what the tools
say is what the extender would decide on the same cluster.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from extender.filesource import ClusterFileError, load_cluster_file
from extender.kube import POD_FIELD_SELECTOR
from extender.pods import holding_from_pod
from extender.state import ClusterState, Holding
from topology.handoff import HandoffError, topology_from_gputopology
from topology.model import Topology
from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_PLURAL, GPUTOPOLOGY_VERSION

__all__ = [
    "ApiSource",
    "ClusterSource",
    "FileSource",
    "Snapshot",
    "SourceError",
    "build_state",
]

_PAGE: Final = 500


class SourceError(Exception):
    """The cluster cannot be read (credentials, API server, file): the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """The cluster as the extender sees it, and what could not be read."""

    state: ClusterState
    #: GPUTopology objects the extender would skip, with the reason (node -> reason).
    unreadable: Mapping[str, str] = field(default_factory=dict)
    #: Where it came from, for the output's first line ("API server ...", "file ...").
    origin: str = ""


def build_state(
    topology_objects: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]],
    *, extra: Sequence[Holding] = (),
) -> tuple[ClusterState, dict[str, str]]:
    """A synced ``ClusterState`` from listed objects, exactly as the extender builds it."""
    topologies: dict[str, Topology] = {}
    unreadable: dict[str, str] = {}
    for obj in topology_objects:
        try:
            name, t = topology_from_gputopology(obj)
        except HandoffError as e:
            meta = obj.get("metadata") or {}
            unreadable[str(meta.get("name", "?"))] = str(e)
            continue
        topologies[name] = t
    holdings = list(extra)
    for pod in pods:
        h = holding_from_pod(pod)
        if h is not None:
            holdings.append(h)
    state = ClusterState()
    state.replace(topologies, holdings)
    state.synced = True
    return state, unreadable


class ClusterSource(Protocol):
    """What the commands need of a cluster."""

    def snapshot(self) -> Snapshot: ...

    def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The Pod object, or None when there is none of that name."""
        ...

    def events(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        """The pod's Events, oldest first."""
        ...

    def default_namespace(self) -> str: ...


class ApiSource:
    """The Kubernetes API, with the operator's kubeconfig (``--kubeconfig``, ``$KUBECONFIG``
    or ``~/.kube/config``) and context."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None) -> None:
        from kubernetes import client, config

        self._kubeconfig = kubeconfig
        self._context = context
        try:
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context)
        except (config.ConfigException, OSError, TypeError) as e:
            where = kubeconfig or "$KUBECONFIG or ~/.kube/config"
            raise SourceError(f"cannot load Kubernetes credentials from {where}: {e}") from None
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._server = str(api.configuration.host)

    # -- reads (raw JSON, as the extender reads them) ---------------------------------
    def _json(self, what: str, call: Any, *args: Any, **kw: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = call(*args, _preload_content=False, _request_timeout=30, **kw)
        except ApiException as e:
            if e.status == 404:
                return None
            raise SourceError(f"{what}: HTTP {e.status} {_reason(e)}") from None
        except Exception as e:  # connection refused, TLS, DNS
            raise SourceError(f"{what}: API server {self._server} unreachable: {e}") from None
        return json.loads(resp.data)

    def _pages(self, what: str, call: Any, *args: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        cont = ""
        while True:
            extra = {"_continue": cont} if cont else {}
            page = self._json(what, call, *args, limit=_PAGE, **kw, **extra)
            if page is None:
                raise SourceError(f"{what}: not served (is the GPUTopology CRD installed?)")
            yield from page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return

    def snapshot(self) -> Snapshot:
        topologies = list(self._pages(
            f"list {GPUTOPOLOGY_PLURAL}", self._custom.list_cluster_custom_object,
            GPUTOPOLOGY_GROUP, GPUTOPOLOGY_VERSION, GPUTOPOLOGY_PLURAL))
        pods = list(self._pages("list pods", self._core.list_pod_for_all_namespaces,
                                field_selector=POD_FIELD_SELECTOR))
        state, unreadable = build_state(topologies, pods)
        return Snapshot(state=state, unreadable=unreadable, origin=f"API server {self._server}")

    def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        found = self._json(f"get pod {namespace}/{name}", self._core.read_namespaced_pod,
                           name, namespace)
        return found if isinstance(found, Mapping) else None

    def events(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        selector = f"involvedObject.kind=Pod,involvedObject.name={name}"
        found = self._json(f"list events of pod {namespace}/{name}",
                           self._core.list_namespaced_event, namespace,
                           field_selector=selector)
        items = list((found or {}).get("items") or [])
        return sorted(items, key=_event_time)

    def default_namespace(self) -> str:
        from kubernetes import config

        try:
            contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=self._kubeconfig)
        except (config.ConfigException, OSError, TypeError):
            return "default"
        chosen = active
        if self._context:
            chosen = next((c for c in contexts if c.get("name") == self._context), active)
        return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


class FileSource:
    """A cluster file (``examples/cluster.yaml``): nodes, GPUs in use, pods by name."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file = load_cluster_file(self.path)
        except ClusterFileError as e:
            raise SourceError(str(e)) from None

    def snapshot(self) -> Snapshot:
        state = ClusterState()
        state.replace(self._file.topologies, self._file.holdings)
        state.synced = True
        return Snapshot(state=state, origin=f"cluster file {self.path}")

    def pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """None: a cluster file has no Pod objects, only what its pods hold (in the
        snapshot's holdings, which ``explain`` reads instead)."""
        return None

    def events(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        return []

    def default_namespace(self) -> str:
        return "default"


def _reason(e: Any) -> str:
    try:
        body = json.loads(e.body or b"{}")
    except (TypeError, ValueError):
        return str(e.reason)
    return str(body.get("message") or e.reason)


def _event_time(event: Mapping[str, Any]) -> str:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        value = event.get(key)
        if isinstance(value, str) and value:
            return value
    return str((event.get("metadata") or {}).get("creationTimestamp") or "")


_a: type[ClusterSource] = ApiSource
_f: type[ClusterSource] = FileSource
