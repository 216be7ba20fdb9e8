"""PostgreSQL schema migrations, applied in order; table `schema_version` records how many ran.

Append only, like bridge/store/migrations.py (the SQLite schema): a released migration is never
edited. Migration 1 is the SQLite schema as of its version 7, in PostgreSQL types (REAL becomes
DOUBLE PRECISION, BLOB bytea, 0/1 flags boolean) plus what several instances sharing one
database need: a lease on claimed messages, instance heartbeats, a sequence for concatenation
references.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

from bridge.store.migrations import PATRON_COLUMNS, SENDING_COLUMNS, canonicalisers, rekey

# Key of the session-level advisory lock held while migrating, so that several instances
# starting at once do not run the same migration twice (the second waits, then sees it done).
MIGRATION_LOCK_KEY = 0x5B5_B41D


async def _canonical_numbers(conn: Any, region: str) -> None:
    """Migration 4: stored patron and sending numbers in canonical form, as SQLite's migration
    10 does (see there for why); inside the migration's transaction."""
    patron, sending = canonicalisers(region)
    rows = await conn.fetch(
        "SELECT msisdn, scope, opted_out, keyword, changed_at, actor FROM optout"
    )
    deletes, inserts = rekey(rows, {0: patron, 1: sending}, (0, 1), lambda r: r[4])
    if deletes:
        await conn.executemany("DELETE FROM optout WHERE msisdn=$1 AND scope=$2", deletes)
        await conn.executemany("INSERT INTO optout VALUES ($1,$2,$3,$4,$5,$6)", inserts)
    rows = await conn.fetch("SELECT msisdn, scope, first_at, queue_id FROM first_contact")
    deletes, inserts = rekey(rows, {0: patron, 1: sending}, (0, 1), lambda r: -r[2])
    if deletes:
        await conn.executemany("DELETE FROM first_contact WHERE msisdn=$1 AND scope=$2", deletes)
        await conn.executemany("INSERT INTO first_contact VALUES ($1,$2,$3,$4)", inserts)
    for columns, canon in ((PATRON_COLUMNS, patron), (SENDING_COLUMNS, sending)):
        for table, column in columns:
            for (value,) in await conn.fetch(f"SELECT DISTINCT {column} FROM {table}"):
                new = canon(value)
                if new != value:
                    await conn.execute(
                        f"UPDATE {table} SET {column}=$1 WHERE {column}=$2",
                        new,
                        value,
                    )


Migration: TypeAlias = str | Callable[[Any, str], Awaitable[None]]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: everything SQLite has up to its migration 7, plus leases, heartbeats, a ref sequence
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
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        submitted_at DOUBLE PRECISION,
        final_at DOUBLE PRECISION,
        segments INTEGER,
        coding TEXT,
        kind TEXT NOT NULL DEFAULT 'notice',
        dup_key TEXT,
        urgent BOOLEAN NOT NULL DEFAULT FALSE,
        shaped TEXT,
        claimed_by TEXT,
        lease_until DOUBLE PRECISION
    );
    CREATE INDEX sms_due ON sms (state, next_attempt_at);
    CREATE INDEX sms_lease ON sms (lease_until) WHERE state = 'sending';
    CREATE INDEX sms_claimed_by ON sms (claimed_by) WHERE state = 'sending';
    CREATE INDEX sms_dedup ON sms (message_id, msisdn);
    CREATE INDEX sms_conversation ON sms (msisdn, source_addr, created_at);
    CREATE INDEX sms_dup_key ON sms (dup_key, created_at);
    CREATE INDEX sms_sent_to ON sms (msisdn, tenant_id, submitted_at);
    CREATE INDEX sms_created ON sms (created_at);
    CREATE TABLE sms_segment (
        queue_id TEXT NOT NULL REFERENCES sms (queue_id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        smsc_message_id TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (queue_id, seq)
    );
    CREATE INDEX sms_segment_smsc_id ON sms_segment (smsc_message_id);
    CREATE TABLE mail_outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,
        data BYTEA NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        ref TEXT,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX mail_outbox_due ON mail_outbox (state, next_attempt_at);
    CREATE SEQUENCE concat_ref AS INTEGER MINVALUE 1 MAXVALUE 65535 CYCLE;
    CREATE TABLE mo_seen (
        dedup_key TEXT PRIMARY KEY,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX mo_seen_time ON mo_seen (received_at);
    CREATE TABLE mo_part (
        group_key TEXT NOT NULL,
        seq INTEGER NOT NULL,
        total INTEGER NOT NULL,
        text TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (group_key, seq)
    );
    CREATE TABLE conversation (
        mail_message_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        msisdn TEXT NOT NULL,
        source_addr TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE optout (
        msisdn TEXT NOT NULL,
        scope TEXT NOT NULL,
        opted_out BOOLEAN NOT NULL,
        keyword TEXT,
        changed_at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        PRIMARY KEY (msisdn, scope)
    );
    CREATE TABLE optout_audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        msisdn TEXT NOT NULL,
        scope TEXT NOT NULL,
        opted_out BOOLEAN NOT NULL,
        keyword TEXT,
        changed_at DOUBLE PRECISION NOT NULL,
        actor TEXT NOT NULL,
        mo_ref TEXT
    );
    CREATE INDEX optout_audit_msisdn ON optout_audit (msisdn);
    CREATE INDEX optout_audit_time ON optout_audit (changed_at);
    CREATE TABLE cost_lint (
        queue_id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL,
        coding TEXT NOT NULL,
        segments INTEGER NOT NULL,
        gsm_segments INTEGER,
        culprits TEXT NOT NULL,
        template TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE imap_state (
        mailbox TEXT PRIMARY KEY,
        uidvalidity BIGINT NOT NULL,
        last_uid BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE first_contact (
        msisdn TEXT NOT NULL,
        scope TEXT NOT NULL,
        first_at DOUBLE PRECISION NOT NULL,
        queue_id TEXT NOT NULL,
        PRIMARY KEY (msisdn, scope)
    );
    CREATE TABLE pending_receipt (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        smsc_message_id TEXT NOT NULL,
        patron TEXT NOT NULL,
        state TEXT NOT NULL,
        error TEXT,
        raw_stat TEXT,
        received_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX pending_receipt_id ON pending_receipt (smsc_message_id);
    CREATE TABLE job (
        name TEXT PRIMARY KEY,
        last_run DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE instance (
        instance_id TEXT PRIMARY KEY,
        joined_at DOUBLE PRECISION NOT NULL,
        beat_at DOUBLE PRECISION NOT NULL
    )
    """,
    # 2: bounces to the bridge's own addresses (SQLite migration 8)
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE mail_outbox ADD COLUMN tenant_id TEXT;
    ALTER TABLE mail_outbox ADD COLUMN lost_at DOUBLE PRECISION;
    ALTER TABLE mail_outbox ADD COLUMN fallback_of BIGINT;
    CREATE INDEX mail_outbox_lost ON mail_outbox (lost_at) WHERE lost_at IS NOT NULL;
    CREATE INDEX mail_outbox_fallback ON mail_outbox (fallback_of) WHERE fallback_of IS NOT NULL
    """,
    # 3: the receipt deadline sweep finds texts still waiting for a receipt (SQLite migration 9)
    """
    CREATE INDEX sms_awaiting_receipt ON sms (submitted_at) WHERE state = 'submitted'
    """,
    # 4: patron and sending numbers in canonical form (E.164), opt-outs merged
    _canonical_numbers,
)
