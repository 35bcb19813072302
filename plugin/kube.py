"""``NodeCluster`` over the Kubernetes API with the official ``kubernetes`` client.

Pods are watched with the field selector ``spec.nodeName=<node>`` (list, then watch
from the list's resourceVersion; a 410 Gone relists). Every call runs on a background
thread of the plugin; none is on the kubelet's call path.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from plugin.cluster import ClusterError, NodeCluster, PodEvent, PodInfo, gputopology_differs
from topology.names import GPUTOPOLOGY_GROUP, GPUTOPOLOGY_PLURAL, GPUTOPOLOGY_VERSION

__all__ = ["KubeCluster", "api_client", "device_requests", "pod_info"]

log = logging.getLogger(__name__)

#: Server-side watch length; the watch is reopened after it (and ``stop`` is checked).
_WATCH_SECONDS: Final = 60
#: Client-side limit on any single request, so a dead connection cannot hang a thread.
_REQUEST_TIMEOUT: Final = 30


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """A client from ``kubeconfig``, or the in-cluster service account when ``None``."""
    try:
        # The kubernetes package ships py.typed, but its config loaders are untyped.
        if kubeconfig:
            api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig)
            return api
        configuration = client.Configuration()
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
        return client.ApiClient(configuration)
    except (config.ConfigException, OSError) as e:
        where = kubeconfig or "in-cluster service account"
        raise ClusterError(f"cannot load Kubernetes credentials ({where}): {e}") from None


def _error(what: str, e: ApiException) -> ClusterError:
    return ClusterError(f"{what}: HTTP {e.status} {e.reason}", not_found=e.status == 404)


def _count(quantity: Any) -> int | None:
    """A whole device count (``"2"``), or ``None`` for anything else."""
    text = str(quantity).strip()
    return int(text) if text.isdecimal() and len(text) <= 6 else None


def device_requests(spec: Any) -> dict[str, dict[str, int]]:
    """container -> extended resource (a name with a ``/``) -> the devices it asks for."""
    out: dict[str, dict[str, int]] = {}
    for container in [*(spec.init_containers or ()), *(spec.containers or ())]:
        res = container.resources
        asked = {**((res.requests or {}) if res else {}), **((res.limits or {}) if res else {})}
        counts = {name: n for name, q in asked.items()
                  if "/" in name and (n := _count(q)) is not None and n > 0}
        if counts:
            out[container.name] = counts
    return out


def pod_info(pod: Any) -> PodInfo:
    meta = pod.metadata
    created = meta.creation_timestamp
    return PodInfo(
        namespace=meta.namespace or "",
        name=meta.name or "",
        uid=meta.uid or "",
        node_name=pod.spec.node_name if pod.spec else None,
        phase=pod.status.phase if pod.status else None,
        annotations=dict(meta.annotations or {}),
        created=created.isoformat() if created is not None else "",
        deleting=meta.deletion_timestamp is not None,
        device_requests=device_requests(pod.spec) if pod.spec else {},
    )


class KubeCluster:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # --- pods ---------------------------------------------------------------------------

    def watch_pods(self, node_name: str, stop: threading.Event) -> Iterator[PodEvent]:
        selector = f"spec.nodeName={node_name}"
        resource_version: str | None = None
        while not stop.is_set():
            if resource_version is None:
                try:
                    listing = self.core.list_pod_for_all_namespaces(
                        field_selector=selector, _request_timeout=_REQUEST_TIMEOUT)
                except ApiException as e:
                    raise _error(f"list pods on node {node_name}", e) from None
                yield PodEvent("RELIST")
                for pod in listing.items:
                    yield PodEvent("ADDED", pod_info(pod))
                yield PodEvent("SYNCED")
                resource_version = listing.metadata.resource_version if listing.metadata else None
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for raw in w.stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=_WATCH_SECONDS,
                    _request_timeout=_WATCH_SECONDS + _REQUEST_TIMEOUT,
                ):
                    if stop.is_set():
                        w.stop()  # type: ignore[no-untyped-call]
                        return
                    kind = raw.get("type")
                    if kind == "ERROR":
                        status = raw.get("raw_object") or {}
                        if status.get("code") == 410:
                            resource_version = None  # history compacted: relist
                            break
                        raise ClusterError(f"pod watch error: {status.get('message', status)}")
                    obj = raw.get("object")
                    if kind == "BOOKMARK" or obj is None:
                        resource_version = w.resource_version or resource_version
                        continue
                    resource_version = obj.metadata.resource_version or resource_version
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        yield PodEvent(kind, pod_info(obj))
            except ApiException as e:
                if e.status == 410:
                    resource_version = None
                    continue
                raise _error(f"watch pods on node {node_name}", e) from None
            finally:
                w.stop()  # type: ignore[no-untyped-call]

    def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        try:
            return pod_info(self.core.read_namespaced_pod(
                name, namespace, _request_timeout=_REQUEST_TIMEOUT))
        except ApiException as e:
            if e.status == 404:
                return None
            raise _error(f"read pod {namespace}/{name}", e) from None

    def patch_pod_annotations(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        try:
            self.core.patch_namespaced_pod(
                name, namespace, {"metadata": {"annotations": dict(annotations)}},
                _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as e:
            raise _error(f"patch pod {namespace}/{name}", e) from None

    # --- node ---------------------------------------------------------------------------

    def _node(self, node_name: str) -> Any:
        try:
            return self.core.read_node(node_name, _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as e:
            raise _error(f"read node {node_name}", e) from None

    def node_uid(self, node_name: str) -> str:
        return str(self._node(node_name).metadata.uid)

    def node_labels(self, node_name: str) -> dict[str, str]:
        return dict(self._node(node_name).metadata.labels or {})

    def label_node(self, node_name: str, labels: Mapping[str, str]) -> None:
        try:
            self.core.patch_node(node_name, {"metadata": {"labels": dict(labels)}},
                                 _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as e:
            raise _error(f"label node {node_name}", e) from None

    # --- GPUTopology --------------------------------------------------------------------

    def get_gputopology(self, name: str) -> dict[str, Any] | None:
        try:
            obj = self.custom.get_cluster_custom_object(
                GPUTOPOLOGY_GROUP, GPUTOPOLOGY_VERSION, GPUTOPOLOGY_PLURAL, name,
                _request_timeout=_REQUEST_TIMEOUT)
        except ApiException as e:
            if e.status == 404:
                return None
            raise _error(f"read {GPUTOPOLOGY_PLURAL}/{name}", e) from None
        return dict(obj) if isinstance(obj, Mapping) else None

    def apply_gputopology(
        self, obj: Mapping[str, Any]
    ) -> Literal["created", "updated", "unchanged"]:
        name = obj["metadata"]["name"]
        for _attempt in range(3):  # a concurrent writer makes replace 409: read again
            current = self.get_gputopology(name)
            try:
                if current is None:
                    self.custom.create_cluster_custom_object(
                        GPUTOPOLOGY_GROUP, GPUTOPOLOGY_VERSION, GPUTOPOLOGY_PLURAL, dict(obj),
                        _request_timeout=_REQUEST_TIMEOUT)
                    return "created"
                if not gputopology_differs(current, obj):
                    return "unchanged"
                body = copy.deepcopy(dict(obj))
                meta = current.get("metadata") or {}
                body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
                body["metadata"]["labels"] = {
                    **(meta.get("labels") or {}), **(body["metadata"].get("labels") or {})}
                self.custom.replace_cluster_custom_object(
                    GPUTOPOLOGY_GROUP, GPUTOPOLOGY_VERSION, GPUTOPOLOGY_PLURAL, name, body,
                    _request_timeout=_REQUEST_TIMEOUT)
                return "updated"
            except ApiException as e:
                if e.status == 409:
                    continue
                raise _error(f"write {GPUTOPOLOGY_PLURAL}/{name}", e) from None
        raise ClusterError(f"write {GPUTOPOLOGY_PLURAL}/{name}: conflicting writers, gave up")


def _conforms(c: KubeCluster) -> NodeCluster:
    return c  # mypy checks that KubeCluster satisfies the Protocol
