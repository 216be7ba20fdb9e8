"""Parsing cost: every input within the bounds parses in time linear in its size, and inputs over
the bounds are refused early with a reason (bridge.emailparse, ParseLimits).

The first tests are the probe inputs that held the event loop for seconds to minutes; each of them
ran for well over the budget asserted here before parsing was made linear. Times are CPU time of
this thread, with budgets far above what the parse needs (a loaded 2-core CI box included) and far
below what a quadratic path takes at these sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge import defaults
from bridge.emailparse import (
    NoTextError,
    NoticeLimitError,
    ParseLimits,
    html_to_text,
    parse_notice,
)

T = TypeVar("T")

HEAD = (
    b"From: Riverside Library <circ@riverside.example.org>\r\n"
    b"To: 2025550143@sms.example.org\r\nSubject: Notice\r\nMIME-Version: 1.0\r\n"
)


def html_mail(html: str) -> bytes:
    return HEAD + b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()


def plain_mail(text: str, head: bytes = HEAD) -> bytes:
    return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()


def cpu(fn: Callable[[], T]) -> tuple[T | BaseException, float]:
    start = time.thread_time()
    try:
        result: T | BaseException = fn()
    except (NoTextError, RecursionError) as exc:
        result = exc
    return result, time.thread_time() - start


def budget(size: int) -> float:
    """CPU seconds allowed for an input of `size` bytes: a fixed part plus 5 us a byte, ~10x
    the slowest linear path measured (HTML of one-character tokens, ~0.5 us a byte)."""
    return 0.25 + 5e-6 * size


# ------------------------------------------------------------------------------------------
# The probe inputs (issue 14): each used to take 10 s to 180 s.


def test_nested_blockquotes_are_refused_quickly() -> None:
    # 3,000 unclosed <blockquote> lines, 45 KB: 107 s before (each close re-rendered its contents).
    raw = html_mail("<blockquote>x\n" * 3000)
    result, took = cpu(lambda: parse_notice(raw))
    assert isinstance(result, NoticeLimitError), result
    assert "<blockquote>" in result.reason and "50 levels" in result.reason
    assert took < 0.5


def test_blockquotes_within_the_limit_render_in_linear_time() -> None:
    # A guard for the one-pass quote renderer (the old one re-rendered a quote's contents at
    # every enclosing level: depth x size, about 3 s here, inside this generous budget).
    depth = defaults.PARSE_MAX_HTML_QUOTE_DEPTH
    html = "<blockquote>x\n" * depth + "Your hold is ready.<br>" * 60_000
    text, took = cpu(lambda: html_to_text(html))
    assert isinstance(text, str) and text.startswith("> x\n>\n> > x")
    assert took < budget(len(html))


def test_unterminated_start_tags_are_linear() -> None:
    # "<a" x 40,000: 13.6 s before (html.parser's close() rescanned the rest per "<a").
    raw = html_mail("<p>Hold ready.</p>" + "<a" * 40_000)
    result, took = cpu(lambda: parse_notice(raw))
    assert not isinstance(result, BaseException) and result.text == "Hold ready."
    assert took < 0.5


def test_unterminated_comments_are_linear() -> None:
    # "<!--" x 100,000: 180 s before.
    raw = html_mail("<p>Hold ready.</p>" + "<!--" * 100_000)
    result, took = cpu(lambda: parse_notice(raw))
    assert not isinstance(result, BaseException) and result.text == "Hold ready."
    assert took < 0.5


def test_huge_folded_display_name_is_refused_before_parsing() -> None:
    # A From display name folded over 16,000 lines (48 KB and more): 9.9 s in the stdlib's
    # structured header parser; now refused on its length before any parser sees it.
    name = b"\r\n".join(b" word" for _ in range(16_000))
    raw = b'From: "Big' + name + b'" <circ@riverside.example.org>\r\n' + HEAD[HEAD.index(b"To:") :]
    raw += b"\r\nHold ready.\r\n"
    result, took = cpu(lambda: parse_notice(raw))
    assert isinstance(result, NoticeLimitError), result
    assert result.reason.startswith("the From header field is ")
    assert "shorten it" in result.reason
    assert took < 0.5


def test_body_repeating_the_senders_name_is_linear() -> None:
    # Every line equal to the From display name made the signature check rescan the rest:
    # quadratic (100 KB took 16 s; these 450 KB, 9.7 s of CPU).
    raw = plain_mail("Hello.\n" + "Riverside Library\n" * 25_000)
    result, took = cpu(lambda: parse_notice(raw))
    assert not isinstance(result, BaseException)
    assert took < budget(len(raw))


def test_deep_multipart_nesting_is_refused_before_parsing() -> None:
    # The stdlib feed parser checks every line against every open boundary: 100 nested
    # multiparts and 300,000 lines took 13 s.
    depth = 100
    parts = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    body = b"--b%d\r\nContent-Type: text/plain\r\n\r\n" % depth + b"x\r\n" * 300_000
    raw = (
        HEAD
        + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        + parts
        + body
        + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth + 1)))
    )
    result, took = cpu(lambda: parse_notice(raw))
    assert isinstance(result, NoticeLimitError), result
    assert "multipart sections" in result.reason
    assert took < 0.5


@pytest.mark.parametrize("piece", ["< ", "<p>", "<br>", "x\n", "<blockquote></blockquote>"])
def test_notices_small_enough_to_parse_inline_take_milliseconds(piece: str) -> None:
    # Intake parses these on the event loop (defaults.PARSE_INLINE_MAX_BYTES): their worst case
    # must stay around the 5 ms a worker thread may hold the GIL for anyway.
    head = html_mail("")
    raw = head + (piece * 2000).encode()[: defaults.PARSE_INLINE_MAX_BYTES - len(head)]
    parse_notice(raw)  # warm caches
    took = min(cpu(lambda: parse_notice(raw))[1] for _ in range(5))
    assert took < 0.02


# ------------------------------------------------------------------------------------------
# The other bounds: each refusal names the limit and what to change.


def test_message_over_the_size_limit_is_refused_as_too_big() -> None:
    raw = plain_mail("x" * 2000)
    with pytest.raises(NoticeLimitError) as info:
        parse_notice(raw, limits=ParseLimits(max_bytes=1000))
    assert info.value.status == "5.3.4"
    assert "over this bridge's limit of 1000" in info.value.reason


def test_header_section_over_the_limit_is_refused() -> None:
    head = HEAD + b"".join(b"X-Trace-%d: %s\r\n" % (i, b"y" * 900) for i in range(400))
    with pytest.raises(NoticeLimitError) as info:
        parse_notice(plain_mail("Hold ready.", head))
    assert info.value.reason.startswith("the header section is ")
    assert info.value.status == "5.6.0"


def test_too_many_mime_parts_are_refused() -> None:
    count = defaults.PARSE_MAX_MIME_PARTS + 1
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(count))
    raw = HEAD + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + parts + b"--b--\r\n"
    with pytest.raises(NoticeLimitError) as info:
        parse_notice(raw)
    assert f"more than {defaults.PARSE_MAX_MIME_PARTS} MIME parts" in info.value.reason


def test_notice_within_every_bound_still_parses() -> None:
    depth = defaults.PARSE_MAX_MULTIPARTS - 1
    parts = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
        for i in range(depth)
    )
    body = b"--b%d\r\nContent-Type: text/plain\r\n\r\nHold ready.\r\n" % depth
    raw = (
        HEAD.replace(b"Subject: Notice", b"Subject: " + b"n" * 20_000)
        + b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
        + parts
        + body
        + b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth + 1)))
    )
    assert parse_notice(raw).text == "Hold ready."


# ------------------------------------------------------------------------------------------
# Fuzzing: pathological repetitions of the constructs parsers trip on, at sizes where a
# quadratic path costs seconds to minutes, must stay within a budget linear in the size.

HTML_PIECES = [
    "<a", "<a ", '<a x=">" ', "<a b=\"", "='", "=", "<!--", "-->", "--!>", "<!", "<!x", "<?",
    "</", "</a", "<![CDATA[", "]]>", "<![if !mso]>", ">", "<", "< ", "&", "&#", "&#x", "&amp",
    "<blockquote>", "</blockquote>", "<p>", "</p>", "<br>", "<pre>", "<td>", "<div>", "<script>",
    "</script", "<style>", "<head>", "<body>", "x", " ", "\n", "\r", '"', "'", "/", "/>",
]  # fmt: skip


@given(
    pieces=st.lists(st.sampled_from(HTML_PIECES), min_size=1, max_size=4),
    repeat=st.integers(min_value=1_000, max_value=40_000),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_pathological_html_is_linear(pieces: list[str], repeat: int) -> None:
    html = ("".join(pieces) * repeat)[:400_000]
    raw = html_mail(html)
    result, took = cpu(lambda: parse_notice(raw))
    assert not isinstance(result, RecursionError)
    assert took < budget(len(raw)), f"{took:.2f} s for {pieces!r} x {repeat}"


HEADER_PIECES = [
    b" a", b"\r\n ", b"\r\n\t", b'"', b"\\", b"(", b")", b"<", b">", b"@", b",", b";", b":",
    b"=?utf-8?q?a?=", b"=?x?b?!!?=", b" word", b".", b"[", b"]",
]  # fmt: skip
BODY_PIECES = [
    b"\r\n", b"x", b"--b\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n",
    b"Content-Type: text/html\r\n\r\n", b"--b--\r\n", b"=\r\n", b"=3D", b"> ", b"-- \r\n",
    b"On Mon, Ann wrote:\r\n", b"From: a\r\nSent: b\r\n", b"Ann\r\n", b"Sent from my phone\r\n",
]  # fmt: skip


@given(
    header=st.sampled_from([b"From", b"To", b"Subject", b"References", b"Content-Type"]),
    header_pieces=st.lists(st.sampled_from(HEADER_PIECES), min_size=1, max_size=4),
    header_repeat=st.integers(min_value=1, max_value=1_500),
    body_pieces=st.lists(st.sampled_from(BODY_PIECES), min_size=1, max_size=4),
    body_repeat=st.integers(min_value=1, max_value=30_000),
)
# The known quadratic shapes always run: body lines repeating the sender's name (signature
# check), multiparts nested in multiparts (feed parser), a From display name folded 16,000 times.
@example(
    header=b"Subject",
    header_pieces=[b"a"],
    header_repeat=1,
    body_pieces=[b"Ann\r\n"],
    body_repeat=30_000,
)
@example(
    header=b"Subject",
    header_pieces=[b"a"],
    header_repeat=1,
    body_pieces=[b"--b\r\n", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"],
    body_repeat=5_000,
)
@example(
    header=b"From",
    header_pieces=[b"\r\n", b" w"],
    header_repeat=16_000,
    body_pieces=[b"x"],
    body_repeat=1,
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_pathological_mime_is_linear(
    header: bytes,
    header_pieces: list[bytes],
    header_repeat: int,
    body_pieces: list[bytes],
    body_repeat: int,
) -> None:
    value = b"".join(header_pieces) * header_repeat
    raw = (
        b"From: Ann <ann@riverside.example.org>\r\nTo: 2025550143@sms.example.org\r\n"
        + header
        + b": "
        + value
        + b"\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nHold ready.\r\n"
        + b"".join(body_pieces) * body_repeat
    )
    result, took = cpu(lambda: parse_notice(raw))
    assert not isinstance(result, RecursionError)
    assert took < budget(len(raw)), f"{took:.2f} s for {header!r} {body_pieces!r}"
