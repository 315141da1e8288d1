"""StopScanner: stop sequences cut output, partial matches are held back across steps."""

from __future__ import annotations

from hypothesis import given, strategies as st

from atomr_infer_core import StopScanner


def test_partial_match_is_held_back_until_it_resolves() -> None:
    scanner = StopScanner(["END"])
    assert scanner.feed("Hello E") == ("Hello ", False)
    assert scanner.feed("Hello EN") == ("", False)
    assert scanner.feed("Hello ENd") == ("ENd", False)
    assert scanner.feed("Hello ENd and END tail") == (" and ", True)


def test_flush_releases_held_text_and_drops_incomplete_characters() -> None:
    scanner = StopScanner(["xy"])
    assert scanner.feed("ax") == ("a", False)
    assert scanner.flush() == "x"
    scanner = StopScanner()
    assert scanner.feed("ab\ufffd") == ("ab", False)
    assert scanner.feed("abc") == ("c", False)


@given(
    text=st.text(alphabet="abXY", max_size=40),
    stop=st.text(alphabet="abXY", min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 40), max_size=8),
)
def test_any_split_gives_the_text_before_the_first_stop(
    text: str, stop: str, cuts: list[int]
) -> None:
    scanner = StopScanner([stop])
    sent, stopped = "", False
    for end in [*sorted(cuts), len(text)]:
        delta, stopped = scanner.feed(text[: min(end, len(text))])
        sent += delta
        if stopped:
            break
    if not stopped:
        sent += scanner.flush()
    expected = text[: text.index(stop)] if stop in text else text
    assert sent == expected
    assert stopped == (stop in text)


def _advance(
    generated: list[int],
    *,
    stops: tuple[str, ...] = (),
    max_new: int = 10,
    ignore_eos: bool = False,
):
    from atomr_infer_core import StopScanner, advance_sequence

    scanner = StopScanner(stops)
    outs = [
        advance_sequence(
            seq_id="s",
            generated=generated[: i + 1],
            eos_ids={0},
            ignore_eos=ignore_eos,
            max_new=max_new,
            prompt_len=5,
            scanner=scanner,
            decode=lambda toks: "".join(chr(96 + t) for t in toks),
        )
        for i in range(len(generated))
    ]
    return "".join(o.text_delta for o in outs), outs[-1]


def test_advance_sequence_finishes_on_eos_without_sending_it() -> None:
    from atomr_infer_core import FinishReason, TokenUsage

    text, last = _advance([1, 2, 0])
    assert text == "ab"
    assert last.finish_reason is FinishReason.STOP
    assert last.usage == TokenUsage(input_tokens=5, output_tokens=3)


def test_advance_sequence_cuts_at_a_stop_sequence_and_on_length() -> None:
    from atomr_infer_core import FinishReason

    assert _advance([1, 2, 3, 4], stops=("cd",))[0] == "ab"
    text, last = _advance([1, 2, 3], max_new=3)
    assert (text, last.finish_reason) == ("abc", FinishReason.LENGTH)
    text, last = _advance([1, 0, 2], max_new=3, ignore_eos=True)
    assert (text, last.finish_reason) == ("a`b", FinishReason.LENGTH)
