"""``gputopo`` and ``kubectl gputopo``: the operator tools, and every other subcommand.

``gputopo cluster nodes``, ``gputopo cluster show NODE`` and ``gputopo explain POD`` are
answered here; ``simulate`` by ``simulator.cli``; every other subcommand (``parse``,
``show``, ``presets``, ``allocate``) goes to :func:`topology.cli.main` unchanged.
``kubectl-gputopo`` (a kubectl plugin: ``kubectl gputopo nodes|show|explain``) is the
same commands under shorter names.

Exit codes: 0 done; 1 no such node or pod; 2 bad input; 3 the cluster cannot be read
(credentials, API server, cluster file). Messages go to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from console.render import explanation_text, node_text, nodes_text, to_json
from console.source import ApiSource, ClusterSource, FileSource, SourceError
from console.views import explain, node_detail, node_summaries
from simulator.cli import add_simulate
from topology import cli as topology_cli
from topology.names import DEFAULT_RESOURCE_NAME

__all__ = ["build_parser", "kubectl_main", "main"]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_UNREADABLE = 3

#: The subcommands answered here; any other goes to topology.cli.
OWN = ("cluster", "explain")


class BadInput(Exception):
    """A user error: exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _source_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the cluster is read from (default: the kubeconfig)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    x.add_argument("--cluster-file", help="a cluster file instead of a cluster "
                                          "(examples/cluster.yaml)")
    g.add_argument("--context", help="kubeconfig context (default: the current one)")


def _add_nodes(sub: argparse._SubParsersAction[_Parser], name: str) -> None:
    sp = sub.add_parser(name, help="one line per GPU node: model, free/total GPUs, the best "
                                   "free set per size")
    sp.add_argument("--sizes", help="set sizes to show, e.g. 1,2,4 (default: 2, 4, 8, ... "
                                    "up to each node's size)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    _source_options(sp)
    sp.set_defaults(func=cmd_nodes)


def _add_show(sub: argparse._SubParsersAction[_Parser], name: str) -> None:
    sp = sub.add_parser(name, help="one node: its link matrix, used GPUs marked, and the "
                                   "pods holding them")
    sp.add_argument("node")
    sp.add_argument("--format", choices=["matrix", "dot", "svg"], default="matrix")
    _source_options(sp)
    sp.set_defaults(func=cmd_show)


def _add_explain(sub: argparse._SubParsersAction[_Parser], name: str) -> None:
    sp = sub.add_parser(name, help="why a pod got its node and GPUs, or why no node fits, "
                                   "in the extender's words")
    sp.add_argument("pod", nargs="?", help="NAME or NAMESPACE/NAME")
    sp.add_argument("-n", "--namespace", help="the pod's namespace (default: the context's)")
    sp.add_argument("-f", "--filename", help="a Pod manifest to judge instead (what if it "
                                             "were created now)")
    sp.add_argument("--resource-name", action="append", dest="resource_names",
                    help=f"GPU resource name(s) the extender counts (default "
                         f"{DEFAULT_RESOURCE_NAME})")
    sp.add_argument("--json", action="store_true", help="print JSON")
    _source_options(sp)
    sp.set_defaults(func=cmd_explain)


def topology_commands() -> tuple[str, ...]:
    """The subcommands topology.cli answers (``gputopo parse``, ``show``, ...)."""
    for action in topology_cli.build_parser([add_simulate])._actions:
        if isinstance(action, argparse._SubParsersAction):
            return tuple(action.choices)
    return ()


def build_parser(prog: str = "gputopo") -> argparse.ArgumentParser:
    others = ", ".join(topology_commands())
    p = _Parser(prog=prog, description=(
        "GPU topology tools. Cluster: cluster nodes, cluster show, explain. "
        f"Topologies: {others} (see '{prog} COMMAND --help')."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    cluster = sub.add_parser("cluster", help="GPU nodes as the extender sees them")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, parser_class=_Parser)
    _add_nodes(csub, "nodes")
    _add_show(csub, "show")
    _add_explain(sub, "explain")
    for name in topology_commands():
        sub.add_parser(name, help=f"see '{prog} {name} --help'", add_help=False)
    return p


def build_kubectl_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kubectl gputopo", description=(
        "GPU topology of the cluster, as the gpu-topology-scheduler extender sees it."))
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_nodes(sub, "nodes")
    _add_show(sub, "show")
    _add_explain(sub, "explain")
    return p


def _source(args: argparse.Namespace) -> ClusterSource:
    if args.cluster_file:
        return FileSource(args.cluster_file)
    return ApiSource(kubeconfig=args.kubeconfig, context=args.context)


def _sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise BadInput(f"--sizes: {part!r} is not a set size (expected e.g. 2,4,8)")
        out.append(int(part))
    return out


def cmd_nodes(args: argparse.Namespace, out: TextIO) -> int:
    sizes = _sizes(args.sizes)
    snap = _source(args).snapshot()
    summaries = node_summaries(snap.state, sizes)
    if args.json:
        out.write(to_json({"nodes": summaries, "unreadable": dict(snap.unreadable)}))
    else:
        out.write(nodes_text(summaries, snap.unreadable))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    snap = _source(args).snapshot()
    detail = node_detail(snap.state, args.node)
    if detail is None:
        known = ", ".join(sorted(snap.state.nodes)) or "none"
        why = snap.unreadable.get(args.node)
        extra = f": its GPUTopology is unreadable: {why}" if why else f" (GPU nodes: {known})"
        print(f"gputopo: no GPU node {args.node!r}{extra}", file=sys.stderr)
        return EXIT_NOT_FOUND
    out.write(node_text(detail, args.format))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace, out: TextIO) -> int:
    if (args.pod is None) == (args.filename is None):
        raise BadInput("explain: name one pod (NAME or NAMESPACE/NAME) or give -f FILE")
    source = _source(args)
    resource_names = tuple(args.resource_names or (DEFAULT_RESOURCE_NAME,))
    events: list[Mapping[str, Any]] = []
    pod: dict[str, Any] | None
    if args.filename:
        pod = _read_pod(args.filename)
        meta = pod.setdefault("metadata", {})
        namespace = args.namespace or meta.get("namespace") or source.default_namespace()
        ref = f"{namespace}/{meta.get('name', '(unnamed)')}"
    else:
        namespace, _, name = args.pod.rpartition("/")
        namespace = namespace or args.namespace or source.default_namespace()
        ref = f"{namespace}/{name}"
        found = source.pod(namespace, name)
        pod = None if found is None else dict(found)
        if pod is not None:
            events = list(source.events(namespace, name))
    snap = source.snapshot()
    e = explain(snap.state, pod=pod, ref=ref, events=events, resource_names=resource_names)
    if e is None:
        print(f"gputopo: no pod {ref} ({snap.origin})", file=sys.stderr)
        return EXIT_NOT_FOUND
    out.write(to_json(e) if args.json else explanation_text(e))
    return EXIT_OK


def _read_pod(path: str) -> dict[str, Any]:
    import yaml

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        docs = [d for d in yaml.safe_load_all(text) if d]
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise BadInput(f"{path}: not YAML: {e}") from None
    pods = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Pod"]
    if len(pods) != 1:
        raise BadInput(f"{path}: expected one Pod, found {len(pods)}")
    return dict(pods[0])


def _run(parser: argparse.ArgumentParser, argv: Sequence[str], out: TextIO) -> int:
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, TextIO], int] = args.func
    try:
        return func(args, out)
    except BadInput as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SourceError as e:
        print(f"{parser.prog}: cannot read the cluster: {e}", file=sys.stderr)
        return EXIT_UNREADABLE
    except BrokenPipeError:
        return EXIT_OK


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``gputopo``: ``cluster`` and ``explain`` here, everything else in topology.cli."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in OWN and args[0] not in ("-h", "--help"):
        return topology_cli.main(args, out=out, extra=[add_simulate])
    return _run(build_parser(), args, out or sys.stdout)


def kubectl_main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """``kubectl-gputopo``: ``kubectl gputopo nodes|show|explain``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return _run(build_kubectl_parser(), args, out or sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
