"""Kubernetes' own rules for the names and values the extender reads, as pure checks.

The rules of ``k8s.io/apimachinery/pkg/util/validation`` (DNS-1123 labels and
subdomains, qualified names) and of ``ValidateAnnotations`` (a string map of at most
256 KiB). Each check returns the problem as text, or None when the value is valid, so
callers can name the field path. :func:`show` cuts an echoed value: a message never
carries a megabyte of someone else's input.

>>> dns_label_problem("gpu-0"), dns_label_problem("Main")
(None, "'Main' is not a DNS-1123 label (lower-case a-z, 0-9 and '-', at most 63)")
>>> show("x" * 100)
"'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (100 characters)"
>>> parse_duration("1h30m"), parse_duration("600"), format_duration(5400.0)
(5400.0, 600.0, '1h30m')
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = [
    "MAX_ANNOTATIONS_BYTES",
    "dns_label_problem",
    "dns_subdomain_problem",
    "format_duration",
    "parse_duration",
    "qualified_name_problem",
    "show",
    "uid_problem",
]

_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
#: A UID as the API server writes it is a UUID; anything printable up to 128 is accepted.
_UID: Final = re.compile(r"[\x21-\x7e]{1,128}")
#: ``TotalAnnotationSizeLimitB`` of apimachinery: keys and values together.
MAX_ANNOTATIONS_BYTES: Final = 256 * 1024
_SHOWN: Final = 44
#: A duration as Go's ``time.ParseDuration`` writes hours, minutes and seconds
#: (``"1h30m"``, ``"10m"``, ``"45s"``, ``"1.5h"``), or a bare number of seconds.
_DURATION_PART: Final = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,9})?)(h|m|s)")
_DURATION: Final = re.compile(r"(?:[0-9]{1,9}(?:\.[0-9]{1,9})?[hms])+")
_SECONDS: Final = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")
_UNIT_S: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}


def show(value: object) -> str:
    """``repr(value)``, cut to a few dozen characters (with the full length said)."""
    if isinstance(value, str) and len(value) > _SHOWN:
        return f"{value[:_SHOWN]!r}... ({len(value)} characters)"
    text = repr(value)
    if len(text) > _SHOWN + 2:
        return f"{text[:_SHOWN]}... ({type(value).__name__})"
    return text


def dns_label_problem(value: str) -> str | None:
    """RFC 1123 label: namespaces, container names."""
    if len(value) <= 63 and _LABEL.fullmatch(value):
        return None
    return f"{show(value)} is not a DNS-1123 label (lower-case a-z, 0-9 and '-', at most 63)"


def dns_subdomain_problem(value: str) -> str | None:
    """RFC 1123 subdomain: pod and node names."""
    if len(value) <= 253 and _SUBDOMAIN.fullmatch(value):
        return None
    return (f"{show(value)} is not a DNS-1123 subdomain (lower-case a-z, 0-9, '-' and '.', "
            "at most 253)")


def qualified_name_problem(value: str) -> str | None:
    """An annotation or label key: ``[prefix/]name`` (prefix a DNS subdomain)."""
    prefix, _, name = value.rpartition("/")
    if prefix and dns_subdomain_problem(prefix.lower()) is not None:
        return f"{show(value)}: the prefix is not a DNS-1123 subdomain"
    if len(name) <= 63 and _NAME_PART.fullmatch(name):
        return None
    return (f"{show(value)} is not a qualified name (alphanumerics, '-', '_' and '.', at most "
            "63, with an optional DNS subdomain prefix and '/')")


def uid_problem(value: str) -> str | None:
    if _UID.fullmatch(value):
        return None
    return f"{show(value)} is not a UID (1 to 128 printable ASCII characters)"


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a bare number of seconds (``"600"``) or Go's hours, minutes
    and seconds (``"1h30m"``, ``"10m"``, ``"0"``). Raises ValueError naming the forms."""
    value = text.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    if _DURATION.fullmatch(value):
        return sum(float(n) * _UNIT_S[unit] for n, unit in _DURATION_PART.findall(value))
    raise ValueError(f"{show(text)} is not a duration (seconds, or e.g. 90s, 10m, 1h30m)")


def format_duration(seconds: float) -> str:
    """``seconds`` as Go writes a duration, to the second: ``10m``, ``1h30m``, ``45s``."""
    if math.isinf(seconds):
        return "inf"
    if seconds != int(seconds) or seconds < 60:
        return f"{seconds:g}s"
    s = int(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((h, "h"), (m, "m"), (sec, "s")) if n)
