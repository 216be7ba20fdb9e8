"""Durable state behind one interface (SQLite is the embedded default)."""

from bridge.store.base import CostLintRow, Outgoing, SmsFilter, StoreError
from bridge.store.sqlite import SqliteStore

Store = SqliteStore

__all__ = ["CostLintRow", "Outgoing", "SmsFilter", "SqliteStore", "Store", "StoreError"]
