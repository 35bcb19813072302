"""What a pod asks for: GPUs per container and the link constraint, read once per request.

The rule (exact, and the same for every verb):

* **Count.** For every container and init container, the GPU count is the sum over the
  configured resource names (default ``nvidia.com/gpu``) of ``limits[name]`` when set,
  else ``requests[name]``. Kubernetes requires extended resources to be whole numbers and,
  when both are given, equal; a pod that breaks that is answered with an error naming the
  container, never guessed at.
* **Which containers share GPUs.** App containers run together, so their sets are
  disjoint. An init container with ``restartPolicy: Always`` (a sidecar) runs beside them
  and counts as one of them. A regular init container runs alone, before the app
  containers, so its set may overlap theirs: the kubelet hands an init container's devices
  on to the app containers first. The extender therefore places the app containers first
  (largest first), then places each regular init container inside the union of the app
  sets when it fits there (on top of it when it is larger), so the pod holds
  ``max(largest init container, sum of app containers)`` GPUs, as the kubelet counts them.
* **Constraint.** ``gputopo.io/min-link`` applies to every container's set; with
  ``gputopo.io/link-policy: required`` a node that cannot give it fails the filter, with
  ``preferred`` (the default) it only lowers the score.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from topology.links import Link, parse_min_link
from topology.names import (
    DEFAULT_RESOURCE_NAME,
    LINK_POLICY_ANNOTATION,
    LINK_POLICY_PREFERRED,
    LINK_POLICY_REQUIRED,
    LINK_POLICY_VALUES,
    MIN_LINK_ANNOTATION,
)

__all__ = ["ContainerRequest", "GpuRequest", "PodRef", "RequestError", "pod_ref"]

_INTEGER: Final = re.compile(r"^\+?[0-9]+$")
#: More GPUs than any node has; a larger count is a typo, answered as an error.
_MAX_COUNT: Final = 1 << 16


class RequestError(ValueError):
    """The pod itself is wrong (bad annotation, bad quantity): the filter's ``Error``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodRef:
    """Who a pod is, for logs and records."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerRequest:
    """One container's GPUs; ``shared`` for a regular init container (see the module doc)."""

    name: str
    count: int
    shared: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuRequest:
    """The pod's GPU needs, decoded once per request (like PreFilter's CycleState)."""

    containers: tuple[ContainerRequest, ...] = ()
    min_link: Link | None = None
    required: bool = False

    @property
    def empty(self) -> bool:
        return not self.containers

    @property
    def exclusive(self) -> tuple[ContainerRequest, ...]:
        """App containers and sidecars, largest first (stable): placed first, disjoint."""
        return tuple(sorted(
            (c for c in self.containers if not c.shared), key=lambda c: -c.count
        ))

    @property
    def shared(self) -> tuple[ContainerRequest, ...]:
        return tuple(c for c in self.containers if c.shared)

    @property
    def total(self) -> int:
        """GPUs the pod holds: max(largest init container, sum of the others)."""
        app = sum(c.count for c in self.containers if not c.shared)
        init = max((c.count for c in self.containers if c.shared), default=0)
        return max(app, init)

    @property
    def shape(self) -> tuple[object, ...]:
        """What placement depends on: pods of one shape share every cached verdict.

        Container names are left out (they do not change where GPUs go), so a cached
        verdict's ``Plan.sets`` carries the names of the first pod of that shape; bind
        places its pod afresh and writes that pod's own names.
        """
        return (
            tuple((c.count, c.shared) for c in self.containers),
            -1 if self.min_link is None else self.min_link.rank,
            self.required,
        )

    @property
    def enforced_link(self) -> Link | None:
        """The constraint the filter enforces (None when only preferred)."""
        return self.min_link if self.required else None

    def describe(self) -> str:
        parts = [f"{c.name}={c.count}{'(init)' if c.shared else ''}" for c in self.containers]
        link = "" if self.min_link is None else (
            f" min-link={self.min_link}"
            f" {LINK_POLICY_REQUIRED if self.required else LINK_POLICY_PREFERRED}"
        )
        return ",".join(parts) + link

    @classmethod
    def from_pod(
        cls, pod: Mapping[str, Any], resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,)
    ) -> GpuRequest:
        """Read the GPU request of a Pod object (Kubernetes API JSON).

        >>> pod = {"metadata": {"annotations": {"gputopo.io/min-link": "nvlink",
        ...                                     "gputopo.io/link-policy": "required"}},
        ...        "spec": {"containers": [{"name": "main",
        ...                                 "resources": {"limits": {"nvidia.com/gpu": "4"}}}]}}
        >>> r = GpuRequest.from_pod(pod)
        >>> r.total, str(r.min_link), r.required
        (4, 'NV1', True)
        >>> GpuRequest.from_pod({"metadata": {"annotations": {"gputopo.io/min-link": "fast"}},
        ...                      "spec": {"containers": []}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        extender.request.RequestError: annotation gputopo.io/min-link: unknown link class 'fast'...
        """
        names = tuple(resource_names)
        spec = _mapping(pod.get("spec"), "Pod.spec")
        containers: list[ContainerRequest] = []
        for field, is_init in (("initContainers", True), ("containers", False)):
            for i, c in enumerate(_list(spec.get(field), f"Pod.spec.{field}")):
                where = f"Pod.spec.{field}[{i}]"
                c = _mapping(c, where)
                name = c.get("name")
                if not isinstance(name, str) or not name:
                    raise RequestError(f"{where}.name: expected a container name, got {name!r}")
                count = _container_count(c, names, name)
                if count:
                    shared = is_init and c.get("restartPolicy") != "Always"
                    containers.append(ContainerRequest(name=name, count=count, shared=shared))
        meta = _mapping(pod.get("metadata"), "Pod.metadata")
        annotations = _mapping(meta.get("annotations"), "Pod.metadata.annotations")
        min_link, required = _constraint(annotations)
        return cls(containers=tuple(containers), min_link=min_link, required=required)


def pod_ref(pod: Mapping[str, Any]) -> PodRef:
    """Namespace, name and UID of a Pod object (empty strings when absent)."""
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    return PodRef(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
    )


def _constraint(annotations: Mapping[str, Any]) -> tuple[Link | None, bool]:
    raw_link = annotations.get(MIN_LINK_ANNOTATION)
    raw_policy = annotations.get(LINK_POLICY_ANNOTATION)
    min_link = None
    if raw_link is not None:
        if not isinstance(raw_link, str):
            raise RequestError(f"annotation {MIN_LINK_ANNOTATION}: expected a string")
        try:
            min_link = parse_min_link(raw_link)
        except ValueError as e:
            raise RequestError(f"annotation {MIN_LINK_ANNOTATION}: {e}") from None
    required = False
    if raw_policy is not None:
        policy = raw_policy.strip().lower() if isinstance(raw_policy, str) else None
        if policy not in LINK_POLICY_VALUES:
            raise RequestError(
                f"annotation {LINK_POLICY_ANNOTATION}: invalid value {raw_policy!r}; "
                f"allowed: {', '.join(LINK_POLICY_VALUES)}"
            )
        required = policy == LINK_POLICY_REQUIRED
        if required and min_link is None:
            raise RequestError(
                f"annotation {LINK_POLICY_ANNOTATION}: {LINK_POLICY_REQUIRED!r} needs "
                f"{MIN_LINK_ANNOTATION} (allowed: nvlink, NV1..NV18, pix, pxb, phb, node, sys)"
            )
    return min_link, required


def _container_count(c: Mapping[str, Any], names: tuple[str, ...], container: str) -> int:
    resources = _mapping(c.get("resources"), f"container {container}: resources")
    limits = _mapping(resources.get("limits"), f"container {container}: resources.limits")
    requests = _mapping(resources.get("requests"), f"container {container}: resources.requests")
    total = 0
    for name in names:
        lim = limits.get(name)
        req = requests.get(name)
        lim_n = None if lim is None else _quantity(lim, container, "limits", name)
        req_n = None if req is None else _quantity(req, container, "requests", name)
        if lim_n is not None and req_n is not None and lim_n != req_n:
            raise RequestError(
                f"container {container}: {name} requests ({req_n}) and limits ({lim_n}) "
                "differ; extended resources must be equal in both"
            )
        total += lim_n if lim_n is not None else (req_n or 0)
    return total


def _quantity(value: object, container: str, where: str, name: str) -> int:
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _INTEGER.match(value.strip()):
        n = int(value.strip())
    else:
        raise RequestError(
            f"container {container}: resources.{where}[{name}] = {value!r}: "
            "expected a whole number of GPUs"
        )
    if not 0 <= n <= _MAX_COUNT:
        raise RequestError(
            f"container {container}: resources.{where}[{name}] = {n}: "
            f"expected 0..{_MAX_COUNT}"
        )
    return n


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{where}: expected a list, got {type(value).__name__}")
    return value
