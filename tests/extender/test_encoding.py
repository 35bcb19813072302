"""The fast encoders (``extender.encoding``) against their plain oracles (``json.dumps``).

Filter's ``NodeNames`` answer and prioritize's HostPriorityList are joined from fragments
encoded once (reasons per verdict, score tails); they must be the very bytes
``json.dumps`` writes for the same outcome, whatever the node names and reasons hold
(quotes, backslashes, control and non-ASCII characters, lone surrogates), for unknown
and repeated names. ``dumps_chunked`` (large answers, in pieces) likewise.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extender import filter as filter_verb
from extender import prioritize
from extender.decisions import Decisions
from extender.encoding import (
    dumps_chunked,
    escape_names,
    host_priorities,
    json_bytes,
    plain_names,
    scores_body,
)
from extender.filesource import parse_cluster
from extender.intake import discard, loads_chunked
from extender.plan import Rejection
from extender.request import GpuRequest
from extender.state import ClusterState
from extender.wire import FilterArgs

from .helpers import gpu_pod

PRESETS = ["dgx1-v100", "dgx-a100", "hgx-h100", "pcie-8gpu-sys", "pcie-4gpu-nvlink-pairs",
           "gb200-4gpu", "nvswitch-16gpu"]
SIZES = {"pcie-4gpu-nvlink-pairs": 4, "gb200-4gpu": 4, "nvswitch-16gpu": 16}
ODD = ['we"ird', "back\\slash", "ünïcødé", "tab\there", "nl\nx", "\x7f", "😀", "a/b", ""]
PODS = [
    gpu_pod(gpus=4),
    gpu_pod(gpus=2, annotations={"gputopo.io/min-link": "nvlink",
                                 "gputopo.io/link-policy": "required"}),
    gpu_pod(gpus=8, annotations={"gputopo.io/min-link": "nvlink"}),
    gpu_pod(gpus={"x": 2, "y": 3}),
    gpu_pod(gpus=0),
]

texts = st.text(st.characters(codec="utf-8"), max_size=12)
#: Any text, lone surrogates too (JSON can carry them: "\ud800").
any_texts = st.text(max_size=12)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def random_cluster(rng: random.Random, n: int, odd: bool) -> tuple[Decisions, list[str]]:
    names = [f"gpu-node-{i}" for i in range(n)]
    if odd:
        names += [f"{w}{i}" for i, w in enumerate(ODD)]
    nodes = []
    for name in names:
        preset = rng.choice(PRESETS)
        size = SIZES.get(preset, 8)
        nodes.append({"name": name, "topology": preset,
                      "used": sorted(rng.sample(range(size), rng.randint(0, size)))})
    s = ClusterState()
    f = parse_cluster({"nodes": nodes})
    s.replace(f.topologies, f.holdings)
    return Decisions(s), names


def candidates(rng: random.Random, names: list[str], *, unknown: bool,
               twice: bool) -> list[str]:
    out = rng.sample(names, rng.randint(0, len(names)))
    if unknown:
        out += ["ghost", 'gh"ost\\', "göst"]
    if twice and out:
        out.append(rng.choice(out))
    rng.shuffle(out)
    return out


def reference_filter(d: Decisions, r: GpuRequest, names: list[str]) -> bytes:
    """The plain oracle: the outcome as a dict, through ``json.dumps``."""
    args = FilterArgs(pod={}, names=names, by_name=True)
    return dumps(filter_verb.encode(args, filter_verb.decide(d.state, r, names, decisions=d)))


def test_filter_fast_encoding_is_the_bytes_json_dumps_writes() -> None:
    rng = random.Random(11)
    checked = 0
    for trial in range(60):
        s, names = random_cluster(rng, rng.randint(0, 40), odd=trial % 2 == 0)
        for pod in PODS:
            r = GpuRequest.from_pod(pod)
            for unknown in (False, True):
                cands = candidates(rng, names, unknown=unknown, twice=trial % 5 == 0)
                fast = filter_verb.encode_names(s, r, cands)
                ref = reference_filter(s, r, cands)
                if fast is None:  # a pod without GPUs, or a name given twice
                    assert r.empty or len(set(cands)) < len(cands)
                    continue
                assert fast.body == ref
                data = json.loads(fast.body)
                assert len(data["NodeNames"]) == fast.counts.passed
                assert len(data["FailedNodes"]) == fast.counts.failed + fast.counts.unknown
                assert len(data["FailedAndUnresolvableNodes"]) == fast.counts.unresolvable
                checked += 1
    assert checked > 300


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(any_texts, any_texts, st.booleans(), st.booleans()), max_size=20))
def test_filter_fast_encoding_escapes_any_names_and_reasons(
    rows: list[tuple[str, str, bool, bool]],
) -> None:
    """Node names and rejection reasons of any text (injected into the verdict cache)."""
    s = ClusterState()
    f = parse_cluster({"nodes": [{"name": f"n{i}:{name}", "topology": "hgx-h100"}
                                 for i, (name, _, _, _) in enumerate(rows)]})
    s.replace(f.topologies, f.holdings)
    d = Decisions(s)
    r = GpuRequest.from_pod(gpu_pod(gpus=2))
    cache = d.verdicts(r)
    for k, (_, reason, unresolvable, _) in enumerate(rows):
        cache[k + 1_000] = Rejection(reason=reason, unresolvable=unresolvable)
    for i, (name, _, _, rejected) in enumerate(rows):
        if rejected:  # give the node a key of its own, with the injected verdict
            node = f"n{i}:{name}"
            s.node_keys[node] = s.nodes[node].key = i + 1_000
    names = [*s.node_keys, *(name for name, *_ in rows)]  # and the bare names: unknown
    names = list(dict.fromkeys(names))
    fast = filter_verb.encode_names(d, r, names)
    assert fast is not None
    assert fast.body == reference_filter(d, r, names)


def test_filter_answer_falls_back_for_names_given_twice() -> None:
    s, names = random_cluster(random.Random(3), 12, odd=True)
    r = GpuRequest.from_pod(gpu_pod(gpus=4))
    cands = names + names[:5] + ["ghost", "ghost"]
    assert filter_verb.encode_names(s, r, cands) is None
    args = FilterArgs(pod={}, names=cands, by_name=True)
    assert filter_verb.answer(s, r, args).body == reference_filter(s, r, cands)


def test_prioritize_fast_encoding_is_the_bytes_json_dumps_writes() -> None:
    rng = random.Random(5)
    for trial in range(60):
        s, names = random_cluster(rng, rng.randint(0, 40), odd=trial % 2 == 0)
        for pod in PODS:
            r = GpuRequest.from_pod(pod)
            for unknown in (False, True):
                cands = candidates(rng, names, unknown=unknown, twice=trial % 5 == 0)
                values = prioritize.scores(s.state, r, cands, decisions=s)
                answer = prioritize.answer(s, r, cands)
                assert answer.body == dumps(host_priorities(cands, values))
                top = max(range(len(values)), key=values.__getitem__, default=-1)
                assert answer.counts == prioritize.Top(index=top,
                                                       score=values[top] if values else 0)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(any_texts, max_size=8))
def test_plain_and_escaped_names_agree_with_json_dumps(names: list[str]) -> None:
    quoted = [json.dumps(n) for n in names]
    assert escape_names(names) == [q[1:-1] for q in quoted]
    assert plain_names(names) == all(q == f'"{n}"' for n, q in zip(names, quoted, strict=True))
    values = [len(n) % 11 for n in names]
    assert scores_body(names, values) == dumps(host_priorities(names, values))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_texts,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(any_texts, children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None, database=None)
@given(json_values, st.integers(0, 6))
def test_chunked_dumps_is_the_bytes_json_dumps_writes(value: Any, depth: int) -> None:
    assert dumps_chunked(value, depth=depth) == json_bytes(value) == dumps(value)


@settings(max_examples=400, deadline=None, database=None)
@given(json_values, st.integers(0, 6), st.sampled_from(["", " ", "\n\t "]))
def test_chunked_loads_reads_what_json_loads_reads(value: Any, depth: int, ws: str) -> None:
    text = json.dumps(value, indent=1 if ws else None).replace("\n", "\n" + ws)
    assert loads_chunked(text.encode(), depth=depth) == json.loads(text)


@settings(max_examples=400, deadline=None, database=None)
@given(json_values, st.integers(0, 200), st.sampled_from(['"', ",", "]", "}", "[", ":", "x",
                                                          "\x01", "\\", ""]))
def test_chunked_loads_refuses_what_json_loads_refuses(value: Any, at: int, junk: str) -> None:
    text = json.dumps([value, ["a", "b"], {"k": ["c"]}])
    at = min(at, len(text))
    broken = text[:at] + junk + text[at + 1:]
    try:
        expected = json.loads(broken)
    except ValueError:
        with pytest.raises(ValueError):
            loads_chunked(broken.encode())
    else:
        assert loads_chunked(broken.encode()) == expected


def test_discard_takes_apart_only_what_nobody_else_holds() -> None:
    shared = ["name"] * 100  # e.g. a candidate list the answer memo keeps
    inner = {"k": list(range(50))}
    holder = [{"NodeNames": shared, "items": [{"x": list(range(20))} for _ in range(40)],
               "kept": inner}]
    discard(holder)
    assert holder == [] and shared == ["name"] * 100 and inner == {"k": list(range(50))}
