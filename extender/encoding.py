"""Every JSON answer the extender writes, in one module: the fast encoders and the plain
ones that are their test oracle.

The plain encoders build the wire value and call ``json.dumps`` (compact). The fast ones
write the very same bytes without a dict per node: filter's ``NodeNames`` answer and
prioritize's HostPriorityList are joined from pieces encoded once (a rejection's reason
when its verdict is made, a score's tail once per score), and node names are written as
they are when they need no escaping (node names, DNS subdomains, never do).
:func:`dumps_chunked` writes a large value (a full-``Nodes`` answer, ``/topology``) in
pieces, so that a worker thread encoding it gives the event loop the GIL between pieces;
``json.dumps`` of the whole value would hold it throughout. Tests compare every fast
encoder with its plain oracle, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from itertools import compress
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from aiohttp import web

from extender.wire import ExtenderFilterResult, HostPriority
from topology.names import MAX_EXTENDER_PRIORITY

__all__ = [
    "SCORE_TAILS",
    "dumps_chunked",
    "escape_names",
    "filter_names_body",
    "filter_result",
    "host_priorities",
    "host_priorities_body",
    "json_bytes",
    "json_response",
    "member_run",
    "name_run",
    "plain_names",
    "reason_fragment",
    "scores_body",
]


def json_bytes(value: Any) -> bytes:
    """The plain encoder: compact ``json.dumps`` (ASCII, so lone surrogates are escaped)."""
    return json.dumps(value, separators=(",", ":")).encode()


def json_response(value: Any, status: int = 200) -> web.Response:
    """``value`` as an ``application/json`` answer (the plain encoder)."""
    return web.Response(body=json_bytes(value), status=status, content_type="application/json")


#: The characters ``json.dumps`` writes as they are: printable ASCII but ``"`` and ``\\``.
_PLAIN: Final = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def plain_names(names: list[str]) -> bool:
    """Whether every name is its own JSON string content (node names, DNS subdomains,
    are): checked at C speed over all names at once, by deleting the plain characters."""
    text = "".join(names)
    return text.isascii() and not text.encode().translate(None, _PLAIN)


def escape_names(names: list[str]) -> list[str]:
    """Each name as ``json.dumps`` writes it inside the quotes (ASCII, escaped)."""
    return [encode_basestring_ascii(n)[1:-1] for n in names]


# -- filter ------------------------------------------------------------------------------
def filter_result(
    *, passed: list[str] | None, failed: Mapping[str, str], unresolvable: Mapping[str, str],
    nodes: dict[str, Any] | None = None, error: str = "",
) -> ExtenderFilterResult:
    """The plain ExtenderFilterResult (the oracle of :func:`filter_names_body`)."""
    return {"Nodes": nodes, "NodeNames": passed, "FailedNodes": dict(failed),
            "FailedAndUnresolvableNodes": dict(unresolvable), "Error": error}


def reason_fragment(reason: str) -> str:
    """A rejection's reason as the piece ``":"<reason>","`` between two member names."""
    return f'":{json.dumps(reason)},"'


def name_run(names: list[str]) -> str:
    """Names (plain or escaped by :func:`escape_names`) as a run of JSON list items
    without the outer quotes: ``a","b``."""
    return '","'.join(names)


def member_run(names: list[str], fragments: list[str]) -> str:
    """Names and their reasons' fragments (:func:`reason_fragment`) as a run of JSON
    object members: ``"a":"why","b":"why"``."""
    return "".join(_members(names, fragments))


def filter_names_body(passed: list[str], failed: list[str], unresolvable: list[str]) -> bytes:
    """A ``NodeNames`` ExtenderFilterResult from runs (:func:`name_run`,
    :func:`member_run`) of the passed names, the failed and the unresolvable nodes: one
    run each, or several (of consecutive candidates) so no one call covers them all.

    The same bytes as ``json_bytes(filter_result(...))`` when no name is given twice.
    """
    names = '","'.join(passed)
    return "".join([
        '{"Nodes":null,"NodeNames":[', f'"{names}"' if passed else "",
        '],"FailedNodes":{', ",".join(failed), '},"FailedAndUnresolvableNodes":{',
        ",".join(unresolvable), '},"Error":""}',
    ]).encode()


def _members(names: list[str], fragments: list[str]) -> list[str]:
    """The members of a JSON object of strings, as pieces to join: name, fragment
    ``":"<value>","`` (opening the next name), name, ..., the last fragment cut after
    its value."""
    if not names:
        return []
    parts = [""] * (2 * len(names) + 1)
    parts[0] = '"'
    parts[1::2] = names
    parts[2::2] = fragments
    parts[-1] = parts[-1][:-2]
    return parts


# -- prioritize --------------------------------------------------------------------------
def host_priorities(names: list[str], values: list[int]) -> list[HostPriority]:
    """The plain HostPriorityList of what the scheduler is sent (the oracle of
    :func:`scores_body`): every score less the lowest, and only the hosts above it.

    kube-scheduler adds ``score x weight x 10`` to each listed host's total and nothing
    to a host left out, so taking the same number off every candidate changes none of
    its choices, while the list it decodes (on its scheduling cycle) is only as long as
    the hosts that rank above the worst: on a large cluster most of them tie there.

    >>> host_priorities(["a", "b", "c"], [7, 5, 5])
    [{'Host': 'a', 'Score': 2}]
    """
    floor = min(values, default=0)
    return [{"Host": n, "Score": s - floor} for n, s in zip(names, values, strict=True)
            if s > floor]


# The HostPriorityList is written as: '[{"Host":"' name tail name tail ... where a tail
# closes one entry and opens the next; the last one closes the list instead.
_OPEN: Final = '[{"Host":"'
#: The tail written after a node's name for each score 0..10.
SCORE_TAILS: Final = tuple(f'","Score":{s}}},{{"Host":"' for s in range(MAX_EXTENDER_PRIORITY + 1))
_CUT: Final = len(',{"Host":"')


def host_priorities_body(names: list[str], tails: list[str]) -> bytes:
    """``names`` (plain or escaped) and their :data:`SCORE_TAILS` as the HostPriorityList."""
    if not names:
        return b"[]"
    parts = [""] * (2 * len(names) + 1)
    parts[0] = _OPEN
    parts[1::2] = names
    parts[2::2] = tails
    parts[-1] = parts[-1][:-_CUT] + "]"
    return "".join(parts).encode()


def scores_body(names: list[str], values: list[int]) -> bytes:
    """The HostPriorityList of any names: the bytes of ``json_bytes(host_priorities(...))``."""
    floor = min(values, default=0)
    if floor:
        values = [v - floor for v in values]
    keep = bytes(map(bool, values))
    if keep.count(0):
        names = list(compress(names, keep))
        values = list(compress(values, keep))
    plain = names if plain_names(names) else escape_names(names)
    return host_priorities_body(plain, list(map(SCORE_TAILS.__getitem__, values)))


# -- large values ------------------------------------------------------------------------
def dumps_chunked(value: Any, *, depth: int = 4) -> bytes:
    """``json_bytes(value)``, written in pieces: containers down to ``depth`` are walked
    here and each value below that is one ``json.dumps`` call, so a thread running this
    lets other threads (the event loop) take the GIL between pieces. The pieces are
    joined and encoded a batch at a time too; only the last join (a copy) is one call."""
    batch: list[str] = []
    out: list[bytes] = []
    for piece in _pieces(value, depth):
        batch.append(piece)
        if len(batch) >= _BATCH:
            out.append("".join(batch).encode())
            batch.clear()
    out.append("".join(batch).encode())
    return b"".join(out)


_BATCH: Final = 2048


def _is_str(key: object) -> bool:
    return isinstance(key, str)


def _pieces(value: Any, depth: int) -> Iterator[str]:
    if depth > 0 and isinstance(value, dict) and value and all(map(_is_str, value)):
        first = True
        for k, v in value.items():
            yield "{" if first else ","
            first = False
            yield json.dumps(k)
            yield ":"
            yield from _pieces(v, depth - 1)
        yield "}"
    elif depth > 0 and isinstance(value, list | tuple) and value:
        first = True
        for v in value:
            yield "[" if first else ","
            first = False
            yield from _pieces(v, depth - 1)
        yield "]"
    else:
        yield json.dumps(value, separators=(",", ":"))
