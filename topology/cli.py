"""``gputopo``: parse, show and allocate on GPU topologies from the command line.

Exit codes: 0 done; 1 no set fits (a single allocate request); 2 bad input (the message
goes to stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO, TypeAlias

from topology.allocate import Allocation, Result, allocator_for, mask_of
from topology.links import MIN_LINK_VALUES_TEXT, Link, parse_min_link
from topology.model import Topology, TopologyError
from topology.parse_nvsmi import parse_topo_matrix
from topology.presets import PRESETS
from topology.render import to_dot, to_matrix_text, to_svg
from topology.serialize import dumps
from topology.sources import load_topology

__all__ = ["Command", "build_parser", "main"]

EXIT_OK = 0
EXIT_NO_FIT = 1
EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """A user error: reported on stderr with exit code 2."""


def _render(t: Topology, fmt: str) -> str:
    renderers: dict[str, Callable[[Topology], str]] = {
        "json": dumps,
        "matrix": to_matrix_text,
        "dot": to_dot,
        "svg": to_svg,
    }
    return renderers[fmt](t).rstrip("\n") + "\n"


def _read_text(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None


def _indices(text: str, what: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise BadInput(f"{what}: {part!r} is not a GPU index (expected e.g. 0,1,5)")
        out.append(int(part))
    return out


def _min_link(text: str | None) -> Link | None:
    if text is None:
        return None
    try:
        return parse_min_link(text)
    except ValueError:
        raise BadInput(f"--min-link: unknown value {text!r}; allowed: {MIN_LINK_VALUES_TEXT}")\
            from None


def _result_json(t: Topology, r: Result) -> dict[str, Any]:
    if isinstance(r, Allocation):
        uuids = [t.gpus[i].uuid for i in r.devices]
        return {
            "devices": list(r.devices),
            "uuids": uuids if all(uuids) else None,
            "ring_link": None if r.ring_link is None else str(r.ring_link),
            "total_bandwidth_gbps": r.total_bandwidth_gbps,
            "remainder_bandwidth_gbps": r.remainder_bandwidth_gbps,
            "numa_nodes": list(r.numa_nodes),
            "reason": None,
        }
    return {
        "devices": [],
        "uuids": None,
        "ring_link": None,
        "total_bandwidth_gbps": None,
        "remainder_bandwidth_gbps": None,
        "numa_nodes": [],
        "reason": r.reason,
        "unresolvable": r.unresolvable,
    }


def _check_indices(t: Topology, indices: Sequence[int], what: str) -> None:
    for i in indices:
        if i >= t.size:
            raise BadInput(
                f"{what}: GPU {i} does not exist (the topology has GPU0..GPU{t.size - 1})"
            )


def _allocate(t: Topology, size: int, free: list[int] | None, must: list[int],
              min_link: Link | None) -> Result:
    if free is not None:
        _check_indices(t, free, "--free")
    _check_indices(t, must, "--must-include")
    free_mask = None if free is None else mask_of(free)
    return allocator_for(t).best(size, free_mask, mask_of(must), min_link)


def _batch_request(t: Topology, line: str, lineno: int) -> Result:
    try:
        req = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"line {lineno}: not JSON: {e.msg}") from None
    if not isinstance(req, dict):
        raise BadInput(f"line {lineno}: expected an object like {{\"size\": 2}}")
    unknown = set(req) - {"size", "free", "must_include", "min_link"}
    if unknown:
        raise BadInput(f"line {lineno}: unknown keys {sorted(unknown)}")
    size = req.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        raise BadInput(f"line {lineno}: 'size' must be an integer")

    def index_list(key: str) -> list[int] | None:
        value = req.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
        ):
            raise BadInput(f"line {lineno}: {key!r} must be a list of GPU indices")
        return value

    min_link_text = req.get("min_link")
    if min_link_text is not None and not isinstance(min_link_text, str):
        raise BadInput(f"line {lineno}: 'min_link' must be a string")
    try:
        return _allocate(t, size, index_list("free"), index_list("must_include") or [],
                         _min_link(min_link_text))
    except BadInput as e:
        raise BadInput(f"line {lineno}: {e}") from None


def cmd_parse(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    text = _read_text(args.file, stdin)
    t = parse_topo_matrix(text, name=None if args.file == "-" else args.file)
    out.write(_render(t, args.format))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    out.write(_render(load_topology(args.topology), args.format))
    return EXIT_OK


def cmd_presets(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    width = max(len(name) for name in PRESETS)
    for name, p in PRESETS.items():
        out.write(f"{name:<{width}}  {p.description}\n")
    return EXIT_OK


def cmd_allocate(args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    t = load_topology(args.topology)
    if args.batch is not None:
        status = EXIT_OK
        text = _read_text(args.batch, stdin)
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = _result_json(t, _batch_request(t, line, lineno))
            except BadInput as e:
                obj = {"devices": [], "ring_link": None, "reason": str(e), "error": True}
                status = EXIT_BAD_INPUT
            out.write(json.dumps(obj) + "\n")
        return status
    if args.size is None:
        raise BadInput("allocate needs --size K (or --batch FILE.jsonl)")
    free = None if args.free is None else _indices(args.free, "--free")
    must = _indices(args.must_include or "", "--must-include")
    r = _allocate(t, args.size, free, must, _min_link(args.min_link))
    if args.json:
        out.write(json.dumps(_result_json(t, r)) + "\n")
    elif isinstance(r, Allocation):
        out.write(",".join(map(str, r.devices)) + "\n")
        out.write(r.explain() + "\n")
    else:
        out.write(f"no set fits: {r.reason}\n")
    return EXIT_OK if isinstance(r, Allocation) else EXIT_NO_FIT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


#: Adds a subcommand to ``gputopo`` (packages above topology/ bring their own, e.g. the
#: simulator's ``simulate``): registers a parser on the given subparsers with
#: ``set_defaults(func=...)``, ``func(args, out, stdin) -> exit code``.
Command: TypeAlias = "Callable[[argparse._SubParsersAction[Any]], None]"


def build_parser(extra: Sequence[Command] = ()) -> argparse.ArgumentParser:
    p = _Parser(prog="gputopo", description="GPU topology tools: parse, show, allocate.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sp = sub.add_parser("parse", help="parse `nvidia-smi topo -m` text ('-' for stdin)")
    sp.add_argument("file")
    sp.add_argument("--format", choices=["json", "matrix", "dot"], default="json")
    sp.set_defaults(func=cmd_parse)

    sp = sub.add_parser("show", help="show a preset, a topo -m file or a JSON topology")
    sp.add_argument("topology")
    sp.add_argument("--format", choices=["matrix", "json", "dot", "svg"], default="matrix")
    sp.set_defaults(func=cmd_show)

    sp = sub.add_parser("presets", help="list the built-in topologies")
    sp.set_defaults(func=cmd_presets)

    sp = sub.add_parser("allocate", help="pick the best set of GPUs")
    sp.add_argument("--topology", required=True, help="preset name, topo -m file or JSON file")
    sp.add_argument("--size", type=int, help="number of GPUs")
    sp.add_argument("--free", help="free GPU indices, e.g. 0,1,5 (default: all)")
    sp.add_argument("--must-include", help="GPU indices the set must contain")
    sp.add_argument("--min-link", help=f"weakest acceptable ring link: {MIN_LINK_VALUES_TEXT}")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument("--batch", help="JSON lines of requests ('-' for stdin); one result per line")
    sp.set_defaults(func=cmd_allocate)
    for add in extra:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None,
         stdin: TextIO | None = None, extra: Sequence[Command] = ()) -> int:
    args = build_parser(extra).parse_args(argv)
    func: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.func
    try:
        return func(args, out or sys.stdout, stdin or sys.stdin)
    except (BadInput, TopologyError) as e:
        print(f"gputopo: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
