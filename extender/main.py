"""``gputopo-extender``: serve the extender over a cluster file or the Kubernetes API.

    gputopo-extender --port 8888 [--host 0.0.0.0]
        (--cluster-file FILE [--state-file PATH | --no-state-file]
         | --kubeconfig PATH | --in-cluster)
        [--tls-cert-file CERT --tls-key-file KEY [--client-ca-file CA]] ...

With neither ``--cluster-file`` nor ``--kubeconfig``, in-cluster credentials are used.
Without TLS the extender listens on 127.0.0.1 unless ``--host`` says otherwise, and says
in its log when it listens without client authentication on another address.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import resource
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence

from extender.app import build_app
from extender.cluster import Cluster
from extender.config import (
    DEFAULT_BEST_SET_PATIENCE_S,
    DEFAULT_MAX_BODY_BYTES,
    ExtenderConfig,
    is_loopback,
    validate,
)
from extender.guard import loop_exception_handler, start_server
from extender.logs import Throttle
from extender.validation import format_duration, parse_duration
from topology.names import DEFAULT_RESOURCE_NAME

__all__ = ["connection_limit", "main", "make_cluster", "parse_args", "serve"]

#: File descriptors kept for everything but client connections (API client, files).
FD_RESERVE = 64

log = logging.getLogger("extender")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Sequence[str] | None = None) -> ExtenderConfig:
    p = argparse.ArgumentParser(
        prog="gputopo-extender",
        description="kube-scheduler HTTP extender placing multi-GPU pods on well-connected GPUs.",
    )
    p.add_argument("--host", default=None,
                   help="address to listen on (default 127.0.0.1 without TLS, 0.0.0.0 with "
                        "it); another address without --client-ca-file is logged as a warning")
    p.add_argument("--port", type=int, default=8888, help="port to listen on (default 8888)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cluster-file",
                     help="serve this cluster file (YAML/JSON); no cluster. Binds are kept in "
                          "a state file next to it (see --state-file)")
    src.add_argument("--kubeconfig", help="use the Kubernetes API with this kubeconfig")
    src.add_argument("--in-cluster", action="store_true",
                     help="use the pod's service account (the default without the others)")
    p.add_argument("--state-file",
                   help="cluster-file mode: where binds are kept across restarts, written "
                        "before each bind answers (default: next to the cluster file, "
                        "NAME.state.json); delete it to forget them")
    p.add_argument("--no-state-file", action="store_true",
                   help="cluster-file mode: keep binds in memory only (forgotten on restart)")
    p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key-file", help="the certificate's private key (PEM)")
    p.add_argument("--client-ca-file",
                   help="with TLS: /filter, /prioritize, /bind and /preempt need a client "
                        "certificate signed by this CA (kube-scheduler's tlsConfig.certFile "
                        "and keyFile); so do /topology and the page, unless --public-views")
    p.add_argument("--public-views", action="store_true",
                   help="with --client-ca-file: serve /topology and the page without a "
                        "client certificate (probes and /metrics are always open)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"largest request body accepted, on the wire and decoded (default "
                        f"{DEFAULT_MAX_BODY_BYTES})")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds for a request head once begun, and for a TLS handshake "
                        "(default 10)")
    p.add_argument("--body-timeout", type=float, default=15.0,
                   help="seconds for a request body (default 15)")
    p.add_argument("--idle-timeout", type=float, default=60.0,
                   help="seconds an idle keep-alive connection stays open (default 60)")
    p.add_argument("--max-connections", type=int, default=1000,
                   help="open connections at most; kept below the file-descriptor limit "
                        "(default 1000)")
    p.add_argument("--large-bodies", type=int, default=2,
                   help="request bodies over 512 KiB read and decoded at once (default 2)")
    p.add_argument("--resource-name", action="append", dest="resource_names",
                   help="extended resource counted as GPUs (repeatable; default "
                        f"{DEFAULT_RESOURCE_NAME})")
    p.add_argument("--path-prefix", default="",
                   help="also serve the verbs under this path (urlPrefix's path, e.g. /scheduler)")
    p.add_argument("--no-leader-elect", action="store_true",
                   help="API mode: serve without a Lease (only with a single replica)")
    p.add_argument("--lease-name", default="gputopo-extender")
    p.add_argument("--lease-duration", type=float, default=15.0,
                   help="seconds a standby waits on a silent leader (default 15)")
    p.add_argument("--renew-deadline", type=float, default=10.0,
                   help="seconds the leader keeps leading without renewing (default 10)")
    p.add_argument("--retry-period", type=float, default=2.0,
                   help="seconds between Lease attempts (default 2)")
    p.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "kube-system"),
                   help="namespace of the Lease (default $POD_NAMESPACE or kube-system)")
    p.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this replica's name in the Lease (default $POD_NAME or the hostname)")
    p.add_argument("--bind-timeout", type=float, default=5.0,
                   help="seconds for the whole bind: the node's lock, the choice, the API "
                        "call (default 5; at most the lease duration minus the renew "
                        "deadline)")
    p.add_argument("--best-set-patience", type=_duration, metavar="DURATION",
                   default=DEFAULT_BEST_SET_PATIENCE_S,
                   help="how long a multi-GPU pod whose link policy is not 'required' waits "
                        "for the best set its node type offers before it takes a worse one: "
                        "seconds or e.g. 10m, 1h; 0: no wait; at most 24h (default "
                        f"{format_duration(DEFAULT_BEST_SET_PATIENCE_S)}); a pod's "
                        "gputopo.io/best-set-patience annotation overrides it")
    p.add_argument("--filter-top-scored", action="store_true",
                   help="filter passes only the candidates prioritize would score highest, "
                        "so kube-scheduler can run without prioritizeVerb (one call per "
                        "scheduling cycle instead of two; see docs/extender.md)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    a = p.parse_args(argv)
    host = a.host if a.host is not None else ("0.0.0.0" if a.tls_cert_file else "127.0.0.1")
    return ExtenderConfig(
        host=host, port=a.port, cluster_file=a.cluster_file, kubeconfig=a.kubeconfig,
        in_cluster=a.in_cluster or not (a.cluster_file or a.kubeconfig),
        tls_cert_file=a.tls_cert_file, tls_key_file=a.tls_key_file,
        client_ca_file=a.client_ca_file, public_views=a.public_views,
        state_file=a.state_file, no_state_file=a.no_state_file,
        max_body_bytes=a.max_body_bytes, header_timeout_s=a.header_timeout,
        body_timeout_s=a.body_timeout, idle_timeout_s=a.idle_timeout,
        max_connections=a.max_connections, large_bodies=a.large_bodies,
        resource_names=tuple(a.resource_names or (DEFAULT_RESOURCE_NAME,)),
        path_prefix=a.path_prefix, leader_elect=not a.no_leader_elect,
        lease_name=a.lease_name, lease_namespace=a.lease_namespace, identity=a.identity,
        lease_duration_s=a.lease_duration, renew_deadline_s=a.renew_deadline,
        retry_period_s=a.retry_period,
        bind_timeout_s=a.bind_timeout, best_set_patience_s=a.best_set_patience,
        filter_top_scored=a.filter_top_scored,
        log_level=a.log_level.upper(),
    )


def make_cluster(cfg: ExtenderConfig) -> Cluster:
    if cfg.cluster_file:
        from extender.filesource import file_cluster

        return file_cluster(cfg.cluster_file, state_file=cfg.state_path,
                            resource_names=cfg.resource_names)
    from extender.kube import KubeCluster
    from extender.kubeapi import load_api
    from extender.leader import LeaseElector

    api = load_api(kubeconfig=cfg.kubeconfig, in_cluster=cfg.in_cluster)
    elector = None
    if cfg.leader_elect:
        elector = LeaseElector(
            api, name=cfg.lease_name, namespace=cfg.lease_namespace, identity=cfg.identity,
            lease_duration_s=cfg.lease_duration_s, renew_deadline_s=cfg.renew_deadline_s,
            retry_period_s=cfg.retry_period_s,
        )
    return KubeCluster(api, elector=elector, resource_names=cfg.resource_names, close_api=True)


def ssl_context(cfg: ExtenderConfig) -> ssl.SSLContext | None:
    """The server's TLS: its certificate, and with a client CA, client certificates
    verified in the handshake (optional there: the probes have none; the app refuses
    the verbs without one)."""
    if not cfg.tls_cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert_file, cfg.tls_key_file)
    if cfg.client_ca_file:
        ctx.load_verify_locations(cafile=cfg.client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def connection_limit(cfg: ExtenderConfig) -> int:
    """``cfg.max_connections``, raising the soft file-descriptor limit to the hard one
    first, and kept ``FD_RESERVE`` below it: connections never exhaust descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return max(1, min(cfg.max_connections, soft - FD_RESERVE))


#: Seconds between full garbage collections of a long-running server (see _gc_loop).
GC_PERIOD_S = 600.0


def freeze_heap() -> None:
    """Collect once, then move every object alive now out of the collector's sight.

    The state (topologies, allocator tables, verdict caches) is large and long-lived; a
    full collection walking it costs tens of milliseconds, which would land on some
    filter request's latency. Frozen objects are never walked again.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


async def _gc_loop(period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        freeze_heap()


async def serve(cfg: ExtenderConfig, cluster: Cluster, *, stop: asyncio.Event,
                ready: Callable[[int], None] | None = None, tune_gc: bool = True) -> None:
    """Run until ``stop`` is set; ``ready(port)`` is called once the port listens.

    ``tune_gc`` freezes the heap after start and every ``GC_PERIOD_S`` (the process is
    the server's own; tests running it inside a test process turn it off).
    """
    app = build_app(cfg, cluster)
    throttle = Throttle()
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(loop_exception_handler(throttle))
    limit = connection_limit(cfg)
    try:
        serving = await start_server(
            app, host=cfg.host, port=cfg.port, ssl_context=ssl_context(cfg),
            max_connections=limit, header_timeout_s=cfg.header_timeout_s,
            idle_timeout_s=cfg.idle_timeout_s, throttle=throttle,
        )
    except BaseException:
        loop.set_exception_handler(previous_handler)
        raise
    gc_task = None
    try:
        port = serving.port
        log.info("serving host=%s port=%d tls=%s client_auth=%s mode=%s max_connections=%d "
                 "state_file=%s", cfg.host, port, bool(cfg.tls_cert_file), cfg.authenticated,
                 cluster.mode, limit, cfg.state_path or "none")
        if not cfg.authenticated and not is_loopback(cfg.host):
            log.warning("listening without client authentication host=%s port=%d: any client "
                        "that reaches this port can filter and bind; use --client-ca-file "
                        "with TLS, or a NetworkPolicy (manifests/extender-networkpolicy.yaml)",
                        cfg.host, port)
        if cfg.cluster_file and cfg.state_path is None:
            log.warning("cluster-file mode without a state file: binds are forgotten on "
                        "restart (--no-state-file)")
        if tune_gc:
            freeze_heap()
            gc_task = asyncio.create_task(_gc_loop(GC_PERIOD_S))
        if ready is not None:
            ready(port)
        await stop.wait()
    finally:
        if gc_task is not None:
            gc_task.cancel()
        await serving.runner.cleanup()
        loop.set_exception_handler(previous_handler)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, cfg.log_level, logging.INFO),
        format="time=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    errors = validate(cfg)
    if errors:
        for e in errors:
            print(f"gputopo-extender: {e}", file=sys.stderr)
        return 2
    try:
        cluster = make_cluster(cfg)
    except Exception as e:
        print(f"gputopo-extender: {e}", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, cluster, stop=stop)

    try:
        asyncio.run(run())
    except OSError as e:
        print(f"gputopo-extender: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
