"""A sans-IO decoder for ``text/event-stream`` (WHATWG server-sent events).

Feed bytes with :meth:`SSEDecoder.receive_data`, get complete :class:`SSEEvent` values
back. No I/O, no clock. Line ends may be LF, CR or CRLF, also split across chunks (a CR
at the end of one chunk and an LF at the start of the next are one line end). A leading
UTF-8 BOM is dropped; comments (``:`` lines) and unknown fields are ignored; a field
line without a colon is a field with an empty value. An event is dispatched on a blank
line only, so a final event without its blank line is discarded at the end of the stream,
as the standard says. ``data: [DONE]`` is an ordinary event: providers interpret it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import attrs

__all__ = ["SSEDecoder", "SSEEvent", "aiter_sse"]

_BOM = b"\xef\xbb\xbf"


@attrs.frozen(slots=True)
class SSEEvent:
    """One dispatched event. ``id`` is the stream's last event id (it persists)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


_new_event = SSEEvent
_alloc = object.__new__
_set_event = SSEEvent.__dict__["event"].__set__
_set_data = SSEEvent.__dict__["data"].__set__
_set_id = SSEEvent.__dict__["id"].__set__
_set_retry = SSEEvent.__dict__["retry"].__set__


def _data_event(data: str, last_id: str | None) -> SSEEvent:
    # The hot path builds ~10^5 events per second; the slot setters skip the frozen
    # check of attrs' __init__ (same object, a third faster).
    event = _alloc(SSEEvent)
    _set_event(event, "message")
    _set_data(event, data)
    _set_id(event, last_id)
    _set_retry(event, None)
    return event


class SSEDecoder:
    """Incremental event-stream decoder; one instance per stream, not thread-safe."""

    __slots__ = ("_bom_pending", "_buf", "_data", "_event", "_last_id", "_retry", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""  # bytes of an unterminated line
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF belongs to it
        self._bom_pending = True
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def receive_data(self, data: bytes) -> list[SSEEvent]:
        """Feed the next bytes of the stream; return the events they complete."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if self._buf:
            data = self._buf + data
        if self._bom_pending:
            if len(data) < 3 and _BOM.startswith(data):
                self._buf = data
                return []
            self._bom_pending = False
            if data.startswith(_BOM):
                data = data[3:]
        if b"\r" in data:
            if data[-1:] == b"\r":
                self._skip_lf = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = data.rfind(b"\n")
        if cut < 0:
            self._buf = data
            return []
        self._buf = data[cut + 1 :]
        return self._complete(data[:cut])

    def close(self) -> list[SSEEvent]:
        """End of stream: discard an unterminated line and an undispatched event.

        Returns the events still to deliver, which by the standard is always none; the
        method exists so callers can treat every decoder alike.
        """
        self._buf = b""
        self._data = []
        self._event = ""
        self._retry = None
        return []

    def _complete(self, raw: bytes) -> list[SSEEvent]:
        """Decode complete lines (``raw`` without its last line end).

        The fast path takes a run of whole events made of one ``data: `` line each,
        which is what every LLM provider sends: the shape is checked on the bytes (a
        split never cuts a UTF-8 sequence, whose bytes are all >= 0x80). Anything else
        goes line by line through :meth:`_text`.
        """
        out: list[SSEEvent] = []
        if self._data or self._event or self._retry is not None:
            if raw[:1] != b"\n" and raw:
                return self._lines(raw.decode("utf-8", "replace").split("\n"))
            out = self._lines([""])
            raw = raw[1:]
        if not raw:
            return out
        complete = raw[-1:] == b"\n"
        body = raw[:-1] if complete else raw
        head, sep, tail = (body, b"", b"") if complete else body.rpartition(b"\n\n")
        if (complete or sep) and head.startswith(b"data: "):
            ascii_only = head.isascii()
            # ASCII text decodes once and splits cheaply as str; otherwise each event is
            # decoded alone, so the ASCII ones stay compact strings
            pieces: list[Any] = (
                head[6:].decode("ascii").split("\n\ndata: ")
                if ascii_only
                else head[6:].split(b"\n\ndata: ")
            )
            if head.count(b"\n") == 2 * len(pieces) - 2:
                # every newline in ``head`` separates two one-line "data: " events
                last_id = self._last_id
                append = out.append
                datas = pieces if ascii_only else [p.decode("utf-8", "replace") for p in pieces]
                for data in datas:
                    event = _alloc(SSEEvent)
                    _set_event(event, "message")
                    _set_data(event, data)
                    _set_id(event, last_id)
                    _set_retry(event, None)
                    append(event)
                if tail:
                    out += self._lines(tail.decode("utf-8", "replace").split("\n"))
                return out
        return out + self._text(raw.decode("utf-8", "replace"))

    def _text(self, text: str) -> list[SSEEvent]:
        """Decode complete lines (``text``, non-empty, without its last line end) with
        no event pending: one-line data events one by one, then line by line from the
        first event of another shape."""
        out: list[SSEEvent] = []
        complete = text[-1] == "\n"
        suffix = "\n" if complete else ""
        body = text[:-1] if complete else text
        last_id = self._last_id
        blocks = body.split("\n\n")
        last = None if complete else blocks.pop()
        append = out.append
        for i, block in enumerate(blocks):
            if block.startswith("data: ") and "\n" not in block:
                append(_data_event(block[6:], last_id))
            else:
                rest = "\n\n".join(blocks[i:])
                if last is not None:
                    rest += "\n\n" + last
                out += self._lines((rest + suffix).split("\n"))
                return out
        if last is not None:
            out += self._lines(last.split("\n"))
        return out

    def _lines(self, lines: list[str]) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    out.append(
                        _new_event(
                            self._event or "message", "\n".join(data), self._last_id, self._retry
                        )
                    )
                    data = self._data = []
                self._event = ""
                self._retry = None
            elif line.startswith("data:"):
                value = line[5:]
                data.append(value[1:] if value[:1] == " " else value)
            elif line[0] != ":":
                self._field(line)
        return out

    def _field(self, line: str) -> None:
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)


async def aiter_sse(byte_iterable: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """Decode an async byte stream (``response.aiter_bytes()``) into events.

    Cancellation passes through; closing the generator does not close the source.
    """
    decoder = SSEDecoder()
    async for chunk in byte_iterable:
        for event in decoder.receive_data(chunk):
            yield event
    for event in decoder.close():
        yield event
