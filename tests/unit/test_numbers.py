"""One canonical form for every sending and receiving number (issue 14): the normalisation
function, the property that a committed STOP matches every later notice however an SMSC writes
the numbers, config validation of source_addr, the opt-out request rule, and the migration of
numbers already stored (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import phonenumbers
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from bridge import addressing, policy
from bridge.addressing import SmsAddress, canonical_address
from bridge.config import Config, ConfigError, load_config_text
from bridge.inbound import _same_number, mo_addresses
from bridge.model import OptoutRecord
from bridge.smpp.pdu import DeliverSm
from bridge.store.migrations import MIGRATIONS, rekey
from bridge.store.pg_migrations import MIGRATIONS as PG_MIGRATIONS
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.conftest import BASE, merge, tenant
from tests.pg import create_database, drop_database, url_for

# --- canonical_address -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "ton", "expected"),
    [
        ("+12025550199", None, SmsAddress("+12025550199", "e164")),
        ("12025550199", None, SmsAddress("+12025550199", "e164")),
        ("2025550199", None, SmsAddress("+12025550199", "e164")),
        (" +1 202 555 0199 ", None, SmsAddress("+12025550199", "e164")),
        ("+1 (202) 555-0199", None, SmsAddress("+12025550199", "e164")),
        ("12025550100", 1, SmsAddress("+12025550100", "e164")),
        ("2025550100", 2, SmsAddress("+12025550100", "e164")),
        ("2025550100", 0, SmsAddress("+12025550100", "e164")),
        ("2025550100", 1, SmsAddress("+12025550100", "e164")),  # national flagged TON 1
        ("0012025550100", 0, SmsAddress("+12025550100", "e164")),
        ("01112025550100", 1, SmsAddress("+12025550100", "e164")),
        ("447400123456", 1, SmsAddress("+447400123456", "e164")),
        ("447400123456", 0, SmsAddress("+447400123456", "e164")),
        ("00447400123456", 0, SmsAddress("+447400123456", "e164")),
        ("011447400123456", 2, SmsAddress("+447400123456", "e164")),
        ("12345", 3, SmsAddress("12345", "short_code")),
        ("12345", None, SmsAddress("12345", "short_code")),
        # sender ids: as given, case kept, never a number, even when all digits
        ("EVILCORP", 5, SmsAddress("EVILCORP", "alphanumeric")),
        ("Library", None, SmsAddress("Library", "alphanumeric")),
        ("12345", 5, SmsAddress("12345", "alphanumeric")),
        ("A|B\x00", 5, SmsAddress("A?B?", "alphanumeric")),
        # no number can be read: as given
        ("", 0, SmsAddress("", "other")),
        ("1", 0, SmsAddress("1", "other")),
        ("1" * 20, 1, SmsAddress("1" * 20, "other")),
        ("+1", None, SmsAddress("+1", "other")),
        ("123456789", 0, SmsAddress("123456789", "other")),
        ("#123", 0, SmsAddress("#123", "other")),
    ],
)
def test_canonical_address(raw: str, ton: int | None, expected: SmsAddress) -> None:
    assert canonical_address(raw, "US", ton=ton) == expected


def test_canonical_address_refuses_an_unknown_region() -> None:
    with pytest.raises(ValueError, match="region"):
        canonical_address("12025550100", "XX")


def test_digits_that_read_as_two_numbers_read_as_the_regions_own() -> None:
    # "2015550100" is also valid as +20 15550100 (Egypt); "4915123456789" also as a German
    # national number. The reading in the region's country wins; TON 1 means international.
    assert canonical_address("2015550100", "US").value == "+12015550100"
    assert canonical_address("2015550100", "US", ton=0).value == "+12015550100"
    assert canonical_address("2015550100", "US", ton=1).value == "+2015550100"
    assert canonical_address("4915123456789", "DE").value == "+4915123456789"
    assert canonical_address("4915123456789", "DE", ton=0).value == "+4915123456789"


def test_national_forms_are_read_in_the_region_given() -> None:
    assert canonical_address("07400 123456", "GB", ton=2).value == "+447400123456"
    assert canonical_address("0012025550100", "GB", ton=0).value == "+12025550100"
    assert canonical_address("06 12 34 56 78", "FR").value == "+33612345678"


def test_is_msisdn() -> None:
    assert addressing.is_msisdn("+12025550143")
    for value in ("12025550143", "EVILCORP", "", "1", "+1", "12345", "+12025550143 "):
        assert not addressing.is_msisdn(value)


def test_receipt_patron_matching() -> None:
    assert _same_number("+12025550143", "+12025550143")
    assert _same_number("+12025550143", "12025550143")  # held before canonical numbers
    assert _same_number("+12025550143", "2025550143")
    assert not _same_number("+12025550143", "")
    assert not _same_number("+12025550143", "3")  # a stray digit is no patron
    assert not _same_number("+12025550143", "EVILCORP")


# --- the property: a committed STOP stops every later text --------------------------------------

REGIONS = ("US", "CA", "GB", "DE", "FR", "AU", "IN", "BR", "MX", "NL")


def _pool(region: str) -> list[phonenumbers.PhoneNumber]:
    """Valid mobile numbers of a region: its example number with the last two digits varied."""
    example = phonenumbers.example_number_for_type(region, PhoneNumberType.MOBILE)
    assert example is not None
    nsn = phonenumbers.national_significant_number(example)
    out = []
    for i in range(100):
        n = phonenumbers.parse(f"+{example.country_code}{nsn[:-2]}{i:02d}")
        if phonenumbers.is_valid_number(n):
            out.append(n)
    return out


POOLS = {r: _pool(r) for r in REGIONS}
NANP = {"US", "CA"}


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def writings(number: phonenumbers.PhoneNumber, region: str) -> list[tuple[str, int]]:
    """Every way an SMSC may write ``number`` in a deliver_sm of a bridge in ``region``, as
    (address, TON). National forms only for a number of that region (abroad they mean
    another number)."""
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    spaced = phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL)
    digits = e164[1:]
    out = [(e164, 1), (e164, 0), (spaced, 1), (digits, 1), ("00" + digits, 0), ("00" + digits, 1)]
    if region in NANP:
        out += [("011" + digits, 0), ("011" + digits, 1)]
    if phonenumbers.region_code_for_number(number) == region:
        national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
        out += [(_digits(national), 2), (_digits(national), 0), (national, 2)]
    return out


def config_writings(number: phonenumbers.PhoneNumber) -> list[str]:
    """How a library may write its own number in the YAML (tenants[].source_addr)."""
    e164 = phonenumbers.format_number(number, PhoneNumberFormat.E164)
    national = phonenumbers.format_number(number, PhoneNumberFormat.NATIONAL)
    return [e164, e164[1:], phonenumbers.format_number(number, PhoneNumberFormat.INTERNATIONAL),
            _digits(national)]  # fmt: skip


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    region = draw(st.sampled_from(REGIONS))
    library = draw(st.sampled_from(POOLS[region]))
    patron_region = draw(st.sampled_from((region, region, *REGIONS)))
    patron = draw(st.sampled_from(POOLS[patron_region]))
    return {
        "region": region,
        "library": library,
        "configured": draw(st.sampled_from(config_writings(library))),
        "dest": draw(st.sampled_from(writings(library, region))),
        "patron": patron,
        "source": draw(st.sampled_from(writings(patron, region))),
        # How the ILS addresses the notice: the patron's number as an email local part. Digits
        # without '+' are read nationally first (local_part_to_e164), so they are the patron's
        # only for a patron of the region, or in the NANP where the country code is the trunk
        # prefix.
        "local_part": draw(
            st.sampled_from(
                ["+" + phonenumbers.format_number(patron, PhoneNumberFormat.E164)[1:]]
                + (
                    [phonenumbers.national_significant_number(patron)]
                    if patron_region == region
                    else []
                )
                + (
                    [phonenumbers.format_number(patron, PhoneNumberFormat.E164)[1:]]
                    if patron_region == region and region in NANP
                    else []
                )
            )
        ),
    }


def _config(region: str, configured: str) -> Config:
    data = merge(BASE, {"tenants": [tenant(region=region, source_addr=configured)]})
    return load_config_text(yaml.safe_dump(data), Path("."))


def _deliver_sm(source: tuple[str, int], dest: tuple[str, int]) -> DeliverSm:
    return DeliverSm(
        sequence=1,
        source_addr=source[0],
        source_addr_ton=source[1],
        destination_addr=dest[0],
        esm_class=0,
        data_coding=0,
        short_message=b"STOP",
        message_payload=None,
        receipted_message_id=None,
        message_state=None,
        network_error_code=None,
        sar_msg_ref_num=None,
        sar_total_segments=None,
        sar_segment_seqnum=None,
        dest_addr_ton=dest[1],
    )


def test_a_committed_stop_matches_every_later_notice_however_the_numbers_are_written() -> None:
    with tempfile.TemporaryDirectory() as tmp, asyncio.Runner() as runner:
        store = SqliteStore(Path(tmp) / "store.db")
        runner.run(store.open())
        try:

            @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
            @given(s=scenarios())
            def check(s: dict[str, Any]) -> None:
                cfg = _config(s["region"], s["configured"])
                (t,) = cfg.tenants
                sender, library = mo_addresses(cfg, _deliver_sm(s["source"], s["dest"]))
                assert sender.is_e164 and library.is_e164
                # The STOP is committed under the canonical pair ...
                record = OptoutRecord(sender.value, library.value, True, "STOP", 1.0, "patron")
                runner.run(store.set_optout(record))
                # ... and a notice for the patron, from that library, looks up the same pair:
                # the RCPT check (intake) and the dispatcher both use these two values.
                msisdn = addressing.local_part_to_e164(s["local_part"], t.region)
                found = runner.run(store.optout_status(msisdn, cfg.source_addr_for(t)))
                assert found is not None and found.opted_out
                # Back in for the next example, which may use the same pair.
                runner.run(store.set_optout(dataclasses.replace(record, opted_out=False)))

            check()
        finally:
            runner.run(store.close())


def test_a_sender_id_is_never_taken_for_a_number() -> None:
    cfg = _config("US", "12345")
    sender, library = mo_addresses(cfg, _deliver_sm(("12345", 5), ("12345", 3)))
    assert sender == SmsAddress("12345", "alphanumeric") and not sender.is_number
    assert library == SmsAddress("12345", "short_code")


# --- config: source_addr ----------------------------------------------------------------------


def _load(over: dict[str, Any]) -> Config:
    return load_config_text(yaml.safe_dump(merge(BASE, over)), Path("."))


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("+12025550199", "+12025550199"),
        ("12025550199", "+12025550199"),
        ("2025550199", "+12025550199"),
        ("+1 202 555 0199", "+12025550199"),
        ("12345", "12345"),
        ("Library", "Library"),
    ],
)
def test_source_addr_is_stored_canonical(written: str, canonical: str) -> None:
    cfg = _load({"smpp": {"source_addr": written}, "tenants": [tenant(source_addr=written)]})
    assert cfg.smpp.source_addr == canonical
    assert cfg.source_addr_for(cfg.tenants[0]) == canonical


def test_tenant_source_addr_is_read_in_the_tenants_region() -> None:
    cfg = _load({"tenants": [tenant(region="GB", source_addr="07400 123456")]})
    assert cfg.tenants[0].source_addr == "+447400123456"


def test_shared_source_addr_is_read_in_the_region_of_its_tenants() -> None:
    cfg = _load({"smpp": {"source_addr": "07400123456"}, "tenants": [tenant(region="GB")]})
    assert cfg.smpp.source_addr == "+447400123456"


@pytest.mark.parametrize(
    ("over", "path"),
    [
        ({"smpp": {"source_addr": "123456789"}}, "smpp.source_addr"),
        ({"smpp": {"source_addr": "1"}}, "smpp.source_addr"),
        ({"tenants": [tenant(source_addr="1" * 20)]}, "tenants[0].source_addr"),
        ({"tenants": [tenant(source_addr="+999123")]}, "tenants[0].source_addr"),
        ({"tenants": [tenant(source_addr="Library Alexandria")]}, "tenants[0].source_addr"),
    ],
)
def test_source_addr_that_is_no_number_is_refused_with_its_path(
    over: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _load(over)
    (problem,) = info.value.problems
    assert problem.startswith(path + " (line ")
    assert "country code" in problem or "at most 11 characters" in problem


def test_shared_number_read_differently_by_its_tenants_is_refused() -> None:
    gb = {**tenant(region="GB"), "id": "gb", "senders": ["*@gb.example.org"]}
    with pytest.raises(ConfigError) as info:
        _load({"smpp": {"source_addr": "07400123456"}, "tenants": [tenant(), gb]})
    (problem,) = info.value.problems
    assert problem.startswith("smpp.source_addr (line ") and "international form" in problem


# --- opt-out requests in a few more words -------------------------------------------------------

KEYWORDS = policy.KeywordSet()


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("stop please", "STOP"),
        ("Please stop", "STOP"),
        ("please, STOP!", "STOP"),
        ("stop stop", "STOP"),
        ("STOP STOP STOP", "STOP"),
        ("STOP.", "STOP"),
        ("Stop!", "STOP"),
        ("STOP. Thank you", "STOP"),
        ("stop now", "STOP"),
        ("ok stop", "STOP"),
        ("unsubscribe please", "UNSUBSCRIBE"),
        ("Opt out please", "OPT-OUT"),
        ("opt out opt out", "OPT-OUT"),
        ("ＳＴＯＰ ｐｌｅａｓｅ", "STOP"),
    ],
)
def test_optout_request_is_honoured(text: str, keyword: str) -> None:
    assert policy.match_optout_request(text, KEYWORDS) == policy.KeywordMatch("optout", keyword)


@pytest.mark.parametrize(
    "text",
    [
        "don't stop the renewal",
        "stop the hold",
        "stop texting me",
        "cancel it",
        "please",
        "thank you",
        "",
        "start please",
        "help please",
        "stop please " * 6,  # longer than a keyword message
        "stopstop",
        "stop start",
    ],
)
def test_text_that_merely_contains_a_keyword_is_not_an_optout(text: str) -> None:
    assert policy.match_optout_request(text, KEYWORDS) is None


# --- migration of numbers already stored -------------------------------------------------------


def test_rekey_merges_keys_that_become_equal_and_is_a_no_op_the_second_time() -> None:
    canon = {1: lambda v: "+1" + v[-10:] if v.isdigit() else v}
    rows = [("p", "12025550100", 1.0), ("p", "2025550100", 5.0), ("q", "Library", 2.0)]
    deletes, inserts = rekey(rows, canon, (0, 1), lambda r: r[2])
    assert sorted(deletes) == [("p", "12025550100"), ("p", "2025550100")]
    assert inserts == [("p", "+12025550100", 5.0)]
    assert rekey([*inserts, rows[2]], canon, (0, 1), lambda r: r[2]) == ([], [])


OLD_OPTOUTS = [
    # (msisdn, scope, opted_out, keyword, changed_at, actor)
    ("+12025550143", "12025550100", 1, "STOP", 10.0, "patron"),  # global number, '+' stripped
    ("+12025550143", "2025550100", 0, "START", 20.0, "patron"),  # national MO destination
    ("+12025550167", "2025550100", 1, "STOP", 30.0, "patron"),
    ("+12025550168", "+12025550199", 1, "STOP", 40.0, "admin:x"),
    ("+12025550169", "Library", 1, "STOP", 50.0, "admin:x"),
]
OLD_FIRST_CONTACT = [
    ("+12025550143", "12025550100", 100.0, "q1"),
    ("+12025550143", "+12025550100", 50.0, "q0"),
]
EXPECTED_OPTOUTS = [
    ("+12025550143", "+12025550100", False, "START", 20.0, "patron"),  # newest change stands
    ("+12025550167", "+12025550100", True, "STOP", 30.0, "patron"),
    ("+12025550168", "+12025550199", True, "STOP", 40.0, "admin:x"),
    ("+12025550169", "Library", True, "STOP", 50.0, "admin:x"),
]


def test_sqlite_migration_makes_stored_numbers_canonical(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path)
    for script in MIGRATIONS[:7]:
        assert isinstance(script, str)
        conn.executescript(script)
    conn.execute("PRAGMA user_version=7")
    conn.executemany("INSERT INTO optout VALUES (?,?,?,?,?,?)", OLD_OPTOUTS)
    conn.executemany(
        "INSERT INTO optout_audit (msisdn, scope, opted_out, keyword, changed_at, actor)"
        " VALUES (?,?,?,?,?,?)",
        OLD_OPTOUTS,
    )
    conn.executemany("INSERT INTO first_contact VALUES (?,?,?,?)", OLD_FIRST_CONTACT)
    conn.execute(
        "INSERT INTO sms (queue_id, tenant_id, msisdn, rcpt_addr, source_addr, envelope_from,"
        " state, created_at, updated_at, next_attempt_at) VALUES"
        " ('q1', 'riverside', '+12025550143', 'x@y', '2025550100', '', 'delivered', 1, 1, 1)"
    )
    conn.execute("INSERT INTO conversation VALUES ('<m@x>', 'riverside', '+1202', '2025550100', 1)")
    conn.commit()
    conn.close()

    async def go() -> None:
        store = SqliteStore(path, region="US")
        await store.open()
        try:
            got = sorted(await store.list_optouts(None), key=lambda r: r.msisdn)
            assert [(r.msisdn, r.scope, True, r.keyword, r.changed_at, r.actor) for r in got] == [
                (m, s, True, k, c, a) for m, s, o, k, c, a in EXPECTED_OPTOUTS if o
            ]
            back = await store.optout_status("+12025550143", "+12025550100")
            assert back is not None and not back.opted_out and back.keyword == "START"
            history = await store.optout_history("+12025550143")
            assert {r.scope for r, _ in history} == {"+12025550100"}
            assert await store.had_first_contact("+12025550143", "+12025550100")
            assert await store.last_sms_to("+12025550143", "+12025550100", 0.0) is not None
            rows = await store.run(
                lambda c: c.execute(
                    "SELECT (SELECT queue_id FROM first_contact),"
                    " (SELECT source_addr FROM conversation)"
                ).fetchone()
            )
            assert tuple(rows) == ("q0", "+12025550100")  # the earliest first contact stands
        finally:
            await store.close()

    asyncio.run(go())


async def test_postgres_migration_makes_stored_numbers_canonical() -> None:
    db = await create_database()
    try:
        conn = await asyncpg.connect(url_for(db))
        try:
            first = PG_MIGRATIONS[0]
            assert isinstance(first, str)
            await conn.execute(first)
            await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO schema_version VALUES (1)")
            await conn.executemany(
                "INSERT INTO optout VALUES ($1,$2,$3,$4,$5,$6)",
                [(m, s, bool(o), k, c, a) for m, s, o, k, c, a in OLD_OPTOUTS],
            )
            await conn.executemany(
                "INSERT INTO optout_audit (msisdn, scope, opted_out, keyword, changed_at, actor)"
                " VALUES ($1,$2,$3,$4,$5,$6)",
                [(m, s, bool(o), k, c, a) for m, s, o, k, c, a in OLD_OPTOUTS],
            )
            await conn.executemany(
                "INSERT INTO first_contact VALUES ($1,$2,$3,$4)", OLD_FIRST_CONTACT
            )
            await conn.execute(
                "INSERT INTO sms (queue_id, tenant_id, msisdn, rcpt_addr, source_addr,"
                " envelope_from, state, created_at, updated_at, next_attempt_at) VALUES"
                " ('q1', 'riverside', '+12025550143', 'x@y', '2025550100', '', 'delivered',"
                " 1, 1, 1)"
            )
        finally:
            await conn.close()
        store = PostgresStore(
            url_for(db), instance_id="a", lease_s=30.0, renew_leases=False, region="US"
        )
        await store.open()
        try:
            got = sorted(await store.list_optouts(None), key=lambda r: r.msisdn)
            assert [(r.msisdn, r.scope, r.keyword, r.changed_at) for r in got] == [
                (m, s, k, c) for m, s, o, k, c, _ in EXPECTED_OPTOUTS if o
            ]
            back = await store.optout_status("+12025550143", "+12025550100")
            assert back is not None and not back.opted_out
            history = await store.optout_history("+12025550143")
            assert {r.scope for r, _ in history} == {"+12025550100"}
            assert await store.had_first_contact("+12025550143", "+12025550100")
            assert await store.last_sms_to("+12025550143", "+12025550100", 0.0) is not None
        finally:
            await store.close()
        # A second start finds the migration done.
        again = PostgresStore(url_for(db), instance_id="b", lease_s=30.0, renew_leases=False)
        await again.open()
        await again.close()
    finally:
        await drop_database(db)


@given(
    raw=st.one_of(
        st.text(max_size=22),
        st.from_regex(r"\+?(00|011)?[0-9 ]{0,18}", fullmatch=True),
    ),
    ton=st.sampled_from([None, 0, 1, 2, 3, 5]),
    region=st.sampled_from(REGIONS),
)
@settings(max_examples=300, deadline=None)
def test_a_canonical_value_reads_as_itself(raw: str, ton: int | None, region: str) -> None:
    # Values are canonicalised again where they come back from the store (concatenation
    # groups, migrated rows); that must never change them.
    first = canonical_address(raw, region, ton=ton)
    again = 5 if first.kind == "alphanumeric" else None  # a sender id only with its TON
    assert canonical_address(first.value, region, ton=again) == first
