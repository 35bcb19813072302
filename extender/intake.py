"""Reading request bodies: within limits, in time, and off the event loop when large.

kube-scheduler sends small bodies (a ``NodeNames`` filter for 5,000 nodes is 88 KiB) and,
with ``nodeCacheCapable: false``, large ones (full ``Nodes``: tens of MiB). Anyone else
who reaches the port may send anything. :meth:`Intake.receive` reads and decodes one body
so that neither kind can hurt the process:

* **Limits.** At most ``max_body_bytes`` on the wire *and* decoded. ``Content-Encoding:
  gzip`` / ``deflate`` are inflated here, as the bytes stream in, in steps of at most
  1 MiB: a body is refused at the limit, never inflated past it, and one that inflates
  over 200 times its compressed size (a decompression bomb; JSON of Kubernetes objects
  compresses 5 to 50 times) is refused as soon as it does. Any other encoding, or a
  body that is not what its encoding says, is a 400.
* **Time.** The whole body must arrive within ``body_timeout_s`` (408 otherwise); a
  client that closes the connection mid-body is :class:`~extender.wire.ClientGone`.
* **Large bodies** (over 512 KiB decoded, or announced so by ``Content-Length``) need
  one of ``large_bodies`` slots, held until the request is answered, so only that many
  are in memory at once; a request that waits longer than the body timeout for one is a
  503. Their inflating and JSON decoding run in worker threads, and the JSON is decoded
  in pieces (:func:`loads_chunked`: the outer objects and lists walked in Python, each
  inner value one C call), so the event loop gets the GIL back every few milliseconds
  and ``/healthz``, ``/readyz`` and small verbs are answered meanwhile. Small bodies
  are decoded on the loop with one ``json.loads``: faster than any hand-off.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gc
import hashlib
import json
import re
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from extender.validation import show
from extender.wire import BadRequest, BodyTimeout, ClientGone, TooBusy, decode_json, json_error

__all__ = ["DIGEST", "LARGE_BODY_BYTES", "MAX_INFLATE_RATIO", "Intake", "Shortcut", "digest",
           "discard", "loads_chunked"]

#: Where :meth:`Intake.receive` leaves a small body's digest on the request.
DIGEST: Final = web.RequestKey("gputopo.body-digest", bytes)


def digest(raw: bytes | bytearray) -> bytes:
    """What names a request body (BLAKE2b, 16 bytes: about 0.1 ms for 100 KiB)."""
    return hashlib.blake2b(raw, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Shortcut:
    """An answer found for the raw body before decoding it (see ``receive``)."""

    body: bytes


#: Bodies above this (decoded) take a slot and are decoded in a worker thread.
LARGE_BODY_BYTES: Final = 512 * 1024
#: Most output of one inflate step (bounded work per step, on or off the loop).
_INFLATE_STEP: Final = 1024 * 1024
#: A compressed body inflating more than this many times its size (past its first MiB)
#: is a decompression bomb: JSON of Kubernetes objects compresses 5-50 times.
MAX_INFLATE_RATIO: Final = 200
_ENCODINGS: Final = ("identity", "gzip", "x-gzip", "deflate")
_T = TypeVar("_T")
#: The GIL switch interval while large bodies are in (the default is 5 ms).
_SWITCH_S: Final = 0.001


class _Slot:
    """One request's claim on a large-body slot (taken at most once, released once)."""

    __slots__ = ("intake", "taken")

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.taken = False

    async def take(self) -> None:
        if self.taken:
            return
        intake = self.intake
        intake.waiting += 1
        try:
            async with asyncio.timeout(intake.timeout_s):
                await intake._slots.acquire()
        except TimeoutError:
            raise TooBusy(f"{intake.slots} large request bodies are being read already; "
                          "try again") from None
        finally:
            intake.waiting -= 1
        self.taken = True
        intake._enter_large()

    def release(self) -> None:
        if self.taken:
            self.taken = False
            self.intake._leave_large()
            self.intake._slots.release()


class Intake:
    """Reads and decodes request bodies (see the module docstring)."""

    def __init__(
        self, *, max_body_bytes: int, body_timeout_s: float, large_bodies: int,
        large_body_bytes: int = LARGE_BODY_BYTES, executor: Executor | None = None,
    ) -> None:
        self.limit = max_body_bytes
        self.timeout_s = body_timeout_s
        self.slots = large_bodies
        self.large_body_bytes = large_body_bytes
        self._slots = asyncio.Semaphore(large_bodies)
        self._own_pool = executor is None
        self._pool: Executor = executor or ThreadPoolExecutor(
            max_workers=large_bodies, thread_name_prefix="gputopo-decode")
        #: Large bodies being read or handled now, and requests waiting for a slot.
        self.large = 0
        self.waiting = 0
        self._gc_paused = False
        self._switch_interval = sys.getswitchinterval()

    def _enter_large(self) -> None:
        # A large body makes hundreds of thousands of objects, all freed by reference
        # counting; the collector would walk them again and again meanwhile, holding the
        # GIL for tens of milliseconds each time. It pauses while large bodies are in.
        if self.large == 0:
            if gc.isenabled():
                gc.disable()
                self._gc_paused = True
            # and the loop thread waits less for the GIL behind a decode thread
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, _SWITCH_S))
        self.large += 1

    def _leave_large(self) -> None:
        self.large -= 1
        if self.large == 0:
            sys.setswitchinterval(self._switch_interval)
            if self._gc_paused:
                self._gc_paused = False
                gc.enable()

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` in the decode threads (large work that should not hold the loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._own_pool:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @contextlib.asynccontextmanager
    async def receive(
        self, request: web.Request, *, digested: bool = False,
        shortcut: Callable[[bytes], bytes | None] | None = None,
    ) -> AsyncIterator[Any]:
        """The decoded JSON body; a large body's slot is held until the block ends.

        ``digested``: a small body's :func:`digest` is left on the request (``DIGEST``);
        ``shortcut(digest)`` may then answer the body without decoding it (a
        :class:`Shortcut` is yielded instead of the data). Raises :class:`BadRequest`
        (or its 408/503 kinds) and :class:`ClientGone`.
        """
        slot = _Slot(self)
        data: Any = None
        try:
            raw = await self._read(request, slot)
            if (digested or shortcut is not None) and not slot.taken:
                key = request[DIGEST] = digest(raw)
                found = None if shortcut is None else shortcut(key)
                if found is not None:
                    yield Shortcut(found)
                    return
            data = await self._decode(raw, slot.taken)
            del raw
            yield data
        finally:
            if slot.taken and data is not None:
                # Free the decoded body in a worker thread, a piece at a time: freeing
                # it at once on the loop is one long stall of its own.
                holder = [data]
                del data
                with contextlib.suppress(RuntimeError):
                    await self.run(discard, holder)
            slot.release()

    async def _read(self, request: web.Request, slot: _Slot) -> bytearray:
        encoding = (request.headers.get(hdrs.CONTENT_ENCODING) or "identity").strip().lower()
        if encoding not in _ENCODINGS:
            raise BadRequest(f"Content-Encoding {show(encoding)} is not supported; "
                             "send identity, gzip or deflate")
        length = request.content_length
        if length is not None and length > self.limit:
            raise BadRequest(f"request body of {length} bytes is over the limit of "
                             f"{self.limit} bytes (--max-body-bytes)")
        if length is not None and length > self.large_body_bytes:
            await slot.take()
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._stream(request, encoding, slot)
        except TimeoutError:
            raise BodyTimeout(f"request body not received within {self.timeout_s:g}s "
                              "(--body-timeout)") from None

    async def _stream(self, request: web.Request, encoding: str, slot: _Slot) -> bytearray:
        out = bytearray()
        inflater: Any = None
        wire = 0
        content = request.content
        while True:
            try:
                chunk = await content.readany()
            except ConnectionError:
                raise ClientGone("the client closed the connection before sending its "
                                 "body") from None
            except RequestPayloadError as e:
                raise BadRequest(f"request body is malformed: {e}") from None
            if not chunk:
                break
            wire += len(chunk)
            if wire > self.limit:
                raise BadRequest(f"request body is over the limit of {self.limit} bytes "
                                 "(--max-body-bytes)")
            if encoding == "identity":
                out += chunk
            else:
                if inflater is None:
                    inflater = _inflater(encoding, chunk[0])
                await self._inflate(inflater, chunk, out, encoding, slot.taken, wire)
            if not slot.taken and len(out) > self.large_body_bytes:
                await slot.take()
        if inflater is not None and not inflater.eof:
            raise BadRequest(f"request body is not a complete {encoding} stream")
        if encoding != "identity" and inflater is None:
            raise BadRequest(f"request body is empty but says Content-Encoding {encoding}")
        return out

    async def _inflate(
        self, inflater: Any, chunk: bytes, out: bytearray, encoding: str, off_loop: bool,
        wire: int,
    ) -> None:
        data = chunk
        loop = asyncio.get_running_loop()
        while True:
            if inflater.eof:
                if data or inflater.unused_data:
                    raise BadRequest(f"request body has data after the end of its {encoding} "
                                     "stream")
                return
            step = min(self.limit - len(out) + 1, _INFLATE_STEP)
            try:
                if off_loop:
                    piece = await loop.run_in_executor(self._pool, inflater.decompress, data,
                                                       step)
                else:
                    piece = inflater.decompress(data, step)
            except zlib.error as e:
                raise BadRequest(f"request body is not valid {encoding}: {e}") from None
            out += piece
            if len(out) > self.limit:
                raise BadRequest(f"request body inflates to over the limit of {self.limit} "
                                 "bytes (--max-body-bytes)")
            data = inflater.unconsumed_tail
            used = wire - len(data)
            if len(out) > _INFLATE_STEP and len(out) > MAX_INFLATE_RATIO * used:
                raise BadRequest(f"request body inflates over {MAX_INFLATE_RATIO} times its "
                                 f"{encoding} size (a decompression bomb?)")
            if not data and len(piece) < step:
                return  # all input used, no output pending: wait for more input

    async def _decode(self, raw: bytearray, large: bool) -> Any:
        if not large:
            return decode_json(raw)
        if not raw:
            raise BadRequest("empty request body; expected a JSON object")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, loads_chunked, raw)
        except Exception as e:
            raise json_error(e) from None


def discard(holder: list[Any]) -> None:
    """Free what ``holder`` holds a piece at a time, so other threads run in between.

    Only containers nobody else refers to are taken apart; shared ones are just let go.
    """
    stack = holder
    while stack:
        v = stack.pop()
        if isinstance(v, dict) and sys.getrefcount(v) == 2:
            while v:
                _, child = v.popitem()
                if isinstance(child, dict | list) and len(child) > 16 \
                        and sys.getrefcount(child) == 2:
                    stack.append(child)
                del child
        elif isinstance(v, list) and sys.getrefcount(v) == 2:
            while v:
                child = v.pop()
                if isinstance(child, dict | list) and len(child) > 16 \
                        and sys.getrefcount(child) == 2:
                    stack.append(child)
                del child
        del v


def _inflater(encoding: str, first: int) -> Any:
    if encoding == "deflate":
        # RFC 1950 (zlib) as the standard says; raw deflate as some clients send it.
        return zlib.decompressobj(zlib.MAX_WBITS if first & 0x0F == 8 else -zlib.MAX_WBITS)
    return zlib.decompressobj(16 + zlib.MAX_WBITS)


# -- JSON in pieces ----------------------------------------------------------------------
_WS: Final = re.compile(r"[ \t\n\r]*")
#: Up to 2,048 list elements that are strings without escapes, each with its comma: one
#: regex match and one ``json.loads`` (a list of node names goes at near C speed).
_STRINGS: Final = re.compile(r'(?:"[^"\\\x00-\x1f]*+"[ \t\n\r]*+,[ \t\n\r]*+){1,2048}')
_DECODER: Final = json.JSONDecoder()
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_TEXT_STEP: Final = 1024 * 1024


def loads_chunked(raw: bytes | bytearray, *, depth: int = 4) -> Any:
    """``json.loads(raw)``, with the outer ``depth`` levels of objects and lists parsed
    here and every value below them in one C call (a list of 100,000 names is 100,000
    calls: slower than one, but the GIL is free between them).

    The same value as ``json.loads`` for every valid document, and a
    ``json.JSONDecodeError`` (or ``RecursionError``, ``ValueError``) for every invalid
    one; the pieces let other threads run between them.
    """
    text = _text(raw)
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    value, end = _value(text, _skip(text, 0), depth)
    end = _skip(text, end)
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def _skip(s: str, i: int) -> int:
    m = _WS.match(s, i)
    return i if m is None else m.end()


def _text(raw: bytes | bytearray) -> str:
    decoder = codecs.getincrementaldecoder(json.detect_encoding(raw))("surrogatepass")
    view = memoryview(raw)
    parts = [decoder.decode(view[i:i + _TEXT_STEP]) for i in range(0, len(view), _TEXT_STEP)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _value(s: str, i: int, depth: int) -> tuple[Any, int]:
    c = s[i:i + 1]
    if depth > 0 and c == "{":
        return _object(s, i + 1, depth - 1)
    if depth > 0 and c == "[":
        return _array(s, _skip(s, i + 1), depth - 1)
    return _DECODER.raw_decode(s, i)


def _object(s: str, i: int, depth: int) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    i = _skip(s, i)
    if s[i:i + 1] == "}":
        return out, i + 1
    while True:
        if s[i:i + 1] != '"':
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes",
                                       s, i)
        key, i = _scanstring(s, i + 1)
        i = _skip(s, i)
        if s[i:i + 1] != ":":
            raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
        i = _skip(s, i + 1)
        out[key], i = _value(s, i, depth)
        i = _skip(s, i)
        c = s[i:i + 1]
        if c == "}":
            return out, i + 1
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _skip(s, i + 1)


def _array(s: str, i: int, depth: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    if s[i:i + 1] == "]":
        return out, i + 1
    while True:
        if s[i:i + 1] == '"':
            m = _STRINGS.match(s, i)
            if m is not None:
                end = m.end()
                out += json.loads("[" + s[i:s.rindex(",", i, end)] + "]")
                i = end  # a value must follow the comma
                continue
        value, i = _value(s, i, depth)
        out.append(value)
        i = _skip(s, i)
        c = s[i:i + 1]
        if c == "]":
            return out, i + 1
        if c != ",":
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _skip(s, i + 1)
