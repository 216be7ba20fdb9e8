"""Per-library message shaping (pure): sender prefix and first-contact footer.

Patrons should see at a glance who is texting them and how to stop it; ILS templates often say
neither. The prefix names the library; the footer ("Reply STOP to opt out, HELP for help.")
goes on the first text a sending number sends to a patron. Neither may silently make a notice
cost one more segment: `extra_segment` decides what happens then, and the result says so for the
cost lint.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from bridge.smpp.encoding import ConcatMode, segment_count

ExtraSegment = Literal["drop_footer", "shorten", "accept"]

# What "shorten" cuts the notice down to make room, marked like encode_sms's truncation.
_ELLIPSIS = "..."


@dataclass(frozen=True)
class Shaped:
    text: str
    prefix_added: bool
    footer_added: bool
    segments: int
    base_segments: int  # what the notice alone would have cost
    shortened: bool

    @property
    def extra_segments(self) -> int:
        return self.segments - self.base_segments


def _letters(text: str) -> str:
    """Lower-case letters and digits only: how two prefixes are compared."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return re.sub(r"[^0-9a-z]+", "", folded.encode("ascii", "ignore").decode())


def has_prefix(text: str, prefix: str) -> bool:
    """True when the notice already starts with the library's name, ignoring case, spaces and
    punctuation ("Riverside Library: ..." and "RIVERSIDE LIBRARY - ..." both count)."""
    want = _letters(prefix)
    if not want:
        return True
    return _letters(text[: len(prefix) * 2 + 10]).startswith(want)


# A notice ending like this already closes its sentence, so a space is enough before the footer.
_SENTENCE_END = (".", "!", "?", ":", ";", ")", "]", '"', "'", "\u2026")


def join_footer(text: str, footer: str) -> str:
    """The notice, then the footer as a sentence of its own. HTML-only notices often end
    without a full stop ("Reopens Fri 9am"): a space alone would run the footer into the
    last sentence ("Reopens Fri 9am Reply STOP ..."), so a line break separates it; it costs
    one character, like the space."""
    body = text.rstrip(" ")
    if not body or body.endswith("\n"):
        sep = ""
    elif body.endswith(_SENTENCE_END):
        sep = " "
    else:
        sep = "\n"
    return f"{body}{sep}{footer}"


def shape(
    text: str,
    *,
    prefix: str | None,
    footer: str | None,
    extra_segment: ExtraSegment = "drop_footer",
    concat: ConcatMode = "udh8",
) -> Shaped:
    """Add the prefix (when missing) and the footer (when given), within the segment budget.

    The prefix is part of the library's identity and always stays. The footer is what gives
    way: with "drop_footer" it is left out when it would add a segment; with "shorten" the
    notice is cut (ending in "...") so prefix, text and footer fit the segments the prefixed
    notice needs anyway; with "accept" the extra segment is paid.
    """
    prefixed = text
    prefix_added = False
    if prefix and not has_prefix(text, prefix):
        prefixed = f"{prefix}{text}"
        prefix_added = True
    base = segment_count(text, concat=concat)
    with_prefix = segment_count(prefixed, concat=concat) if prefix_added else base
    if not footer:
        return Shaped(prefixed, prefix_added, False, with_prefix, base, False)
    full = join_footer(prefixed, footer)
    full_segments = segment_count(full, concat=concat)
    if full_segments <= with_prefix or extra_segment == "accept":
        return Shaped(full, prefix_added, True, full_segments, base, False)
    if extra_segment == "drop_footer":
        return Shaped(prefixed, prefix_added, False, with_prefix, base, False)
    # shorten: the longest cut of the notice that still fits with the footer
    budget = with_prefix
    lo, hi = 0, len(prefixed)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        candidate = join_footer(prefixed[:mid].rstrip() + _ELLIPSIS, footer)
        if segment_count(candidate, concat=concat) <= budget:
            lo = mid
        else:
            hi = mid - 1
    shortened = join_footer(prefixed[:lo].rstrip() + _ELLIPSIS, footer)
    return Shaped(
        shortened, prefix_added, True, segment_count(shortened, concat=concat), base, True
    )
