"""Durable state behind one interface: SQLite (store.path, the embedded default) or PostgreSQL
(store.url: several bridge instances sharing one queue)."""

from __future__ import annotations

import socket
from typing import TypeAlias

from bridge import defaults
from bridge.config import StoreConfig
from bridge.store.base import CostLintRow, Outgoing, SmsFilter, StoreError
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore

Store: TypeAlias = SqliteStore | PostgresStore


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
    "Outgoing",
    "PostgresStore",
    "SmsFilter",
    "SqliteStore",
    "Store",
    "StoreError",
    "make_store",
]
