"""Email addresses <-> E.164 phone numbers (msisdn), pure functions.

The library system addresses a patron as ``<number>@<sms-domain>``; this module turns the local
part into an E.164 msisdn, refuses numbers that cannot receive SMS, and provides the reverse
mapping used for reply addresses plus the masked form used in logs.

Every ``AddressError.reason`` is sent verbatim in an SMTP ``553 5.1.3`` reply (RFC 5321 §4.2,
RFC 3463 §3.2 "bad destination mailbox address syntax"), so it is ASCII only, has no CR/LF and
never echoes more than a bounded, sanitised piece of the input.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

__all__ = [
    "AddressError",
    "SmsAddress",
    "canonical_address",
    "clear_number_cache",
    "e164_to_local_part",
    "format_msisdn",
    "is_msisdn",
    "local_part_to_e164",
    "mask_msisdn",
    "sender_matches",
    "split_address",
]

# Separators people and ILS templates put in numbers. RFC 5321 local parts cannot hold an
# unquoted space, and quoted local parts are refused as a relay trick (split_address), so
# spaces are not accepted here.
_SEPARATORS = re.compile(r"[-.()]")
_DIGITS_WITH_OPTIONAL_PLUS = re.compile(r"\+?[0-9]+")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

# E.164 allows at most 15 digits; a US caller may add an IDD prefix (011) and the NANP trunk
# prefix, so anything longer than this is not a phone number and is refused before parsing.
_MAX_DIGITS = 20
# How much of a sender-supplied value is echoed back in an SMTP reply.
_ECHO_LIMIT = 64

# Number types that can receive SMS. phonenumbers reports every NANP (US/CA) number as
# FIXED_LINE_OR_MOBILE because the numbering plan does not separate them, so that type must be
# accepted; everything else is refused with a reason naming the type.
_SMS_CAPABLE = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_TYPE_NAMES: dict[int, str] = {
    PhoneNumberType.FIXED_LINE: "a fixed-line (landline) number",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOIP: "a VoIP number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal (forwarding) number",
    PhoneNumberType.PAGER: "a pager number",
    PhoneNumberType.UAN: "a universal access (company) number",
    PhoneNumberType.VOICEMAIL: "a voicemail access number",
    PhoneNumberType.UNKNOWN: "a number of unknown type",
}


class AddressError(ValueError):
    """An address the bridge refuses; ``reason`` tells the sender what to fix (ASCII, one line)."""

    def __init__(self, reason: str) -> None:
        self.reason = _smtp_safe(reason, limit=400)
        super().__init__(self.reason)


def _smtp_safe(text: str, *, limit: int) -> str:
    """Printable ASCII only, at most ``limit`` characters: safe inside one SMTP reply line."""
    # Printable ASCII already (the usual case: an ILS address): str.isprintable on an ASCII
    # string is exactly " " to "~", checked in C rather than per character here.
    if text.isascii() and text.isprintable():
        cleaned = text
    else:
        cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3] + "..."
    return cleaned


def _echo(value: str) -> str:
    return _smtp_safe(value, limit=_ECHO_LIMIT)


def _example_local_part(region: str) -> str:
    """A national-format example number for ``region`` (digits only), for error hints."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    if example is None:
        example = phonenumbers.example_number(region)
    if example is None:
        return "the full number with + and the country code"
    return phonenumbers.national_significant_number(example)


def _parse_or_none(number: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(number, region)
    except NumberParseException:
        return None


def _check_region(region: str) -> None:
    # A bad region is a configuration error, not the sender's: it must not become a 553.
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown phone number region {region!r}")


# Readings of recipient local parts kept between RCPTs: the same few thousand patrons get a
# library's notices every day, and one reading costs about 50 us of phonenumbers work on the
# event loop. Bounded (an LRU), and keyed by the exact local part and region, since the
# answer (the E.164 number or the refusal's reason) is a pure function of those two.
_NUMBER_CACHE_MAX = 4096


def local_part_to_e164(local_part: str, region: str) -> str:
    """Turn an email local part such as ``202.555.0143`` into E.164 (``+12025550143``).

    Accepts digits with an optional leading ``+`` and the separators ``-`` ``.`` ``(`` ``)``.
    Numbers without ``+`` are read in ``region`` (so a national trunk prefix or an IDD prefix
    such as US ``011`` works). When that reading is not a valid number but the digits are a
    valid number once read as ``+<digits>`` (a reply address from ``e164_to_local_part`` for a
    foreign patron, e.g. ``447400123456``) or after an IDD prefix (``00``), that reading is
    used: the readings of :func:`canonical_address`.

    Raises ``AddressError`` for anything that is not a valid number able to receive SMS, and
    ``ValueError`` when ``region`` is not a region phonenumbers knows (a configuration error).
    """
    e164, reason = _e164_or_reason(local_part, region)
    if e164 is None:
        raise AddressError(reason)
    return e164


def clear_number_cache() -> None:
    """Forget the readings local_part_to_e164 and canonical_address keep (on a
    configuration reload)."""
    _e164_or_reason.cache_clear()
    _canonical_kept.cache_clear()


@functools.lru_cache(maxsize=_NUMBER_CACHE_MAX)
def _e164_or_reason(local_part: str, region: str) -> tuple[str | None, str]:
    """local_part_to_e164's answer: (E.164, "") or (None, the AddressError's reason). A
    ValueError (unknown region) propagates and is not kept."""
    try:
        return _local_part_to_e164(local_part, region), ""
    except AddressError as exc:
        return None, exc.reason


def _local_part_to_e164(local_part: str, region: str) -> str:
    _check_region(region)
    shown = _echo(local_part)
    if local_part == "":
        raise AddressError("the recipient has no phone number before the @")
    # Reject letters before parsing: phonenumbers maps keypad letters to digits, so
    # "1-800-FLOWERS" would otherwise parse as a valid (toll-free) number.
    if any(ch.isalpha() for ch in local_part):
        raise AddressError(
            f"{shown} contains letters; use only digits, e.g. {_example_local_part(region)}"
        )
    compact = _SEPARATORS.sub("", local_part)
    if _DIGITS_WITH_OPTIONAL_PLUS.fullmatch(compact) is None:
        raise AddressError(
            f"{shown} is not a phone number; use only digits, an optional leading +, "
            f"and - . ( ) as separators"
        )
    digits = compact.lstrip("+")
    if len(digits) > _MAX_DIGITS:
        raise AddressError(f"{shown} has too many digits for a phone number")

    # The one normalisation every number goes through (canonical_address): the same readings
    # as a patron's number arriving over SMPP, so an opt-out recorded from a reply matches the
    # number the library's notices are addressed to.
    canonical, number = _canonical(compact, region)
    if not canonical.is_e164 or number is None:
        raise AddressError(
            _invalid_reason(shown, _parse_or_none(compact, region), region, compact.startswith("+"))
        )
    number_type = phonenumbers.number_type(number)
    if number_type not in _SMS_CAPABLE:
        kind = _TYPE_NAMES.get(number_type, _TYPE_NAMES[PhoneNumberType.UNKNOWN])
        raise AddressError(f"{shown} is {kind}, which cannot receive text messages")
    return canonical.value


def _invalid_reason(
    shown: str, number: phonenumbers.PhoneNumber | None, region: str, international: bool
) -> str:
    hint = f"use the full number, e.g. {_example_local_part(region)}"
    if number is None and international:
        return f"{shown} does not start with a valid country code; {hint}"
    if number is not None:
        possible = phonenumbers.is_possible_number_with_reason(number)
        if possible == phonenumbers.ValidationResult.TOO_SHORT:
            return f"{shown} is too short to be a phone number for region {region}; {hint}"
        if possible == phonenumbers.ValidationResult.TOO_LONG:
            return f"{shown} is too long to be a phone number for region {region}; {hint}"
        if possible == phonenumbers.ValidationResult.INVALID_COUNTRY_CODE:
            return f"{shown} does not start with a valid country code; {hint}"
    return f"{shown} is not a valid phone number for region {region}; {hint}"


def mask_msisdn(e164: str) -> str:
    """Mask a number for logs: ``+12025550143`` -> ``+1********43``.

    Format: ``+``, the country calling code, one ``*`` per hidden digit, then the last two
    digits. Patron numbers are personal data (library patron privacy), so nothing but the
    country code and the last two digits is ever shown; input that does not start with ``+``
    and a calling code keeps only its last two digits, and a number of four digits or fewer
    (after the calling code) is masked entirely.
    Never raises: it is called while logging.
    """
    digits = "".join(ch for ch in e164 if "0" <= ch <= "9")
    country = _country_code(digits) if e164.startswith("+") else ""
    if country:
        prefix, rest = "+" + country, digits[len(country) :]
    else:
        # Without a recognised country code the leading digits may belong to the subscriber
        # number, so nothing is shown before the last two digits.
        prefix, rest = "", digits
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 2) + rest[-2:]


def _country_code(digits: str) -> str:
    """The calling code that starts ``digits``, or "". E.164 country codes are a prefix code
    (ITU-T E.164 §6.2.1), so at most one of the first one, two or three digits is one. A
    dictionary lookup, not phonenumbers.parse: this runs for every log line that names a
    number, and a full parse costs tens of microseconds."""
    for n in (1, 2, 3):
        if len(digits) > n and int(digits[:n]) in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            return digits[:n]
    return ""


def format_msisdn(e164: str) -> str:
    """Human international format for staff email: ``+12025550143`` -> ``+1 202-555-0143``.

    Display only: a value phonenumbers cannot parse is returned unchanged.
    """
    parsed = _parse_or_none(e164, None)
    if parsed is None:
        return e164
    return phonenumbers.format_number(parsed, PhoneNumberFormat.INTERNATIONAL)


def e164_to_local_part(e164: str) -> str:
    """Digits of an E.164 number for reply addresses: ``+12025550143`` -> ``12025550143``.

    ``local_part_to_e164`` maps the result back to the same number (it falls back to the
    international reading when the digits are not a valid national number).
    Raises ``ValueError`` when ``e164`` is not ``+`` followed by 2 to 15 digits.
    """
    if _E164.fullmatch(e164) is None:
        raise ValueError(f"not an E.164 number: {_echo(e164)!r}")
    return e164[1:]


# Whitespace (the same characters as str.isspace) or an angle bracket.
_SPACE_OR_ANGLE = re.compile(r"[\s<>]")


def split_address(addr: str) -> tuple[str, str]:
    """Split an envelope address into (local part, lower-cased domain).

    Surrounding whitespace and one pair of angle brackets are removed. Refused with
    ``AddressError``: no ``@``, an empty local part or domain, and the relay tricks that
    could make a gateway forward mail elsewhere: source routes (``@a,@b:user@dom``,
    RFC 5321 §4.1.2 / Appendix C), the ``%`` hack (``user%other@dom``), UUCP bang paths
    (``host!user@dom``) and quoted local parts (``"x"@dom``).
    """
    value = addr.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    shown = _echo(value)
    if value.startswith("@") or ":" in value or "," in value:
        raise AddressError(f"{shown}: source-routed addresses are not accepted; use user@domain")
    if '"' in value:
        raise AddressError(f"{shown}: quoted local parts are not accepted; use digits@domain")
    if "%" in value:
        raise AddressError(f"{shown}: '%' relay addresses are not accepted; use user@domain")
    if "!" in value:
        raise AddressError(f"{shown}: '!' bang-path addresses are not accepted; use user@domain")
    if value.count("@") != 1:
        raise AddressError(f"{shown} is not an address of the form user@domain")
    local, _, domain = value.partition("@")
    domain = domain.rstrip(".").lower()
    if local == "" or domain == "":
        raise AddressError(f"{shown} is not an address of the form user@domain")
    if _SPACE_OR_ANGLE.search(value) is not None:
        raise AddressError(f"{shown} contains spaces or angle brackets; use user@domain")
    return local, domain


# Compiled once per pattern: every MAIL matches the sender against its tenant's patterns, and
# the patterns only change with the configuration (a handful per tenant).
@functools.lru_cache(maxsize=256)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Only '*' is a wildcard; everything else (including fnmatch's '?' and '[...]') is literal.
    # '*' never matches '@', so '*@lib.example.org' cannot be satisfied by
    # 'x@evil.example@lib.example.org'-style senders.
    parts = [re.escape(piece) for piece in pattern.split("*")]
    return re.compile("[^@]*".join(parts), re.IGNORECASE)


def sender_matches(pattern: str, sender: str) -> bool:
    """Whether an envelope sender matches a pattern such as ``*@lib.example.org``.

    Case-insensitive; ``*`` matches any run of characters except ``@``; the pattern ``*``
    alone matches every sender (including the null sender). Angle brackets and surrounding
    whitespace around the sender are ignored.
    """
    pattern = pattern.strip()
    if pattern == "*":
        return True
    value = sender.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return _pattern_regex(pattern).fullmatch(value) is not None


# ============================================================================================
# Sending and receiving numbers on the SMPP side: one canonical form
#
# The same number reaches the bridge written many ways: the configuration says "+12025550199"
# or "12025550199", one SMSC sends a patron's STOP to "12025550100" with TON 1 (international),
# another to "2025550100" with TON 2 (national) or TON 0 (unknown), some with an IDD prefix
# ("0012025550100", US "01112025550100"), a few with spaces. An opt-out stored under one
# spelling and looked up under another is an opt-out not honoured, so every number goes through
# `canonical_address` before it is stored, compared or looked up (ARCHITECTURE.md principle 13).

AddressKind = Literal["e164", "short_code", "alphanumeric", "other"]

# SMPP 3.4 §5.2.5: type of number.
TON_UNKNOWN = 0
TON_INTERNATIONAL = 1
TON_NATIONAL = 2
TON_ALPHANUMERIC = 5

# Separators an SMSC or a configuration may put inside a number.
_NUMBER_SEPARATORS = re.compile(r"[\s\-.()/]")
# Short codes are 3 to 8 digits in the countries that have them (US/CA: 5-6; some European
# networks: 3-4 or up to 8); they are not E.164 numbers and stay digits as given.
_SHORT_CODE = re.compile(r"[0-9]{3,8}")
# International (IDD) prefixes written in front of a country code: "00" (ITU-T E.164 Annex A
# recommends it; most of the world) and "011" (the NANP's). phonenumbers.parse already strips
# the prefix of the region it is given; these are tried as well because an SMSC abroad (or one
# configured for another region) uses its own.
_IDD_PREFIXES = ("00", "011")


@dataclass(frozen=True)
class SmsAddress:
    """A number (or sender id) in canonical form.

    ``value`` is what is stored, compared and looked up: E.164 (``+12025550143``) for a valid
    phone number, the digits of a short code, an alphanumeric sender id as given (case kept),
    or, for anything else (empty, ``1``, twenty digits), the value as the carrier gave it.
    ``kind`` keeps a sender id or a broken value from ever being taken for a number: only an
    ``e164`` address can be texted, opted out or matched to a patron.
    """

    value: str
    kind: AddressKind

    @property
    def is_e164(self) -> bool:
        return self.kind == "e164"

    @property
    def is_number(self) -> bool:
        """A number a patron can text to (E.164 or a short code)."""
        return self.kind in ("e164", "short_code")


def _printable(value: str) -> str:
    # A sender id is kept as given, except characters that could break a log line, a mail
    # header or the "|"-separated concatenation group key: those become "?".
    return "".join(ch if " " <= ch <= "~" and ch != "|" else "?" for ch in value)


# A valid reading of some digits: its E.164 form and the parsed number it came from, kept so
# that local_part_to_e164 can ask the number's type without parsing it again (phonenumbers'
# parse is the costliest step of a RCPT).
_Reading = tuple[str, phonenumbers.PhoneNumber]


def _valid_reading(text: str, region: str | None) -> _Reading | None:
    number = _parse_or_none(text, region)
    if number is None or not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), number


def _valid_e164(text: str, region: str | None) -> str | None:
    reading = _valid_reading(text, region)
    return None if reading is None else reading[0]


def _international(digits: str) -> _Reading | None:
    return _valid_reading("+" + digits, None) if digits[:1] not in ("", "0") else None


def _after_idd(digits: str) -> _Reading | None:
    for prefix in _IDD_PREFIXES:
        if digits.startswith(prefix) and len(digits) > len(prefix):
            found = _international(digits[len(prefix) :])
            if found is not None:
                return found
    return None


def _same_country(number: phonenumbers.PhoneNumber, region: str) -> bool:
    return bool(number.country_code == phonenumbers.country_code_for_region(region))


def canonical_address(raw: str, region: str, *, ton: int | None = None) -> SmsAddress:
    """The canonical form of a sending or receiving number, or of a sender id (pure).

    ``region`` (ISO 3166, e.g. ``US``) reads national forms; ``ton`` is the SMPP type of number
    the value came with (§5.2.5), None for a configured value. Readings are tried in an order
    that depends on the TON:

    - TON 5 (alphanumeric), or any value with letters: an alphanumeric sender id, kept as given;
    - a leading ``+``: international; then after an IDD prefix (``+00...``);
    - TON 1 (international): ``+<digits>``, then after an IDD prefix, then national in
      ``region`` (some SMSCs flag national numbers as international); the first valid wins;
    - TON 0 (unknown), 2 (national), others, or None (a configured or stored value): national
      in ``region`` (which also strips the region's own trunk and IDD prefixes) and
      ``+<digits>``; when both are valid numbers and differ, the one in the region's country
      wins; when neither is, the digits after an IDD prefix (``00``/``011``).

    Digits that are no valid number are a short code when they are 3 to 8 digits without
    ``+``; anything else (empty, ``1``, twenty digits, symbols) is kind ``other``, value as
    given. Raises ValueError only for an unknown ``region`` (a configuration error).
    """
    return _canonical_kept(raw, region, ton)


# Every delivery receipt and patron reply names the patron's number, read here on the event
# loop (about 25 µs of phonenumbers work a reading); the same patrons' receipts come
# every night. Bounded and keyed by everything the answer depends on, like _e164_or_reason.
@functools.lru_cache(maxsize=_NUMBER_CACHE_MAX)
def _canonical_kept(raw: str, region: str, ton: int | None) -> SmsAddress:
    return _canonical(raw, region, ton)[0]


def _canonical(
    raw: str, region: str, ton: int | None = None
) -> tuple[SmsAddress, phonenumbers.PhoneNumber | None]:
    """canonical_address, and the parsed number when the value is E.164."""
    _check_region(region)
    stripped = raw.strip()
    if ton == TON_ALPHANUMERIC or any(ch.isalpha() for ch in stripped):
        return SmsAddress(_printable(stripped), "alphanumeric"), None
    compact = _NUMBER_SEPARATORS.sub("", stripped)
    plus = compact.startswith("+")
    digits = compact[1:] if plus else compact
    if not digits.isascii() or not digits.isdigit() or len(digits) > _MAX_DIGITS:
        return SmsAddress(_printable(stripped), "other"), None
    found: _Reading | None
    if plus:
        found = _international(digits) or _after_idd(digits)
    elif ton == TON_INTERNATIONAL:
        found = _international(digits) or _after_idd(digits) or _valid_reading(digits, region)
    else:
        national = _valid_reading(digits, region)
        home = str(phonenumbers.country_code_for_region(region))
        if national and not digits.startswith(home):
            # The "+<digits>" reading could only win by being in the region's own country,
            # i.e. by starting with its calling code (calling codes are prefix-free, ITU-T
            # E.164 §6.2.1); these digits do not, so the national reading stands, and the
            # other one (a second phonenumbers parse, the costliest step of a RCPT) is not
            # made.
            return SmsAddress(national[0], "e164"), national[1]
        international = _international(digits)
        if national and international and national[0] != international[0]:
            # Both readings are numbers: "2015550100" is a US number and an Egyptian one,
            # "4915123456789" a German number with and without its country code. The reading
            # in the region's own country wins: a library's patrons and its own number are
            # local, and digits that start with the region's country code include it.
            found = international if _same_country(international[1], region) else national
        else:
            found = national or international or _after_idd(digits)
    if found is not None:
        return SmsAddress(found[0], "e164"), found[1]
    if not plus and _SHORT_CODE.fullmatch(digits):
        return SmsAddress(digits, "short_code"), None
    return SmsAddress(_printable(stripped), "other"), None


def is_msisdn(value: str) -> bool:
    """Whether a stored value is a canonical E.164 number (something that can be texted and
    opted out), as opposed to a short code, a sender id or a value no number could be read
    from. Canonical E.164 is the only form that starts with '+'."""
    return _E164.fullmatch(value) is not None and _valid_e164(value, None) == value
