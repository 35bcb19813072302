"""Structured log lines: ``key=value`` (default) or one JSON object per line.

Call sites pass their fields through ``extra=fields(pod=..., gpus=...)`` so a person can
grep ``pod=default/train-0`` and a log pipeline can parse every line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final, Literal

__all__ = [
    "CLIP_CHARS",
    "CLIP_ITEMS",
    "LOG_FORMATS",
    "JsonFormatter",
    "KeyValueFormatter",
    "clip",
    "clip_all",
    "configure",
    "fields",
]

LOG_FORMATS: Final = ("kv", "json")
#: Longest value a client sent that is quoted back (in an error or a log line).
CLIP_CHARS: Final = 64
#: Most values of one list a log line names.
CLIP_ITEMS: Final = 16


def clip(value: str, limit: int = CLIP_CHARS) -> str:
    """``value``, or its first ``limit`` characters and its size when it is longer.

    Requests come from the kubelet's socket, but nothing bounds an ID's length: a 1 MiB
    ID echoed in a gRPC error overflows the metadata limit, and in a log line it is noise.

    >>> clip("GPU-0")
    'GPU-0'
    >>> clip("x" * 100, 8)
    'xxxxxxxx... (100 bytes)'
    """
    if len(value) <= limit:
        return value
    return f"{value[:limit]}... ({len(value.encode('utf-8', 'replace'))} bytes)"


def clip_all(values: Iterable[str], items: int = CLIP_ITEMS) -> list[str]:
    """At most ``items`` values, each clipped, and how many more there were.

    >>> clip_all(["a", "b", "c"], 2)
    ['a', 'b', '... (1 more)']
    """
    out: list[str] = []
    more = 0
    for v in values:
        if len(out) < items:
            out.append(clip(v))
        else:
            more += 1
    return [*out, f"... ({more} more)"] if more else out


def fields(**kv: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the structured fields of the line."""
    return {"fields": kv}


def _value(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple, set, frozenset)):
        return ",".join(str(x) for x in (sorted(v) if isinstance(v, (set, frozenset)) else v))
    return v


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        out.update({k: _value(v) for k, v in extra.items() if v is not None})
    if record.exc_info and record.exc_info[0] is not None:
        out["error_type"] = record.exc_info[0].__name__
    return out


#: Printable ASCII but space, '"' and '=': written bare. Anything else is JSON-quoted,
#: so a value from a request (an ID with a newline or an escape code) stays one field.
_BARE = re.compile(r"[!#-<>-~]+")


def _quote(v: Any) -> str:
    text = str(v)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class KeyValueFormatter(logging.Formatter):
    """``time=… level=info logger=plugin.server msg="allocate" gpus=GPU-…,GPU-…``"""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{k}={_quote(v)}" for k, v in _record_fields(record).items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_record_fields(record), default=str, separators=(",", ":"))


def configure(
    fmt: Literal["kv", "json"] = "kv",
    level: str = "INFO",
    *,
    quiet: Iterable[str] = ("kubernetes", "urllib3"),
) -> None:
    """Send every log line to stderr in ``fmt``; chatty client libraries at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
