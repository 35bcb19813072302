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
* **Patience.** ``gputopo.io/best-set-patience`` (a duration: ``"0"``, ``"30m"``,
  ``"1h"``, or seconds; at most 24h) is how long the pod may wait for the best set its
  node type offers, instead of the extender's ``--best-set-patience``. Whether the pod
  *is* waiting at a given moment is decided by ``extender.patience``, which sets
  ``GpuRequest.patient`` for that decision; a decoded pod is never patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from extender.config import MAX_BEST_SET_PATIENCE_S
from extender.validation import (
    MAX_ANNOTATIONS_BYTES,
    dns_label_problem,
    format_duration,
    parse_duration,
    qualified_name_problem,
    show,
)
from topology.links import MIN_LINK_VALUES_TEXT, Link, parse_min_link
from topology.names import (
    BEST_SET_PATIENCE_ANNOTATION,
    DEFAULT_RESOURCE_NAME,
    LINK_POLICY_ANNOTATION,
    LINK_POLICY_PREFERRED,
    LINK_POLICY_REQUIRED,
    LINK_POLICY_VALUES,
    MIN_LINK_ANNOTATION,
)

__all__ = ["ContainerRequest", "GpuRequest", "PodRef", "RequestError", "pod_ref"]

#: A quantity as the API server writes a whole number: no sign, no leading zeros.
_CANONICAL: Final = re.compile(r"0|[1-9][0-9]{0,8}")
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
    #: Seconds the pod may wait for its best set (``gputopo.io/best-set-patience``; None:
    #: the extender's default). While ``patient``: the bound being applied.
    patience_s: float | None = None
    #: Judged as waiting for the best set its node type offers: a node that can give it
    #: only a worse set fails (set by ``extender.patience`` for one decision, never
    #: decoded from the pod).
    patient: bool = False

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
            self.patience_s if self.patient else None,
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
        if self.patience_s is not None:
            link += f" best-set-patience={format_duration(self.patience_s)}"
        return ",".join(parts) + link

    @classmethod
    def from_pod(
        cls, pod: Mapping[str, Any], resource_names: Iterable[str] = (DEFAULT_RESOURCE_NAME,)
    ) -> GpuRequest:
        """Read and check the GPU request of a Pod object (Kubernetes API JSON).

        Every container (init containers too) needs a unique DNS-1123 label as its
        name; GPU quantities are whole numbers in canonical form (``"4"``, as the API
        server writes them) up to 65536; annotations are a map of strings of at most
        256 KiB. Anything else raises :class:`RequestError` naming the field path.

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
        extender.request.RequestError: Pod.metadata.annotations[gputopo.io/min-link]: unknown...
        """
        names = tuple(resource_names)
        spec = _mapping(pod.get("spec"), "Pod.spec")
        containers: list[ContainerRequest] = []
        seen: dict[str, str] = {}
        for field, is_init in (("initContainers", True), ("containers", False)):
            for i, c in enumerate(_list(spec.get(field), f"Pod.spec.{field}")):
                where = f"Pod.spec.{field}[{i}]"
                c = _mapping(c, where)
                name = c.get("name")
                if not isinstance(name, str) or not name:
                    raise RequestError(f"{where}.name: expected a container name, got "
                                       f"{show(name)}")
                problem = dns_label_problem(name)
                if problem is not None:
                    raise RequestError(f"{where}.name: {problem}")
                if name in seen:
                    raise RequestError(f"{where}.name: duplicate container name {name!r} "
                                       f"(also {seen[name]}.name)")
                seen[name] = where
                count = _container_count(c, names, where)
                if count:
                    shared = is_init and c.get("restartPolicy") != "Always"
                    containers.append(ContainerRequest(name=name, count=count, shared=shared))
        meta = _mapping(pod.get("metadata"), "Pod.metadata")
        annotations = _annotations(meta.get("annotations"))
        min_link, required = _constraint(annotations)
        return cls(containers=tuple(containers), min_link=min_link, required=required,
                   patience_s=_patience(annotations))


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


def _annotations(value: object) -> Mapping[str, str]:
    """``metadata.annotations``: null (none) or a map of strings, 256 KiB in all."""
    where = "Pod.metadata.annotations"
    annotations = _mapping(value, where)
    size = 0
    for key, v in annotations.items():
        if not isinstance(v, str):
            raise RequestError(f"{where}[{show(key)[1:-1]}]: expected a string, got "
                               f"{_kind(v)}")
        problem = qualified_name_problem(key.lower())
        if problem is not None:
            raise RequestError(f"{where}: key {problem}")
        size += len(key) + len(v)
    if size > MAX_ANNOTATIONS_BYTES:
        raise RequestError(f"{where}: {size} bytes in all, over the {MAX_ANNOTATIONS_BYTES} "
                           "Kubernetes allows")
    return annotations


def _constraint(annotations: Mapping[str, str]) -> tuple[Link | None, bool]:
    raw_link = annotations.get(MIN_LINK_ANNOTATION)
    raw_policy = annotations.get(LINK_POLICY_ANNOTATION)
    link_at = f"Pod.metadata.annotations[{MIN_LINK_ANNOTATION}]"
    policy_at = f"Pod.metadata.annotations[{LINK_POLICY_ANNOTATION}]"
    min_link = None
    if raw_link is not None:
        try:
            min_link = parse_min_link(raw_link[:64])
        except ValueError:
            raise RequestError(f"{link_at}: unknown link class {show(raw_link)}; allowed: "
                               f"{MIN_LINK_VALUES_TEXT}") from None
    required = False
    if raw_policy is not None:
        policy = raw_policy.strip().lower()
        if policy not in LINK_POLICY_VALUES:
            raise RequestError(
                f"{policy_at}: invalid value {show(raw_policy)}; "
                f"allowed: {', '.join(LINK_POLICY_VALUES)}"
            )
        required = policy == LINK_POLICY_REQUIRED
        if required and min_link is None:
            raise RequestError(
                f"{policy_at}: {LINK_POLICY_REQUIRED!r} needs {MIN_LINK_ANNOTATION} "
                f"(allowed: {MIN_LINK_VALUES_TEXT})"
            )
    return min_link, required


def _patience(annotations: Mapping[str, str]) -> float | None:
    raw = annotations.get(BEST_SET_PATIENCE_ANNOTATION)
    if raw is None:
        return None
    where = f"Pod.metadata.annotations[{BEST_SET_PATIENCE_ANNOTATION}]"
    try:
        seconds = parse_duration(raw)
    except ValueError as e:
        raise RequestError(f"{where}: {e}; \"0\" for no wait") from None
    if seconds > MAX_BEST_SET_PATIENCE_S:
        raise RequestError(f"{where}: {show(raw)} is longer than the "
                           f"{format_duration(MAX_BEST_SET_PATIENCE_S)} allowed")
    return seconds


def _container_count(c: Mapping[str, Any], names: tuple[str, ...], where: str) -> int:
    resources = _mapping(c.get("resources"), f"{where}.resources")
    limits = _mapping(resources.get("limits"), f"{where}.resources.limits")
    requests = _mapping(resources.get("requests"), f"{where}.resources.requests")
    total = 0
    for name in names:
        lim = limits.get(name)
        req = requests.get(name)
        lim_n = None if lim is None else _quantity(lim, f"{where}.resources.limits[{name}]")
        req_n = None if req is None else _quantity(req, f"{where}.resources.requests[{name}]")
        if lim_n is not None and req_n is not None and lim_n != req_n:
            raise RequestError(
                f"{where}.resources: {name} requests ({req_n}) and limits ({lim_n}) "
                "differ; extended resources must be equal in both"
            )
        total += lim_n if lim_n is not None else (req_n or 0)
    return total


def _quantity(value: object, where: str) -> int:
    """A whole number of GPUs: a JSON integer, or a string in canonical form."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value if -_MAX_COUNT <= value <= _MAX_COUNT else _MAX_COUNT + 1
    elif isinstance(value, str) and _CANONICAL.fullmatch(value):
        n = int(value)
    elif isinstance(value, str) and value.isascii() and value.isdigit():
        n = _MAX_COUNT + 1  # a long run of digits: out of range, never converted
    else:
        raise RequestError(
            f"{where}: {show(value)} is not a whole number of GPUs in canonical form "
            "(e.g. \"4\")"
        )
    if not 0 <= n <= _MAX_COUNT:
        raise RequestError(f"{where}: {show(value)} is out of range; expected 0..{_MAX_COUNT}")
    return n


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RequestError(f"{where}: expected a list, got {_kind(value)}")
    return value
