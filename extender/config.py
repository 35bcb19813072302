"""The extender's configuration: one frozen value, validated at startup.

``validate`` reports every problem at once, each with a dotted path and the allowed
values (like kube-scheduler's ``field.ErrorList``). Nothing reads the environment after
``build_app``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from extender.validation import dns_label_problem
from topology.names import DEFAULT_RESOURCE_NAME

__all__ = [
    "DEFAULT_BEST_SET_PATIENCE_S",
    "DEFAULT_MAX_BODY_BYTES",
    "MAX_BEST_SET_PATIENCE_S",
    "ExtenderConfig",
    "FieldError",
    "is_loopback",
    "validate",
]

#: Full-``Nodes`` requests from 5,000 nodes are tens of MB (a Node object is ~5-10 KB).
DEFAULT_MAX_BODY_BYTES: Final = 256 * 1024 * 1024

#: How long a multi-GPU pod whose link policy is not ``required`` waits for the best set
#: its node type offers before it takes what is free (``extender.patience``). 4 hours:
#: on the Philly trace a pod passed over gets its best set within 3 minutes at the
#: median, 53 at p90 and 4.4 hours at p99, so it takes about 4 hours for 99% of
#: multi-GPU jobs to get a best set; no wait measured cost queueing (docs/simulator.md,
#: "Waiting for the best set").
DEFAULT_BEST_SET_PATIENCE_S: Final = 4 * 3600.0
#: The longest wait the flag or a pod's annotation may ask for.
MAX_BEST_SET_PATIENCE_S: Final = 24 * 3600.0

_RESOURCE: Final = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
                              r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtenderConfig:
    #: Where to listen; the command defaults to 127.0.0.1 without TLS, 0.0.0.0 with it.
    host: str = "127.0.0.1"
    port: int = 8888
    #: Exactly one source: a cluster file, a kubeconfig path, or in-cluster credentials.
    cluster_file: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: With TLS: the verbs need a client certificate signed by this CA (PEM).
    client_ca_file: str | None = None
    #: With a client CA: /topology and the page are served without a certificate too.
    public_views: bool = False
    #: Cluster-file mode: where binds are kept across restarts (None: next to the file).
    state_file: str | None = None
    #: Cluster-file mode: keep binds in memory only (forgotten on restart).
    no_state_file: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Seconds for a request head once begun, a body, and an idle keep-alive connection.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 15.0
    idle_timeout_s: float = 60.0
    #: Open connections at most (also kept below the file-descriptor limit).
    max_connections: int = 1000
    #: Large request bodies (over 512 KiB) read and decoded at once, at most.
    large_bodies: int = 2
    #: Bytes the last answers of filter and prioritize may keep (see extender.decisions).
    answer_cache_bytes: int = 64 * 1024 * 1024
    resource_names: tuple[str, ...] = (DEFAULT_RESOURCE_NAME,)
    #: Served under this prefix too (kube-scheduler's urlPrefix path), e.g. "/scheduler".
    path_prefix: str = ""
    #: Leader election (API mode only).
    leader_elect: bool = True
    lease_name: str = "gputopo-extender"
    lease_namespace: str = "kube-system"
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    identity: str = ""
    #: Seconds allowed for the whole bind (the node's lock, the choice, the API call).
    #: With leader election it must end before a successor can take over:
    #: <= lease_duration - renew_deadline.
    bind_timeout_s: float = 5.0
    #: Seconds a multi-GPU pod whose link policy is not ``required`` waits for the best
    #: set its node type offers (0: it never waits; see extender.patience).
    best_set_patience_s: float = DEFAULT_BEST_SET_PATIENCE_S
    #: Filter passes only the top-scored candidates (extender.narrow); kube-scheduler is
    #: then configured without prioritizeVerb.
    filter_top_scored: bool = False
    #: Nodes drawn on the "/" page at once (the rest are paged).
    page_nodes: int = 100
    log_level: str = "INFO"

    @property
    def source(self) -> str:
        if self.cluster_file:
            return "file"
        return "kubernetes"

    @property
    def state_path(self) -> Path | None:
        """The cluster-file mode's state file (None: memory only, or API mode)."""
        if not self.cluster_file or self.no_state_file:
            return None
        if self.state_file:
            return Path(self.state_file)
        p = Path(self.cluster_file)
        return p.with_name(f"{p.stem}.state.json")

    @property
    def authenticated(self) -> bool:
        """Whether the verbs need a client certificate."""
        return bool(self.tls_cert_file and self.client_ca_file)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def validate(cfg: ExtenderConfig, *, need_source: bool = True) -> list[FieldError]:
    """Every problem with ``cfg``; empty when it is usable.

    ``need_source=False`` skips the choice of cluster source (``build_app`` is handed the
    cluster object itself).
    """
    errs: list[FieldError] = []
    if not 0 <= cfg.port <= 65535:
        errs.append(FieldError("port", f"{cfg.port} is not a TCP port (0..65535)"))
    if not cfg.host:
        errs.append(FieldError("host", "must not be empty (e.g. 0.0.0.0 or 127.0.0.1)"))
    sources = [n for n, on in (("cluster_file", bool(cfg.cluster_file)),
                               ("kubeconfig", bool(cfg.kubeconfig)),
                               ("in_cluster", cfg.in_cluster)) if on]
    if need_source and len(sources) != 1:
        errs.append(FieldError(
            "source", f"exactly one of cluster_file, kubeconfig, in_cluster is needed; "
            f"got {', '.join(sources) or 'none'}"))
    for name, value in (("cluster_file", cfg.cluster_file), ("kubeconfig", cfg.kubeconfig),
                        ("tls_cert_file", cfg.tls_cert_file), ("tls_key_file", cfg.tls_key_file),
                        ("client_ca_file", cfg.client_ca_file)):
        if value and not Path(value).is_file():
            errs.append(FieldError(name, f"{value!r} is not a readable file"))
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        errs.append(FieldError("tls", "tls_cert_file and tls_key_file go together"))
    if cfg.client_ca_file and not cfg.tls_cert_file:
        errs.append(FieldError("client_ca_file", "needs TLS (tls_cert_file and tls_key_file): "
                               "client certificates are only asked for over TLS"))
    if cfg.public_views and not cfg.client_ca_file:
        errs.append(FieldError("public_views", "only means something with client_ca_file"))
    state = cfg.state_path
    if state is not None and need_source:
        if not state.parent.is_dir() or not os.access(state.parent, os.W_OK):
            errs.append(FieldError("state_file", f"{str(state)!r}: its directory must exist and "
                                   "be writable (or pass --state-file PATH, or "
                                   "--no-state-file)"))
        elif state.exists() and not os.access(state, os.R_OK | os.W_OK):
            errs.append(FieldError("state_file", f"{str(state)!r} is not readable and writable"))
    if (cfg.state_file or cfg.no_state_file) and not cfg.cluster_file:
        errs.append(FieldError("state_file", "only for cluster-file mode (--cluster-file)"))
    if cfg.max_body_bytes < 1024:
        errs.append(FieldError("max_body_bytes", f"{cfg.max_body_bytes} is below 1024 bytes"))
    for name, seconds in (("header_timeout_s", cfg.header_timeout_s),
                          ("body_timeout_s", cfg.body_timeout_s),
                          ("idle_timeout_s", cfg.idle_timeout_s)):
        if not seconds > 0:
            errs.append(FieldError(name, "must be > 0"))
    for name, n in (("max_connections", cfg.max_connections), ("large_bodies", cfg.large_bodies)):
        if n < 1:
            errs.append(FieldError(name, "must be >= 1"))
    if cfg.answer_cache_bytes < 0:
        errs.append(FieldError("answer_cache_bytes", "must be >= 0"))
    if not cfg.resource_names:
        errs.append(FieldError("resource_names",
                               f"needs at least one (e.g. {DEFAULT_RESOURCE_NAME})"))
    for i, name in enumerate(cfg.resource_names):
        if not _RESOURCE.match(name):
            errs.append(FieldError(f"resource_names[{i}]",
                                   f"{name!r} is not an extended resource name (domain/name)"))
    if cfg.path_prefix and (not cfg.path_prefix.startswith("/") or cfg.path_prefix.endswith("/")):
        errs.append(FieldError("path_prefix",
                               f"{cfg.path_prefix!r}: must start with / and not end with /"))
    if cfg.leader_elect and cfg.source == "kubernetes":
        if dns_label_problem(cfg.lease_name or "") is not None:
            errs.append(FieldError("lease_name", f"{cfg.lease_name!r} is not a DNS label"))
        if dns_label_problem(cfg.lease_namespace or "") is not None:
            errs.append(FieldError("lease_namespace",
                                   f"{cfg.lease_namespace!r} is not a DNS label"))
        if not cfg.lease_duration_s > cfg.renew_deadline_s > cfg.retry_period_s > 0:
            errs.append(FieldError(
                "lease", "need lease_duration_s > renew_deadline_s > retry_period_s > 0; got "
                f"{cfg.lease_duration_s} > {cfg.renew_deadline_s} > {cfg.retry_period_s}"))
        elif cfg.bind_timeout_s > cfg.lease_duration_s - cfg.renew_deadline_s:
            # A leader stops starting binds renew_deadline after its last renewal; a
            # successor starts lease_duration after it. Binds must end in between.
            errs.append(FieldError(
                "bind_timeout_s",
                f"{cfg.bind_timeout_s:g}s is longer than lease_duration_s - renew_deadline_s "
                f"({cfg.lease_duration_s - cfg.renew_deadline_s:g}s): a bind could outlive "
                "the leadership it started under"))
    if cfg.bind_timeout_s <= 0:
        errs.append(FieldError("bind_timeout_s", "must be > 0"))
    if not (math.isfinite(cfg.best_set_patience_s)
            and 0 <= cfg.best_set_patience_s <= MAX_BEST_SET_PATIENCE_S):
        errs.append(FieldError("best_set_patience_s",
                               f"{cfg.best_set_patience_s:g}s; allowed: 0 (no wait) up to "
                               f"{MAX_BEST_SET_PATIENCE_S:g}s (24h)"))
    if cfg.page_nodes < 1:
        errs.append(FieldError("page_nodes", "must be >= 1"))
    if cfg.log_level.upper() not in _LOG_LEVELS:
        errs.append(FieldError("log_level",
                               f"{cfg.log_level!r}; allowed: {', '.join(_LOG_LEVELS)}"))
    return errs
