"""Filter narrowed to the candidates prioritize would score highest (``--filter-top-scored``).

kube-scheduler calls an extender twice per scheduling cycle (filter, then prioritize),
and scores every node the filter passed with its own plugins in between. In this mode
the filter passes only the candidates at the top prioritize score among those that pass,
so kube-scheduler is configured without ``prioritizeVerb``: one round trip per cycle
instead of two, and its own score plugins run over the top tier instead of every node
that fits. Its plugins then choose among equally good nodes only: the extender's
preference is absolute, as a weight above every plugin's would make it. Nodes left out
appear in neither ``NodeNames`` nor ``FailedNodes``: kube-scheduler reads the failures
only when no node passes, and one always does here.
"""

from __future__ import annotations

import dataclasses

from extender import filter as filter_verb
from extender import prioritize
from extender.decisions import Answer, Decisions, Key
from extender.encoding import json_bytes
from extender.filter import FilterCounts
from extender.request import GpuRequest
from extender.wire import FilterArgs

__all__ = ["top_scored"]


def top_scored(
    decisions: Decisions, args: FilterArgs, judged: GpuRequest, scored: GpuRequest
) -> Answer[FilterCounts]:
    """The filter's answer to ``args`` with only its top-scored passed candidates (kept
    while nothing changes, as the filter's own answers are).

    ``judged`` is the request the filter judges (narrowed by patience), ``scored`` the pod
    as prioritize scores it."""
    if scored.empty:
        return filter_verb.answer(decisions, judged, args)

    def keep(passed: list[str], keys: list[Key]) -> list[str]:
        return prioritize.top_scored(decisions, scored, passed, keys)

    def compute() -> Answer[FilterCounts]:
        fast = filter_verb.encode_names_keeping(decisions, judged, args.names, keep)
        if fast is not None:
            return fast
        out = filter_verb.decide(decisions.state, judged, args.names, decisions=decisions)
        if len(out.passed) < 2:
            return Answer(body=json_bytes(filter_verb.encode(args, out)),
                          counts=filter_verb.counts_of(out))
        kept = keep(out.passed, decisions.keys_of(out.passed))
        counts = dataclasses.replace(filter_verb.counts_of(out), passed=len(kept),
                                     outscored=len(out.passed) - len(kept))
        out = dataclasses.replace(out, passed=kept)
        return Answer(body=json_bytes(filter_verb.encode(args, out)), counts=counts)

    return decisions.answer("filter-top", judged, args.names, compute)
