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
