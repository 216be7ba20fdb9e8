"""Durable state behind one interface: SQLite (store.path, the embedded default) or PostgreSQL
(store.url: several bridge instances sharing one queue).

base.py      the interface: one Protocol per area (SmsOutbox, Receipts, Inbound, Optouts,
             MailOutbox, Operations) and `Store`, all of them; the types they speak in
common.py    what both backends decide alike: duplicate checks, receipt outcomes, purge
             states, new rows, rows to records
sqlite.py, postgres.py   SQL and connection handling only
migrations.py, pg_migrations.py   the two schemas (tests/unit/test_schema_agreement.py
             checks they agree)
"""

from __future__ import annotations

import socket

from bridge import defaults
from bridge.config import StoreConfig
from bridge.model import Outgoing
from bridge.store.base import (
    CostLintRow,
    Inbound,
    MailOutbox,
    Operations,
    Optouts,
    Receipts,
    SmsFilter,
    SmsOutbox,
    Store,
    StoreError,
)
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore


def _both_backends_are_stores(sqlite: SqliteStore, postgres: PostgresStore) -> tuple[Store, Store]:
    """Never called: mypy proves here that each backend has every method of `Store`, with
    the same arguments and results (a missing or different one fails the type check)."""
    return sqlite, postgres


def make_store(cfg: StoreConfig, *, region: str = defaults.TENANT_REGION) -> Store:
    """The backend the configuration names (not opened yet). ``region``: where national-form
    numbers already stored are read when a migration makes them canonical (the first
    tenant's region)."""
    if cfg.url is not None:
        return PostgresStore(
            cfg.url,
            instance_id=cfg.instance_id or socket.gethostname(),
            lease_s=cfg.lease_s,
            region=region,
        )
    return SqliteStore(cfg.path, region=region)


__all__ = [
    "CostLintRow",
    "Inbound",
    "MailOutbox",
    "Operations",
    "Optouts",
    "Outgoing",
    "PostgresStore",
    "Receipts",
    "SmsFilter",
    "SmsOutbox",
    "SqliteStore",
    "Store",
    "StoreError",
    "make_store",
]
