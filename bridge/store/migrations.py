"""Schema migrations, applied in order; `PRAGMA user_version` records how many ran.

Append only: a released migration is never edited, so every store on disk can be brought
forward from whatever version it is at. A migration is SQL, or a Python function given the
open connection and the region national-form numbers are read in (the first tenant's): data
migrations that need bridge.addressing, such as the canonical numbers of migration 8.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

from bridge import addressing

Canon: TypeAlias = Callable[[str], str]


def canonicalisers(region: str) -> tuple[Canon, Canon]:
    """(patron number, sending number) -> canonical form, for values already in a store.

    Patron numbers stay as they are unless they read as an E.164 number (they were E.164 or
    "+<digits>" already); sending numbers were stored as configured ("+12025550199"), as the
    global source_addr ("12025550100") or as an SMSC wrote an MO's destination ("2025550100",
    "12025550100"): they become E.164, a short code's digits, or stay (sender ids, values no
    number can be read from)."""

    def patron(value: str) -> str:
        addr = addressing.canonical_address(value, region)
        return addr.value if addr.is_e164 else value

    def sending(value: str) -> str:
        # Read as config.py reads source_addr, so a stored scope equals the configured number.
        addr = addressing.canonical_address(value, region)
        return addr.value if addr.is_number else value

    return patron, sending


Row: TypeAlias = tuple[Any, ...]


def rekey(
    rows: Iterable[Sequence[Any]],
    canon: Mapping[int, Canon],
    key: tuple[int, ...],
    rank: Callable[[Row], Any],
) -> tuple[list[Row], list[Row]]:
    """Rows of a table keyed by numbers, with those numbers made canonical (pure).

    Two rows whose keys become equal merge into one: the one ``rank`` ranks highest. Returns
    (old keys to delete, rows to insert), both empty when nothing changes, so that a second run
    is a no-op."""
    groups: dict[Row, list[tuple[Row, Row]]] = {}
    for raw in rows:
        old = tuple(raw)
        new = tuple(canon[i](v) if i in canon else v for i, v in enumerate(old))
        groups.setdefault(tuple(new[i] for i in key), []).append((old, new))
    deletes: list[Row] = []
    inserts: list[Row] = []
    for members in groups.values():
        if len(members) == 1 and members[0][0] == members[0][1]:
            continue
        deletes.extend(tuple(old[i] for i in key) for old, _ in members)
        inserts.append(max(members, key=lambda m: rank(m[1]))[1])
    return deletes, inserts


# (table, column) of numbers that are not part of a unique key: rewritten value by value.
PATRON_COLUMNS: tuple[tuple[str, str], ...] = (("optout_audit", "msisdn"),)
SENDING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("optout_audit", "scope"),
    ("sms", "source_addr"),
    ("conversation", "source_addr"),
)


def _canonical_numbers(conn: sqlite3.Connection, region: str) -> None:
    """Migration 8: every stored patron and sending number used in a lookup in canonical form
    (bridge.addressing.canonical_address). Before it, an opt-out recorded under the sending
    number as an SMSC wrote it ("2025550100", "12025550199") was never found by the check for
    a notice from "+12025550199": the patron's STOP was not honoured."""
    patron, sending = canonicalisers(region)
    rows = conn.execute(
        "SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout"
    ).fetchall()
    # An opt-out recorded under two spellings of one number: the newest change stands.
    deletes, inserts = rekey(rows, {0: patron, 1: sending}, (0, 1), lambda r: r[4])
    conn.executemany("DELETE FROM optout WHERE msisdn=? AND scope=?", deletes)
    conn.executemany("INSERT INTO optout VALUES (?,?,?,?,?,?)", inserts)
    rows = conn.execute("SELECT msisdn, scope, first_at, queue_id FROM first_contact").fetchall()
    # First contact: the earliest stands.
    deletes, inserts = rekey(rows, {0: patron, 1: sending}, (0, 1), lambda r: -r[2])
    conn.executemany("DELETE FROM first_contact WHERE msisdn=? AND scope=?", deletes)
    conn.executemany("INSERT INTO first_contact VALUES (?,?,?,?)", inserts)
    for columns, canon in ((PATRON_COLUMNS, patron), (SENDING_COLUMNS, sending)):
        for table, column in columns:
            for (value,) in conn.execute(f"SELECT DISTINCT {column} FROM {table}").fetchall():
                new = canon(value)
                if new != value:
                    conn.execute(
                        f"UPDATE {table} SET {column}=? WHERE {column}=?",
                        (new, value),
                    )


Migration: TypeAlias = str | Callable[[sqlite3.Connection, str], None]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: outbound SMS queue, per-segment SMSC ids, mail outbox, counters
    """
    CREATE TABLE sms (
        queue_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        msisdn TEXT NOT NULL,
        rcpt_addr TEXT NOT NULL,
        source_addr TEXT NOT NULL,
        envelope_from TEXT NOT NULL,
        message_id TEXT,
        subject TEXT NOT NULL DEFAULT '',
        body TEXT,
        in_reply_to TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        submitted_at REAL,
        final_at REAL,
        segments INTEGER,
        coding TEXT
    );
    CREATE INDEX sms_due ON sms (state, next_attempt_at);
    CREATE INDEX sms_dedup ON sms (message_id, msisdn);
    CREATE INDEX sms_conversation ON sms (msisdn, source_addr, created_at);
    CREATE TABLE sms_segment (
        queue_id TEXT NOT NULL REFERENCES sms (queue_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        smsc_message_id TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY (queue_id, seq)
    );
    CREATE INDEX sms_segment_smsc_id ON sms_segment (smsc_message_id);
    CREATE TABLE mail_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        data BLOB NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        ref TEXT,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
    CREATE TABLE counter (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )
    """,
    # 2: inbound (MO) messages: redelivery dedup, concatenation parts, reply threads
    """
    CREATE TABLE mo_seen (
        dedup_key TEXT PRIMARY KEY,
        received_at REAL NOT NULL
    );
    CREATE INDEX mo_seen_time ON mo_seen (received_at);
    CREATE TABLE mo_part (
        group_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        total INTEGER NOT NULL,
        text TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (group_key, seq)
    );
    CREATE TABLE conversation (
        mail_message_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        msisdn TEXT NOT NULL,
        source_addr TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    # 3: compliance: opt-outs with an audit trail, duplicate keys, urgent flag, cost lint
    """
    ALTER TABLE sms ADD COLUMN kind TEXT NOT NULL DEFAULT 'notice';
    ALTER TABLE sms ADD COLUMN dup_key TEXT;
    ALTER TABLE sms ADD COLUMN urgent INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX sms_dup_key ON sms (dup_key, created_at);
    CREATE INDEX sms_sent_to ON sms (msisdn, tenant_id, submitted_at);
    CREATE TABLE optout (
        msisdn TEXT NOT NULL,
        scope TEXT NOT NULL,
        opted_out INTEGER NOT NULL,
        keyword TEXT,
        changed_at REAL NOT NULL,
        actor TEXT NOT NULL,
        PRIMARY KEY (msisdn, scope)
    );
    CREATE TABLE optout_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        msisdn TEXT NOT NULL,
        scope TEXT NOT NULL,
        opted_out INTEGER NOT NULL,
        keyword TEXT,
        changed_at REAL NOT NULL,
        actor TEXT NOT NULL,
        mo_ref TEXT
    );
    CREATE TABLE cost_lint (
        queue_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        coding TEXT NOT NULL,
        segments INTEGER NOT NULL,
        gsm_segments INTEGER,
        culprits TEXT NOT NULL,
        template TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    # 4: IMAP intake: per mailbox UIDVALIDITY and the highest UID committed
    """
    CREATE TABLE imap_state (
        mailbox TEXT PRIMARY KEY,
        uidvalidity INTEGER NOT NULL,
        last_uid INTEGER NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    # 5: first contact per sending number (the footer goes on the first text only)
    """
    CREATE TABLE first_contact (
        msisdn TEXT NOT NULL,
        scope TEXT NOT NULL,
        first_at REAL NOT NULL,
        queue_id TEXT NOT NULL,
        PRIMARY KEY (msisdn, scope)
    );
    ALTER TABLE sms ADD COLUMN shaped TEXT
    """,
    # 6: receipts that arrive before their submit_sm_resp's message id is committed
    """
    CREATE TABLE pending_receipt (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        smsc_message_id TEXT NOT NULL,
        patron TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        raw_stat TEXT,
        received_at REAL NOT NULL
    );
    CREATE INDEX pending_receipt_id ON pending_receipt (smsc_message_id)
    """,
    # 7: scheduled jobs (purges, reports) run once per period, remembered across restarts
    """
    CREATE TABLE job (
        name TEXT PRIMARY KEY,
        last_run REAL NOT NULL
    );
    CREATE INDEX sms_created ON sms (created_at);
    CREATE INDEX optout_audit_time ON optout_audit (changed_at)
    """,
    # 8: bounces to the bridge's own addresses (VERP): which tenant an email belongs to, when a
    # bounce marked it lost, the fallback copy of a lost reply; a key-value table for
    # bridge-wide settings kept in the store (the VERP secret)
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE mail_outbox ADD COLUMN tenant_id TEXT;
    ALTER TABLE mail_outbox ADD COLUMN lost_at REAL;
    ALTER TABLE mail_outbox ADD COLUMN fallback_of INTEGER;
    CREATE INDEX mail_outbox_lost ON mail_outbox (lost_at) WHERE lost_at IS NOT NULL;
    CREATE INDEX mail_outbox_fallback ON mail_outbox (fallback_of) WHERE fallback_of IS NOT NULL
    """,
    # 9: the receipt deadline sweep finds texts still waiting for a receipt by submit time
    """
    CREATE INDEX sms_awaiting_receipt ON sms (submitted_at) WHERE state = 'submitted'
    """,
    # 10: patron and sending numbers in canonical form (E.164), opt-outs merged
    _canonical_numbers,
    # 11: one number's opt-out history (`sms-bridge optout history`) without a scan of the
    # whole audit, as PostgreSQL has had since its first migration
    """
    CREATE INDEX optout_audit_msisdn ON optout_audit (msisdn)
    """,
)
