"""Schema migrations, applied in order; `PRAGMA user_version` records how many ran.

Append only: a released migration is never edited, so every store on disk can be brought
forward from whatever version it is at.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
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
)
