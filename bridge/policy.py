"""Compliance policy as pure functions: keywords, quiet hours, frequency caps, duplicates, cost.

Nothing here does I/O or reads a clock: ``now`` is always a parameter, so the store, the SMTP
intake, the dispatcher and the MO router can apply the same rules and tests need no sleeping.

Why these rules exist (issue 5): US carriers and the CTIA Messaging Principles and Best
Practices require that STOP-style keywords opt a number out, that HELP answers with the program
name and contact, that confirmations say "Msg&data rates may apply", and that texts respect the
recipient's consent; the FCC's 2024 TCPA order (47 CFR 64.1200(a)(10)) names STOP, QUIT, END,
REVOKE, OPT OUT, CANCEL and UNSUBSCRIBE as words that revoke consent when sent as the reply.
Quiet hours, caps and duplicate suppression keep libraries from annoying patrons.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as pn_timezone

from bridge import defaults
from bridge.emailparse import TextOptions, normalise_text
from bridge.smpp.encoding import Coding, choose_coding, segment_count

__all__ = [
    "CostLint",
    "FrequencyCap",
    "KeywordAction",
    "KeywordMatch",
    "KeywordSet",
    "QuietHours",
    "cap_decision",
    "cost_lint",
    "duplicate_key",
    "help_text",
    "match_keyword",
    "match_optout_request",
    "optin_confirmation",
    "optout_confirmation",
    "quiet_until",
    "recipient_timezone",
    "validate_keywords",
    "validate_quiet_hours",
]

# ============================================================================================
# Keywords

KeywordAction = Literal["optout", "optin", "help", "custom"]

# Longest text worth normalising as a possible keyword: a keyword with generous decoration
# ("  'Opt-Out!!!'  "). Anything longer is a sentence, and skipping it bounds the work per MO.
_MAX_KEYWORD_TEXT: Final = 64


@dataclass(frozen=True)
class KeywordSet:
    """Keywords by action. Matching is case-insensitive; the listed spelling is canonical."""

    # CTIA's standard opt-out words plus the FCC 2024 list (which spells "OPT OUT" with a space;
    # match_keyword treats a space, hyphen or underscore inside a keyword as the same thing).
    optout: tuple[str, ...] = defaults.OPTOUT_KEYWORDS
    optin: tuple[str, ...] = defaults.OPTIN_KEYWORDS
    help: tuple[str, ...] = defaults.HELP_KEYWORDS
    # Tenant keywords forwarded to the library as tagged emails, e.g. ("RENEW",).
    custom: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeywordMatch:
    action: KeywordAction
    keyword: str  # the keyword exactly as listed in the KeywordSet (canonical spelling)


def _is_separator(ch: str) -> bool:
    # Space separators (Zs), dashes (Pd: "-", "‐", "–", "－" ...) and connectors (Pc: "_").
    return unicodedata.category(ch) in ("Zs", "Pd", "Pc") or ch in "\t\n\r"


def _is_edge_junk(ch: str) -> bool:
    # Surrounding decoration a patron (or a phone) adds: spaces, line breaks and other
    # controls, punctuation ("Stop.", "'STOP'", "¡STOP!") and symbols (":)", emoji).
    return unicodedata.category(ch)[0] in "ZCPS"


def _keyword_form(text: str) -> tuple[str, str] | None:
    """(spaced, squashed) comparison forms of a possible keyword, or None when empty.

    NFKC first: phones send fullwidth ("ＳＴＯＰ"), mathematical bold and ligature forms of
    plain letters. Format characters (Cf: zero-width spaces, bidi marks) are invisible and are
    dropped anywhere. ``spaced`` has each run of inner separators as one space; ``squashed`` has
    none, so "OPT OUT", "Opt-Out", "opt_out" and "OPTOUT" share one squashed form.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    start, end = 0, len(text)
    while start < end and _is_edge_junk(text[start]):
        start += 1
    while end > start and _is_edge_junk(text[end - 1]):
        end -= 1
    core = text[start:end].casefold()
    if not core:
        return None
    words = _split(core, _is_separator)
    return " ".join(words), "".join(words)


def _split(text: str, is_break: Callable[[str], bool]) -> list[str]:
    """The non-empty runs of ``text`` between characters for which ``is_break`` is true."""
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if is_break(ch):
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


def _listed(keywords: KeywordSet) -> list[tuple[KeywordAction, str]]:
    # Order decides conflicts: an opt-out must win over anything else a tenant configured
    # (failing to honour STOP is the violation that costs a sending number), then opt-in, help,
    # and custom keywords last.
    actions: list[tuple[KeywordAction, tuple[str, ...]]] = [
        ("optout", keywords.optout),
        ("optin", keywords.optin),
        ("help", keywords.help),
        ("custom", keywords.custom),
    ]
    return [(action, kw) for action, kws in actions for kw in kws]


def match_keyword(text: str, keywords: KeywordSet) -> KeywordMatch | None:
    """The keyword that ``text`` consists of, or None.

    The whole message must be one keyword: case-insensitive, NFKC-normalised, ignoring
    surrounding whitespace, punctuation and symbols ("Stop.", " STOP!!", "stop\\n", "'STOP'").
    "stop sending me these" is not a keyword: acting on a word inside a sentence would opt out
    patrons who wrote "don't stop my holds". Decision on inner separators: "OPT OUT", "opt_out"
    and "Opt-Out" match OPT-OUT, and "STOP ALL" matches STOPALL, because the FCC lists "opt out"
    with a space and phones autocorrect hyphens; when two listed keywords share the squashed
    form (OPTOUT, OPT-OUT) the one spelled like the message wins, else the first listed.
    Custom keywords follow the same exact-match rule.
    """
    if len(text) > _MAX_KEYWORD_TEXT:
        return None
    form = _keyword_form(text)
    if form is None:
        return None
    spaced, squashed = form
    first: KeywordMatch | None = None
    for action, kw in _listed(keywords):
        kw_form = _keyword_form(kw)
        if kw_form is None or kw_form[1] != squashed:
            continue
        if kw_form[0] == spaced:
            return KeywordMatch(action, kw)
        if first is None:
            first = KeywordMatch(action, kw)
    return first


# Words that add politeness or urgency but no meaning of their own to an opt-out request.
# Deliberately short: "it", "me", "texts", "the", "don't" are NOT here, so "cancel it" (maybe
# the hold), "stop texting me" and "don't stop" are not taken for opt-outs (they are forwarded
# to staff as replies).
OPTOUT_FILLER: Final = frozenset(
    {"please", "pls", "plz", "thanks", "thx", "ty", "now", "ok", "okay"}
)
# Two-word fillers, dropped as a pair only.
_FILLER_PAIRS: Final = (("thank", "you"),)


def _words(text: str) -> list[str]:
    """Casefolded words of ``text``: NFKC, format characters dropped, and every run of
    separators, punctuation and symbols (Z*, C*, P*, S*) is a word break."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text.casefold() if unicodedata.category(ch) != "Cf")
    return _split(text, _is_edge_junk)


def match_optout_request(text: str, keywords: KeywordSet) -> KeywordMatch | None:
    """An opt-out asked for in a few more words than the bare keyword, or None.

    The CTIA Messaging Principles and Best Practices ask that an opt-out be honoured when the
    consumer uses a keyword or natural language that reasonably conveys a wish to stop. The
    rule here is deliberately conservative, so that a patron writing *about* stopping something
    ("don't stop the renewal", "stop the hold") is not opted out: after punctuation and symbols
    are removed, the message (at most 64 characters) must consist only of

    - one opt-out keyword, possibly repeated ("stop stop", "STOP STOP STOP", "opt out opt out"),
    - and filler words that add no meaning: please, pls, plz, thanks, thank you, thx, ty, now,
      ok, okay ("stop please", "Please stop!", "STOP. Thank you", "stop now").

    Only opt-out keywords: START and HELP keep the exact-match rule of ``match_keyword`` (an
    opt-in must be unambiguous, and a HELP not recognised is still read by staff). Returns the
    keyword as listed, like ``match_keyword``.
    """
    if len(text) > _MAX_KEYWORD_TEXT:
        return None
    words = _words(text)
    kept: list[str] = []
    i = 0
    while i < len(words):
        if any(tuple(words[i : i + len(pair)]) == pair for pair in _FILLER_PAIRS):
            i += 2
            continue
        if words[i] not in OPTOUT_FILLER:
            kept.append(words[i])
        i += 1
    if not kept:
        return None
    # The shortest run of words the message repeats: ["opt", "out", "opt", "out"] -> "optout".
    for period in range(1, len(kept) + 1):
        if len(kept) % period == 0 and kept == kept[:period] * (len(kept) // period):
            break
    squashed = "".join(kept[:period])
    spaced = " ".join(kept[:period])
    first: KeywordMatch | None = None
    for kw in keywords.optout:
        form = _keyword_form(kw)
        if form is None or form[1] != squashed:
            continue
        if form[0] == spaced:
            return KeywordMatch("optout", kw)
        if first is None:
            first = KeywordMatch("optout", kw)
    return first


def validate_keywords(keywords: KeywordSet) -> None:
    """ValueError with a plain sentence when a keyword is blank or listed under two actions."""
    seen: dict[str, tuple[KeywordAction, str]] = {}
    for action, kw in _listed(keywords):
        form = _keyword_form(kw)
        if form is None:
            raise ValueError(f"the {action} keyword {kw!r} has no letters or digits")
        if len(kw) > _MAX_KEYWORD_TEXT:
            raise ValueError(
                f"the {action} keyword {kw!r} is longer than {_MAX_KEYWORD_TEXT} characters"
            )
        other = seen.get(form[1])
        if other is not None and other[0] != action:
            raise ValueError(
                f"the keyword {kw!r} is listed as {action} but {other[1]!r} is already"
                f" listed as {other[0]}; a reply can only mean one thing"
            )
        seen.setdefault(form[1], (action, kw))


# ============================================================================================
# Quiet hours


@dataclass(frozen=True)
class QuietHours:
    """No texts from ``start`` until ``end`` local time; start == end means no quiet hours."""

    start: str = "21:00"  # quiet from 21:00 ...
    end: str = "09:00"  # ... until 09:00, i.e. the sending window is 09:00-21:00
    timezone: str = "America/New_York"  # IANA name (zoneinfo)
    # Use the zone of the recipient's number when phonenumbers maps it to exactly one zone.
    use_recipient_timezone: bool = False


_HHMM: Final = re.compile(r"(\d{1,2}):(\d{2})")


def _parse_hhmm(value: str, what: str) -> time:
    m = _HHMM.fullmatch(value.strip())
    if m is None or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ValueError(
            f"quiet hours {what} {value!r} is not a time of day; write it as HH:MM"
            " (24-hour clock), for example 21:00"
        )
    return time(int(m.group(1)), int(m.group(2)))


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # ValueError: ZoneInfo rejects keys like "../etc/passwd" or absolute paths.
        raise ValueError(
            f"quiet hours time zone {name!r} is not a known IANA time zone name;"
            " use one like America/New_York or Europe/London"
        ) from None


def validate_quiet_hours(qh: QuietHours) -> None:
    """ValueError with a plain sentence for a badly written time or an unknown time zone."""
    _parse_hhmm(qh.start, "start")
    _parse_hhmm(qh.end, "end")
    _zone(qh.timezone)


def recipient_timezone(e164: str) -> str | None:
    """The IANA zone of an E.164 number when phonenumbers maps it to exactly one zone.

    phonenumbers' data (9.0.x) answers per prefix: +1 202 (Washington DC) gives only
    America/New_York and +1 310 only America/Los_Angeles, but a UK mobile (+44 7911) gives
    London, Guernsey, Isle of Man and Jersey, toll-free +1 800 dozens, and an invalid number
    "Etc/Unknown": those are ambiguous or unknown, so None (the tenant's zone applies).
    """
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    zones = pn_timezone.time_zones_for_number(number)
    if len(zones) != 1 or zones[0] == "Etc/Unknown":
        return None
    return zones[0]


def _effective_zone(qh: QuietHours, e164: str | None) -> ZoneInfo:
    if qh.use_recipient_timezone and e164:
        name = recipient_timezone(e164)
        if name is not None:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                # phonenumbers' zone list can be newer than the system tzdata: fall back.
                pass
    return _zone(qh.timezone)


def _wall_key(dt: datetime) -> tuple[date, time]:
    return dt.date(), dt.time().replace(tzinfo=None, fold=0)


def _first_instant_at_or_after(day: date, at: time, zone: ZoneInfo) -> list[datetime]:
    """UTC instants at which the local wall clock shows ``day`` ``at`` (or first passes it).

    Normally one instant. On a fall-back day a wall time in the repeated hour happens twice
    (PEP 495 fold 0 and 1): both are returned. On a spring-forward day a wall time in the gap
    never happens: the window opens at the transition itself, the first instant whose wall
    time is later than ``at``, found by bisection (zoneinfo exposes no transition list).
    """
    target = (day, at)
    out: list[datetime] = []
    for fold in (0, 1):
        local = datetime.combine(day, at, tzinfo=zone).replace(fold=fold)
        utc = local.astimezone(UTC)
        if _wall_key(utc.astimezone(zone)) == target:
            out.append(utc)
    if out:
        return sorted(set(out))
    # In a gap: fold=1 maps with the offset after the change (earlier instant), fold=0 with the
    # offset before (later instant); the transition lies between them.
    lo = datetime.combine(day, at, tzinfo=zone).replace(fold=1).astimezone(UTC)
    hi = datetime.combine(day, at, tzinfo=zone).replace(fold=0).astimezone(UTC)
    if lo > hi:
        lo, hi = hi, lo
    lo_s, hi_s = math.floor(lo.timestamp()), math.ceil(hi.timestamp())
    while lo_s < hi_s:
        mid = (lo_s + hi_s) // 2
        wall = _wall_key(datetime.fromtimestamp(mid, UTC).astimezone(zone))
        if wall >= target:
            hi_s = mid
        else:
            lo_s = mid + 1
    return [datetime.fromtimestamp(lo_s, UTC)]


def _is_quiet(t: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:  # e.g. quiet 12:00-13:00, same day
        return start <= t < end
    return t >= start or t < end  # crosses midnight, e.g. 21:00-09:00


def quiet_until(now: datetime, qh: QuietHours, e164: str | None = None) -> datetime | None:
    """None when sending is allowed at ``now``; else the UTC instant the window next opens.

    A sending window that lies wholly inside a spring-forward gap does not exist that day:
    the opening found is then itself quiet, and the next day's opening is the answer.
    """
    opens = _quiet_until_once(now, qh, e164)
    for _ in range(3):
        if opens is None:
            return None
        again = _quiet_until_once(opens, qh, e164)
        if again is None:
            return opens
        opens = again
    return opens


def _quiet_until_once(now: datetime, qh: QuietHours, e164: str | None) -> datetime | None:
    """None when sending is allowed at ``now``; else the UTC instant the window next opens.

    ``now`` must be timezone-aware. Quiet means start <= local time < end (across midnight when
    start > end). The opening is ``end`` on the local calendar, so a 09:00 opening on a DST
    change day is still 09:00 local (zoneinfo does the offset). A result is always later than
    ``now`` and at most one wall-clock day ahead (25 real hours across a fall-back night).
    Raises ValueError for a naive ``now`` or invalid quiet hours.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("quiet_until needs a timezone-aware datetime for now")
    start = _parse_hhmm(qh.start, "start")
    end = _parse_hhmm(qh.end, "end")
    zone = _effective_zone(qh, e164)
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None, fold=0)
    if not _is_quiet(t, start, end):
        return None
    day = local.date()
    if start > end and t >= start:
        day += timedelta(days=1)  # evening part of an overnight window: opens tomorrow
    now_utc = now.astimezone(UTC)
    # Two days of candidates: when the repeated fall-back hour puts ``now`` after the first
    # occurrence of ``end``, the second occurrence (or, defensively, the next day) is the answer.
    for d in (day, day + timedelta(days=1)):
        later = [c for c in _first_instant_at_or_after(d, end, zone) if c > now_utc]
        if later:
            return later[0]
    raise AssertionError("unreachable: a quiet window always opens within two days")


# ============================================================================================
# Frequency caps


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max_messages`` texts per recipient per tenant in any ``per_seconds`` window."""

    max_messages: int
    per_seconds: float  # e.g. 3 per 86400
    mode: Literal["defer", "refuse"] = "defer"

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("a frequency cap must allow at least 1 message")
        if not (math.isfinite(self.per_seconds) and self.per_seconds > 0):
            raise ValueError("a frequency cap period must be a positive number of seconds")


def cap_decision(
    sent_times: Sequence[float], now: float, cap: FrequencyCap
) -> tuple[Literal["send", "defer", "refuse"], float]:
    """Apply a sliding-window cap; ``sent_times`` are epoch seconds of texts already submitted.

    The window is (now - per_seconds, now]: a text sent exactly ``per_seconds`` ago no longer
    counts. Times after ``now`` (clock skew between bridge nodes) count, to stay on the safe side.
    "send" -> (send, now); "refuse" -> (refuse, now); "defer" -> (defer, t) where t is when
    enough texts have left the window for one more: with exactly ``max_messages`` in the window
    that is when the oldest leaves; if the cap was lowered and more are in it, when the
    (n - max + 1)-th oldest leaves.
    """
    window_start = now - cap.per_seconds
    in_window = sorted(t for t in sent_times if t > window_start)
    if len(in_window) < cap.max_messages:
        return "send", now
    if cap.mode == "refuse":
        return "refuse", now
    return "defer", in_window[len(in_window) - cap.max_messages] + cap.per_seconds


# ============================================================================================
# Duplicate suppression

# Versioned so that a change to the folding below cannot silently collide with old keys.
_DUP_PREFIX: Final = "sms-bridge/duplicate/v1"
_json_str: Final = json.encoder.encode_basestring_ascii
_DUP_PREFIX_JSON: Final = _json_str(_DUP_PREFIX)


def duplicate_key(tenant_id: str, msisdn: str, text: str) -> str:
    """SHA-256 hex of tenant, number and folded text, for "same text, same number" checks.

    The ILS regenerates notices with a new Message-ID and sometimes different line breaks or
    capitalisation; folding (NFC, case-folded, whitespace runs as one space, trimmed) makes those
    the same key while any change of words gives a different one. JSON encoding of the parts
    keeps the boundaries unambiguous ("a","bc" differs from "ab","c").
    """
    return duplicate_key_of(tenant_id, msisdn, duplicate_words(text))


def duplicate_words(text: str) -> str:
    """The folded text duplicate_key hashes: computed once for a notice to many numbers."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def duplicate_key_of(tenant_id: str, msisdn: str, folded: str) -> str:
    """duplicate_key from the text already folded by duplicate_words."""
    # Byte for byte json.dumps([prefix, tenant, number, folded], ensure_ascii=True), the form
    # stored keys were made with, without the encoder's per-call set-up (once per text).
    payload = (
        f"[{_DUP_PREFIX_JSON}, {_json_str(tenant_id)}, {_json_str(msisdn.strip())},"
        f" {_json_str(folded)}]"
    )
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


# ============================================================================================
# Cost lint

_MAX_CULPRITS: Final = 10
# What the tenant's fold_accents option would do to the text (bridge.emailparse).
_FOLD_ALL: Final = TextOptions(map_punctuation=True, fold_accents=True)


@dataclass(frozen=True)
class CostLint:
    coding: Coding
    segments: int
    # Characters that forced UCS-2: deduplicated, in order of appearance, at most 10.
    culprits: tuple[str, ...]
    # Segments after folding punctuation and accents to GSM-7 (the tenant's fold_accents
    # option); None when the text is already GSM-7, or when folding cannot make it GSM-7
    # (emoji, non-Latin scripts), where the UCS-2 cost is simply the cost.
    gsm_segments: int | None


def cost_lint(text: str) -> CostLint:
    """How much ``text`` costs and why: one stray curly quote or "á" makes a whole notice UCS-2
    (70 instead of 160 characters per segment, 3GPP TS 23.038 §6.2.1), often doubling its cost."""
    coding = choose_coding(text)
    segments = segment_count(text, coding)
    if coding == "gsm7":
        return CostLint(coding=coding, segments=segments, culprits=(), gsm_segments=None)
    culprits: list[str] = []
    for ch in text:
        if ch not in culprits and choose_coding(ch) == "ucs2":
            culprits.append(ch)
            if len(culprits) == _MAX_CULPRITS:
                break
    folded = normalise_text(text, _FOLD_ALL)
    gsm_segments = segment_count(folded, "gsm7") if choose_coding(folded) == "gsm7" else None
    return CostLint(
        coding=coding, segments=segments, culprits=tuple(culprits), gsm_segments=gsm_segments
    )


# ============================================================================================
# Reply texts
#
# CTIA Messaging Principles and Best Practices (2023) §5: a HELP reply names the program and
# how to reach it and says how to opt out; opt-out and opt-in confirmations name the program;
# "Msg&data rates may apply" is the disclosure carriers audit for. Every template is pure ASCII
# so a program name of up to 30 GSM-7 characters keeps each reply in one 160-septet SMS.


def help_text(program: str, contact: str, optout_word: str = "STOP") -> str:
    """HELP reply: program, contact, rates disclosure, how to stop.

    One GSM-7 segment for a program name up to 30 and a contact up to 45 GSM-7 characters.
    """
    return f"{program}: Help: {contact}. Msg&data rates may apply. Reply {optout_word} to cancel."


def optout_confirmation(program: str, *, optin_word: str = "START", help_word: str = "HELP") -> str:
    """Reply to an opt-out keyword: the one text an opted-out number still receives."""
    return (
        f"{program}: You are unsubscribed and will get no more texts."
        f" Reply {optin_word} to resubscribe, {help_word} for help. Msg&data rates may apply."
    )


def optin_confirmation(
    program: str,
    *,
    help_word: str = "HELP",
    optout_word: str = "STOP",
    frequency: str = "Msg frequency varies",
) -> str:
    """Reply to an opt-in keyword: the welcome text (program, frequency, rates, HELP, STOP)."""
    return (
        f"{program}: Subscribed to library texts. {frequency}."
        f" Msg&data rates may apply. Reply {help_word} for help, {optout_word} to cancel."
    )
