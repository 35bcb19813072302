"""The extender protocol on the wire: upstream's exact keys, and decoding the messages.

TypedDicts mirror ``k8s.io/kube-scheduler/extender/v1`` (no JSON tags upstream, so the
keys are the Go field names). Request bodies are decoded once into frozen dataclasses;
anything wrong with the body itself raises :class:`BadRequest` (with the HTTP status it
is answered with, 400 unless said otherwise), which the app's ``_serve`` turns into an
answer: the one place that maps errors to HTTP. A problem with the pod (a bad
annotation, an invalid name) is not a bad body: it goes in the verb's own ``Error``
field. The pod inside a message stays a raw mapping only until its verb decodes it
(``extender.pods.decode_pod``), at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from extender.validation import (
    dns_label_problem,
    dns_subdomain_problem,
    show,
    uid_problem,
)

__all__ = [
    "BadRequest",
    "BindArgs",
    "BodyTimeout",
    "ClientGone",
    "ExtenderArgs",
    "ExtenderBindingArgs",
    "ExtenderBindingResult",
    "ExtenderFilterResult",
    "ExtenderPreemptionArgs",
    "ExtenderPreemptionResult",
    "FilterArgs",
    "HostPriority",
    "MetaPod",
    "MetaVictims",
    "PreemptArgs",
    "TooBusy",
    "decode_binding_args",
    "decode_extender_args",
    "decode_json",
    "decode_preemption_args",
    "json_error",
]


# -- upstream types (PascalCase keys) ----------------------------------------------------
class ExtenderArgs(TypedDict):
    Pod: dict[str, Any]
    Nodes: dict[str, Any] | None
    NodeNames: list[str] | None


class ExtenderFilterResult(TypedDict):
    Nodes: dict[str, Any] | None
    NodeNames: list[str] | None
    FailedNodes: dict[str, str]
    FailedAndUnresolvableNodes: dict[str, str]
    Error: str


class HostPriority(TypedDict):
    Host: str
    Score: int


class ExtenderBindingArgs(TypedDict):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


class ExtenderBindingResult(TypedDict):
    Error: str


class MetaPod(TypedDict):
    UID: str


class MetaVictims(TypedDict):
    Pods: list[MetaPod]
    NumPDBViolations: int


class Victims(TypedDict):
    Pods: list[dict[str, Any]]
    NumPDBViolations: int


class ExtenderPreemptionArgs(TypedDict):
    Pod: dict[str, Any]
    NodeNameToVictims: dict[str, Victims] | None
    NodeNameToMetaVictims: dict[str, MetaVictims] | None


class ExtenderPreemptionResult(TypedDict):
    NodeNameToMetaVictims: dict[str, MetaVictims]


# -- decoded values ----------------------------------------------------------------------
class BadRequest(ValueError):
    """The request body is not a valid message; answered with ``status`` (HTTP 400)."""

    status: int = 400


class BodyTimeout(BadRequest):
    """The client did not send its body within the body timeout (HTTP 408)."""

    status = 408


class TooBusy(BadRequest):
    """Too many large bodies are being read at once; the client should retry (HTTP 503)."""

    status = 503


class ClientGone(Exception):
    """The client closed the connection before its request was read: nobody to answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterArgs:
    """ExtenderArgs: the pod and the candidate nodes, in the form they came."""

    pod: Mapping[str, Any]
    #: Candidate names, in request order (from NodeNames, else from Nodes.items).
    names: list[str]
    #: Whether names came as ``NodeNames`` (answer in kind).
    by_name: bool
    #: The NodeList when ``Nodes`` was sent (its items are echoed back as they came).
    node_list: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class BindArgs:
    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PreemptArgs:
    pod: Mapping[str, Any]
    #: node -> (victim UIDs, NumPDBViolations)
    victims: dict[str, tuple[tuple[str, ...], int]]


def decode_json(body: bytes | bytearray) -> Any:
    """``json.loads`` of a request body, with every way it can fail as a :class:`BadRequest`."""
    if not body:
        raise BadRequest("empty request body; expected a JSON object")
    try:
        return json.loads(body)
    except Exception as e:
        raise json_error(e) from None


def json_error(e: Exception) -> BadRequest:
    """What went wrong decoding a body, as the :class:`BadRequest` to answer."""
    if isinstance(e, UnicodeDecodeError):
        return BadRequest(f"request body is not UTF-8: {e.reason} at byte {e.start}")
    if isinstance(e, json.JSONDecodeError):
        return BadRequest(f"request body is not JSON: {e.msg} at line {e.lineno} "
                          f"column {e.colno}")
    if isinstance(e, RecursionError):
        return BadRequest("request body is nested too deeply")
    if isinstance(e, ValueError):  # e.g. an integer of more than 4300 digits
        return BadRequest(f"request body holds a value that cannot be read: {str(e)[:120]}")
    return BadRequest(f"request body cannot be decoded: {type(e).__name__}")


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, dict):
        raise BadRequest(f"{what}: expected a JSON object, got {_kind(data)}")
    return data


def _pod(data: Mapping[str, Any], message: str) -> Mapping[str, Any]:
    if "Pod" not in data or data["Pod"] is None:
        raise BadRequest(f"{message}: missing Pod")
    pod = _object(data["Pod"], f"{message}.Pod")
    for key in ("metadata", "spec"):
        if pod.get(key) is not None and not isinstance(pod[key], dict):
            raise BadRequest(f"{message}.Pod.{key}: expected an object, got {_kind(pod[key])}")
    return pod


def decode_extender_args(data: Any) -> FilterArgs:
    """ExtenderArgs (filter, prioritize)."""
    data = _object(data, "ExtenderArgs")
    pod = _pod(data, "ExtenderArgs")
    raw_names = data.get("NodeNames")
    raw_nodes = data.get("Nodes")
    if raw_names is None and raw_nodes is None:
        raise BadRequest("ExtenderArgs: needs Nodes (a NodeList) or NodeNames (a list)")
    node_list = None
    if raw_nodes is not None:
        node_list = _object(raw_nodes, "ExtenderArgs.Nodes")
        items = node_list.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise BadRequest(f"ExtenderArgs.Nodes.items: expected a list, got {_kind(items)}")
        from_items = []
        for i, node in enumerate(items):
            meta = node.get("metadata") if isinstance(node, dict) else None
            name = meta.get("name") if isinstance(meta, dict) else None
            if not isinstance(name, str):
                raise BadRequest(f"ExtenderArgs.Nodes.items[{i}]: a Node needs metadata.name")
            from_items.append(name)
    if raw_names is not None:
        if not isinstance(raw_names, list):
            raise BadRequest(f"ExtenderArgs.NodeNames: expected a list, got {_kind(raw_names)}")
        try:
            "".join(raw_names)  # C speed over 5,000 names; fails on the first non-string
        except TypeError:
            i, name = next((i, n) for i, n in enumerate(raw_names) if not isinstance(n, str))
            raise BadRequest(
                f"ExtenderArgs.NodeNames[{i}]: expected a string, got {_kind(name)}") from None
        return FilterArgs(pod=pod, names=raw_names, by_name=True, node_list=node_list)
    return FilterArgs(pod=pod, names=from_items, by_name=False, node_list=node_list)


_BIND_RULES = (("PodName", dns_subdomain_problem), ("PodNamespace", dns_label_problem),
               ("PodUID", uid_problem), ("Node", dns_subdomain_problem))


def decode_binding_args(data: Any) -> BindArgs:
    data = _object(data, "ExtenderBindingArgs")
    values = {}
    for key, problem_of in _BIND_RULES:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise BadRequest(
                f"ExtenderBindingArgs.{key}: expected a non-empty string, got {_kind(value)}"
            )
        problem = problem_of(value)
        if problem is not None:
            raise BadRequest(f"ExtenderBindingArgs.{key}: {problem}")
        values[key] = value
    return BindArgs(
        pod_name=values["PodName"], pod_namespace=values["PodNamespace"],
        pod_uid=values["PodUID"], node=values["Node"],
    )


def decode_preemption_args(data: Any) -> PreemptArgs:
    data = _object(data, "ExtenderPreemptionArgs")
    pod = _pod(data, "ExtenderPreemptionArgs")
    victims: dict[str, tuple[tuple[str, ...], int]] = {}
    for key, uid_of in (("NodeNameToMetaVictims", _meta_uid), ("NodeNameToVictims", _pod_uid)):
        raw = data.get(key)
        if raw is None:
            continue
        raw = _object(raw, f"ExtenderPreemptionArgs.{key}")
        for node, v in raw.items():
            where = f"ExtenderPreemptionArgs.{key}[{show(node)[1:-1]}]"
            v = _object(v, where)
            pods = v.get("Pods") or []
            if not isinstance(pods, list):
                raise BadRequest(f"{where}.Pods: expected a list, got {_kind(pods)}")
            pdb = v.get("NumPDBViolations") or 0
            if not isinstance(pdb, int) or isinstance(pdb, bool) or not 0 <= pdb < 1 << 31:
                raise BadRequest(f"{where}.NumPDBViolations: expected an integer 0..2^31-1")
            uids = tuple(uid_of(p, f"{where}.Pods[{i}]") for i, p in enumerate(pods))
            victims.setdefault(node, (uids, pdb))
    return PreemptArgs(pod=pod, victims=victims)


def _meta_uid(p: Any, where: str) -> str:
    uid = p.get("UID") if isinstance(p, dict) else None
    if not isinstance(uid, str) or not uid:
        raise BadRequest(f"{where}.UID: expected a pod UID")
    return uid


def _pod_uid(p: Any, where: str) -> str:
    meta = p.get("metadata") if isinstance(p, dict) else None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    if not isinstance(uid, str) or not uid:
        raise BadRequest(f"{where}.metadata.uid: expected a pod UID")
    return uid


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
