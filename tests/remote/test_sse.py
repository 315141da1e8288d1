"""SSE decoder: WHATWG framing table tests, an oracle, and arbitrary byte splits."""

from __future__ import annotations

import trio
from hypothesis import given, settings, strategies as st

from atomr_infer_remote import SSEDecoder, SSEEvent, aiter_sse


def decode_all(data: bytes, splits: list[int] | None = None) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    cuts = sorted(set(splits or []))
    start = 0
    for cut in [*cuts, len(data)]:
        out += decoder.receive_data(data[start:cut])
        start = cut
    return out + decoder.close()


def oracle(data: bytes) -> list[SSEEvent]:
    """The WHATWG algorithm written out literally, one character at a time."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\r":
            lines.append(current)
            current = ""
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif ch == "\n":
            lines.append(current)
            current = ""
        else:
            current += ch
        i += 1
    events: list[SSEEvent] = []
    data_buf: list[str] = []
    event_type = ""
    last_id: str | None = None
    retry: int | None = None
    for line in lines:
        if line == "":
            if data_buf:
                events.append(
                    SSEEvent(event_type or "message", "\n".join(data_buf), last_id, retry)
                )
            data_buf, event_type, retry = [], "", None
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "data":
            data_buf.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry = int(value)
    return events


def test_three_chunks_with_done_passed_through() -> None:
    events = decode_all(b'data: {"x":1}\n\ndata: {"x":2}\n\ndata: [DONE]\n\n')
    assert [e.data for e in events] == ['{"x":1}', '{"x":2}', "[DONE]"]
    assert all(e.event == "message" for e in events)


def test_line_ends_lf_cr_crlf_are_equivalent() -> None:
    expected = [SSEEvent("message", "a\nb"), SSEEvent("ping", "c")]
    for nl in (b"\n", b"\r", b"\r\n"):
        raw = b"data: a" + nl + b"data: b" + nl + nl + b"event: ping" + nl + b"data: c" + nl + nl
        assert decode_all(raw) == expected


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    assert decode_all(b"data: a\r\n\r\ndata: b\r\n\r\n", [8, 9]) == [
        SSEEvent("message", "a"),
        SSEEvent("message", "b"),
    ]


def test_cr_at_chunk_end_dispatches_without_waiting() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"data: a\r\r") == [SSEEvent("message", "a")]
    assert decoder.receive_data(b"\ndata: b\n\n") == [SSEEvent("message", "b")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    raw = b": keep-alive\nfoo: bar\ndata: x\n:another\n\n"
    assert decode_all(raw) == [SSEEvent("message", "x")]


def test_field_without_colon_has_empty_value() -> None:
    assert decode_all(b"data\n\n") == [SSEEvent("message", "")]
    assert decode_all(b"data\ndata\n\n") == [SSEEvent("message", "\n")]


def test_only_one_leading_space_is_stripped() -> None:
    assert decode_all(b"data:  two\n\ndata:none\n\n") == [
        SSEEvent("message", " two"),
        SSEEvent("message", "none"),
    ]


def test_leading_bom_is_dropped_even_when_split() -> None:
    raw = b"\xef\xbb\xbfdata: x\n\n"
    assert decode_all(raw, [1, 2]) == [SSEEvent("message", "x")]
    # a BOM later in the stream is content, not a marker
    assert decode_all(b"data: \xef\xbb\xbfx\n\n") == [SSEEvent("message", "\ufeffx")]


def test_final_event_without_blank_line_is_not_dispatched() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"data: a\n\ndata: b\n") == [SSEEvent("message", "a")]
    assert decoder.close() == []


def test_id_persists_and_ignores_nul() -> None:
    raw = b"id: 7\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in decode_all(raw)] == ["7", "7", "7", ""]


def test_retry_needs_digits_and_belongs_to_its_event() -> None:
    raw = b"retry: 1500\ndata: a\n\nretry: 1.5\ndata: b\n\n"
    assert [e.retry for e in decode_all(raw)] == [1500, None]


def test_blank_lines_without_data_dispatch_nothing_and_reset_event_type() -> None:
    assert decode_all(b"event: x\n\n\n\ndata: a\n\n") == [SSEEvent("message", "a")]


def test_multibyte_utf8_split_inside_a_character() -> None:
    raw = "data: héllo 日本\n\n".encode()
    for cut in range(1, len(raw)):
        assert decode_all(raw, [cut]) == [SSEEvent("message", "héllo 日本")]


def test_fast_path_then_pending_event_across_chunks() -> None:
    decoder = SSEDecoder()
    assert decoder.receive_data(b"data: 1\n\ndata: 2\n\nevent: e\ndata: 3") == [
        SSEEvent("message", "1"),
        SSEEvent("message", "2"),
    ]
    assert decoder.receive_data(b"\n") == []
    assert decoder.receive_data(b"\ndata: 4\n\n") == [SSEEvent("e", "3"), SSEEvent("message", "4")]


_line = st.one_of(
    st.sampled_from(["data: x", "data:", "data", "event: ping", "id: 1", "retry: 20", ": c", ""]),
    st.text(alphabet="dat:ei \x00é日", max_size=12),
)
_nl = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.tuples(_line, _nl), max_size=30))
    text = "".join(line + nl for line, nl in parts) + draw(st.sampled_from(["", "data: tail"]))
    raw = text.encode()
    if draw(st.booleans()):
        raw = b"\xef\xbb\xbf" + raw
    return raw


@settings(max_examples=300)
@given(raw=event_streams(), data=st.data())
def test_arbitrary_splits_yield_the_same_events(raw: bytes, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    expected = oracle(raw)
    assert decode_all(raw) == expected
    assert decode_all(raw, cuts) == expected
    assert decode_all(raw, list(range(len(raw)))) == expected


@settings(max_examples=100)
@given(
    datas=st.lists(st.text(alphabet='ab{}":é ', max_size=20), max_size=20),
    data=st.data(),
)
def test_openai_shaped_streams_split_anywhere(datas: list[str], data: st.DataObject) -> None:
    raw = "".join(f"data: {d}\n\n" for d in datas).encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert decode_all(raw, cuts) == [SSEEvent("message", d) for d in datas]


async def test_aiter_sse_decodes_an_async_byte_stream() -> None:
    async def chunks():
        for piece in (b"data: a\n", b"\ndata: b", b"\n\ndata: c\n"):
            await trio.lowlevel.checkpoint()
            yield piece

    assert [e.data async for e in aiter_sse(chunks())] == ["a", "b"]


_event_block = st.one_of(
    st.text(alphabet="ab{}:é日 ", max_size=12).map(lambda d: f"data: {d}"),
    st.sampled_from(["event: x\ndata: y", "id: 9\ndata: z", "data: a\ndata: b", ": c", "data"]),
)


@settings(max_examples=200)
@given(
    blocks=st.lists(_event_block, max_size=25),
    gaps=st.sampled_from(["\n\n", "\n\n\n"]),
    data=st.data(),
)
def test_fast_path_and_slow_path_interleave_like_the_oracle(
    blocks: list[str], gaps: str, data: st.DataObject
) -> None:
    raw = "".join(b + gaps for b in blocks).encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert decode_all(raw, cuts) == oracle(raw)
