"""BridgeSMTP._getaddr reads the usual MAIL/RCPT path itself and leaves the rest to aiosmtpd:
both readings must agree on every input, accepted or refused."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smtp_intake import _PLAIN_PATH, BridgeSMTP


def _protocols(limit: int) -> tuple[BridgeSMTP, SMTP]:
    # _getaddr reads nothing of the instance but local_part_limit, so no server is needed.
    ours = BridgeSMTP.__new__(BridgeSMTP)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = limit
    return ours, theirs


def _reading(protocol: SMTP, arg: str) -> object:
    try:
        return protocol._getaddr(arg)
    except Exception as exc:  # aiosmtpd's parser fails on some inputs (e.g. a lone '"')
        return type(exc)


def _agree(arg: str, limit: int = 0) -> object:
    """Our reading of `arg` equals aiosmtpd's; where aiosmtpd's raises, ours says malformed
    (aiosmtpd then answers 553 5.1.3) instead."""
    ours, theirs = _protocols(limit)
    got = _reading(ours, arg)
    expected = _reading(theirs, arg)
    if isinstance(expected, type):
        expected = (None, None)
    assert got == expected, arg
    return got


@pytest.mark.parametrize(
    ("arg", "fast"),
    [
        ("<2025550143@sms.example.org>", True),
        ("<ils-notices@library.example.org> SIZE=2048 BODY=8BITMIME", True),
        ("<a.b+c@x-y.example>\tSMTPUTF8", True),
        ("<a@b>>x", True),
        ("<A@B.ORG>", True),
        ("<>", False),
        ("<a@b.org> (comment) SIZE=1", False),
        ('<"two words"@example.org>', False),
        ("<a@[192.0.2.1]>", False),
        ("<@relay.example:a@b.org>", False),
        ("<a..b@c>", False),
        ("<.a@c>", False),
        ("<a@b.>", False),
        ("<a@b@c>", False),
        ("<é@b.org>", False),
        (" <a@b.org>", False),
        ("a@b.org", False),
        ("<a@b.org", False),
        ("", False),
    ],
)
def test_known_paths_read_as_aiosmtpd_reads_them(arg: str, fast: bool) -> None:
    _agree(arg)
    assert (_PLAIN_PATH.fullmatch(arg) is not None) is fast


@pytest.mark.parametrize("arg", ['"', "é@", "\\@[@\x7fb<@", "é@[\t"])
def test_paths_aiosmtpd_cannot_read_are_malformed(arg: str) -> None:
    ours, theirs = _protocols(0)
    assert isinstance(_reading(theirs, arg), type)  # aiosmtpd's own reading raises
    assert ours._getaddr(arg) == (None, None)


def test_the_local_part_limit_still_applies() -> None:
    assert _agree("<abcdefgh@example.org>", limit=4) == (None, None)
    assert _agree("<abcd@example.org>", limit=4) == ("abcd@example.org", "")


_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_PIECES = [*_ATEXT, ".", "@", "<", ">", " ", "\t", "(", ")", '"', "\\", "[", "]", ":", ",", "é"]


@settings(max_examples=1500, deadline=None)
@given(
    local=st.text(alphabet=_PIECES, max_size=12),
    domain=st.text(alphabet=_PIECES, max_size=12),
    rest=st.text(alphabet=[*_PIECES, "S", "=", "1"], max_size=12),
    limit=st.sampled_from([0, 3, 64]),
)
def test_both_readings_agree_on_any_path(local: str, domain: str, rest: str, limit: int) -> None:
    _agree(f"<{local}@{domain}>{rest}", limit)


@settings(max_examples=500, deadline=None)
@given(arg=st.text(alphabet=_PIECES, max_size=30))
def test_both_readings_agree_on_any_text(arg: str) -> None:
    _agree(arg)


@settings(max_examples=1000, deadline=None)
@given(
    local=st.text(alphabet=[*_ATEXT, "."], min_size=1, max_size=16),
    domain=st.text(alphabet="ab09-.", min_size=1, max_size=16),
    rest=st.text(alphabet=' \tSIZE=1BODY8MT<>"', max_size=16),
)
def test_both_readings_agree_on_plain_looking_paths(local: str, domain: str, rest: str) -> None:
    # mostly paths _PLAIN_PATH takes, with the dots and hyphens in every odd place
    _agree(f"<{local}@{domain}>{rest}")
