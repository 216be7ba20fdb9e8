"""Durable state behind one interface (SQLite is the embedded default)."""

from bridge.store.base import Outgoing, SmsFilter, StoreError
from bridge.store.sqlite import SqliteStore

Store = SqliteStore

__all__ = ["Outgoing", "SmsFilter", "SqliteStore", "Store", "StoreError"]
