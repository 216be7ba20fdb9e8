from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.shaping import has_prefix, shape
from bridge.smpp.encoding import segment_count

PREFIX = "Riverside Library: "
FOOTER = "Reply STOP to opt out, HELP for help."


@pytest.mark.parametrize(
    "text",
    [
        "Riverside Library: your hold is ready",
        "RIVERSIDE LIBRARY - your hold is ready",
        "riverside library your hold is ready",
    ],
)
def test_existing_prefix_is_recognised(text: str) -> None:
    assert has_prefix(text, PREFIX)
    assert shape(text, prefix=PREFIX, footer=None).text == text


def test_prefix_and_footer_within_one_segment() -> None:
    s = shape("Your hold Dune is ready until 11/30.", prefix=PREFIX, footer=FOOTER)
    assert s.text == f"{PREFIX}Your hold Dune is ready until 11/30. {FOOTER}"
    assert s.prefix_added and s.footer_added and s.segments == 1 and s.extra_segments == 0


def _text_of(n: int) -> str:
    return ("Your hold is ready at Main Branch until Saturday. " * 10)[:n]


def test_footer_dropped_rather_than_adding_a_segment() -> None:
    text = _text_of(160 - len(PREFIX) - 5)
    s = shape(text, prefix=PREFIX, footer=FOOTER)
    assert not s.footer_added and s.segments == 1 and s.text == PREFIX + text


def test_shorten_keeps_the_footer_in_the_same_segments() -> None:
    text = _text_of(160 - len(PREFIX) - 5)
    s = shape(text, prefix=PREFIX, footer=FOOTER, extra_segment="shorten")
    assert s.footer_added and s.shortened and s.segments == 1
    assert s.text.startswith(PREFIX) and s.text.endswith("... " + FOOTER)


def test_accept_pays_the_extra_segment() -> None:
    text = _text_of(160 - len(PREFIX) - 5)
    s = shape(text, prefix=PREFIX, footer=FOOTER, extra_segment="accept")
    assert s.footer_added and s.segments == 2 and s.extra_segments == 1


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=400),
    mode=st.sampled_from(["drop_footer", "shorten"]),
)
def test_footer_never_adds_a_segment_unless_accepted(text: str, mode: str) -> None:
    s = shape(text, prefix=PREFIX, footer=FOOTER, extra_segment=mode)  # type: ignore[arg-type]
    prefixed = text if has_prefix(text, PREFIX) else PREFIX + text
    assert s.segments == segment_count(s.text)
    assert s.segments <= segment_count(prefixed)  # the footer never costs a segment
    assert s.text.startswith(prefixed[: len(PREFIX)]) or s.shortened


@pytest.mark.parametrize(
    ("text", "joined"),
    [
        ("Reopens Fri 9am", f"Reopens Fri 9am\n{FOOTER}"),  # HTML-only notice, no full stop
        ("Reopens Fri 9am ", f"Reopens Fri 9am\n{FOOTER}"),
        ("Your hold is ready.", f"Your hold is ready. {FOOTER}"),
        ("Due 11/30!", f"Due 11/30! {FOOTER}"),
        ("Closed today\n", f"Closed today\n{FOOTER}"),
    ],
)
def test_footer_is_a_sentence_of_its_own(text: str, joined: str) -> None:
    s = shape(text, prefix=None, footer=FOOTER, extra_segment="accept")
    assert s.text == joined
