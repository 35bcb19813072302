"""The extender's configuration: one frozen value, validated at startup.

``validate`` reports every problem at once, each with a dotted path and the allowed
values (like kube-scheduler's ``field.ErrorList``). Nothing reads the environment after
``build_app``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from topology.names import DEFAULT_RESOURCE_NAME

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ExtenderConfig", "FieldError", "validate"]

#: Full-``Nodes`` requests from 5,000 nodes are tens of MB (a Node object is ~5-10 KB).
DEFAULT_MAX_BODY_BYTES: Final = 256 * 1024 * 1024

_RESOURCE: Final = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/"
                              r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtenderConfig:
    host: str = "0.0.0.0"
    port: int = 8888
    #: Exactly one source: a cluster file, a kubeconfig path, or in-cluster credentials.
    cluster_file: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
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
    #: Seconds allowed for the pod patch and the Binding together. With leader election
    #: it must end before a successor can take over: <= lease_duration - renew_deadline.
    bind_timeout_s: float = 5.0
    #: Nodes drawn on the "/" page at once (the rest are paged).
    page_nodes: int = 100
    log_level: str = "INFO"

    @property
    def source(self) -> str:
        if self.cluster_file:
            return "file"
        return "kubernetes"


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
                        ("tls_cert_file", cfg.tls_cert_file), ("tls_key_file", cfg.tls_key_file)):
        if value and not Path(value).is_file():
            errs.append(FieldError(name, f"{value!r} is not a readable file"))
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        errs.append(FieldError("tls", "tls_cert_file and tls_key_file go together"))
    if cfg.max_body_bytes < 1024:
        errs.append(FieldError("max_body_bytes", f"{cfg.max_body_bytes} is below 1024 bytes"))
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
        if not _DNS_LABEL.match(cfg.lease_name or ""):
            errs.append(FieldError("lease_name", f"{cfg.lease_name!r} is not a DNS label"))
        if not _DNS_LABEL.match(cfg.lease_namespace or ""):
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
    if cfg.page_nodes < 1:
        errs.append(FieldError("page_nodes", "must be >= 1"))
    if cfg.log_level.upper() not in _LOG_LEVELS:
        errs.append(FieldError("log_level",
                               f"{cfg.log_level!r}; allowed: {', '.join(_LOG_LEVELS)}"))
    return errs
