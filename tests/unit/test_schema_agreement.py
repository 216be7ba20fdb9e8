"""The two schemas agree: bridge/store/migrations.py (SQLite) and bridge/store/pg_migrations.py
(PostgreSQL) are written separately, so a column or index added to one and forgotten in the
other is found here rather than by a library running the other backend.

A fresh database of each kind is migrated by its store's own open(); then tables, their
columns (name, loose type, NOT NULL), primary keys and explicitly created indexes (name,
table, columns) must be the same, but for what the allowlists below name, each with its reason.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from tests.pg import throwaway_database

# What only PostgreSQL has, and why.
PG_ONLY_TABLES = {
    # Heartbeats of the instances sharing one database (bridge/ratebudget.py); a SQLite bridge
    # is alone.
    "instance",
    # The migration record; SQLite keeps the same count in PRAGMA user_version.
    "schema_version",
}
PG_ONLY_COLUMNS = {
    # Which instance claimed a text, and until when its claim holds (claim_sms, the lease
    # renewer): SQLite has one writer, whose claims a restart simply gives back.
    ("sms", "claimed_by"),
    ("sms", "lease_until"),
}
PG_ONLY_INDEXES = {
    # Lease expiry and an instance's own claims (claim_sms, requeue_inflight, renew_leases).
    "sms_lease",
    "sms_claimed_by",
}
# What only SQLite has, and why.
SQLITE_ONLY_TABLES = {
    # Concatenation references (next_concat_ref); PostgreSQL uses the sequence concat_ref,
    # which gives every instance distinct values without a row lock.
    "counter",
}

# Loose types: SQLite's declared type and PostgreSQL's data_type, mapped to one class each.
_SQLITE_TYPES = {"TEXT": "text", "REAL": "real", "INTEGER": "integer", "BLOB": "bytes"}
_PG_TYPES = {
    "text": "text",
    "double precision": "real",
    "integer": "integer",
    "bigint": "integer",
    "boolean": "integer",  # SQLite keeps flags as 0/1
    "bytea": "bytes",
}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    not_null: bool


@dataclass
class Schema:
    tables: dict[str, list[Column]]  # columns in table order
    primary_keys: dict[str, tuple[str, ...]]
    indexes: dict[str, tuple[str, tuple[str, ...]]]  # name -> (table, columns)


def _sqlite_schema(path: Path) -> Schema:
    conn = sqlite3.connect(path)
    try:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        tables: dict[str, list[Column]] = {}
        pks: dict[str, tuple[str, ...]] = {}
        for t in names:
            info = conn.execute(f"PRAGMA table_info({t})").fetchall()
            # (cid, name, type, notnull, default, pk). A primary key column is NOT NULL by
            # meaning (SQLite reports notnull=0 unless it is declared).
            tables[t] = [
                Column(r[1], _SQLITE_TYPES.get(r[2], r[2]), bool(r[3]) or r[5] > 0) for r in info
            ]
            pks[t] = tuple(r[1] for r in sorted(info, key=lambda r: r[5]) if r[5] > 0)
        indexes: dict[str, tuple[str, tuple[str, ...]]] = {}
        for name, table in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type='index'"
            " AND name NOT LIKE 'sqlite_autoindex%'"
        ):
            cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
            indexes[name] = (table, cols)
        return Schema(tables, pks, indexes)
    finally:
        conn.close()


async def _pg_schema(url: str) -> Schema:
    conn = await asyncpg.connect(url)
    try:
        tables: dict[str, list[Column]] = {}
        for r in await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema='public' ORDER BY table_name, ordinal_position"
        ):
            tables.setdefault(r[0], []).append(
                Column(r[1], _PG_TYPES.get(r[2], r[2]), r[3] == "NO")
            )
        pks = {
            str(r[0]): tuple(r[1])
            for r in await conn.fetch(
                "SELECT t.relname, array_agg(a.attname ORDER BY k.ord) FROM pg_constraint c"
                " JOIN pg_class t ON t.oid = c.conrelid"
                " JOIN pg_namespace n ON n.oid = t.relnamespace"
                " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
                " WHERE c.contype = 'p' AND n.nspname = 'public' GROUP BY t.relname"
            )
        }
        # Indexes created by CREATE INDEX: not those backing a constraint (primary keys).
        indexes = {
            str(r[0]): (str(r[1]), tuple(r[2]))
            for r in await conn.fetch(
                "SELECT i.relname, t.relname, array_agg(a.attname ORDER BY k.ord) FROM pg_index x"
                " JOIN pg_class i ON i.oid = x.indexrelid"
                " JOIN pg_class t ON t.oid = x.indrelid"
                " JOIN pg_namespace n ON n.oid = t.relnamespace"
                " CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)"
                " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
                " WHERE n.nspname = 'public'"
                " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)"
                " GROUP BY i.relname, t.relname"
            )
        }
        return Schema(tables, pks, indexes)
    finally:
        await conn.close()


async def _both(tmp_path: Path) -> tuple[Schema, Schema]:
    path = tmp_path / "schema.db"
    lite = SqliteStore(path)
    await lite.open()
    await lite.close()
    async with throwaway_database() as url:
        pg = PostgresStore(url, instance_id="schema", lease_s=30.0, renew_leases=False)
        await pg.open()
        await pg.close()
        return _sqlite_schema(path), await _pg_schema(url)


async def test_tables_columns_and_keys_agree(tmp_path: Path) -> None:
    lite, pg = await _both(tmp_path)
    assert set(lite.tables) - SQLITE_ONLY_TABLES == set(pg.tables) - PG_ONLY_TABLES
    for table in set(lite.tables) - SQLITE_ONLY_TABLES:
        pg_columns = [c for c in pg.tables[table] if (table, c.name) not in PG_ONLY_COLUMNS]
        # Sorted by name: PostgreSQL's migration 1 folds SQLite's later ALTER TABLEs into the
        # CREATE TABLE, so the order of columns differs; no query depends on it.
        assert sorted(lite.tables[table], key=lambda c: c.name) == sorted(
            pg_columns, key=lambda c: c.name
        ), table
        assert lite.primary_keys.get(table, ()) == pg.primary_keys.get(table, ()), table


async def test_indexes_agree(tmp_path: Path) -> None:
    lite, pg = await _both(tmp_path)
    shared = {k: v for k, v in pg.indexes.items() if k not in PG_ONLY_INDEXES}
    assert lite.indexes == shared


async def test_allowlists_name_only_what_exists(tmp_path: Path) -> None:
    """An allowlist entry whose table, column or index is gone (or now on both sides) is
    stale: it would hide a difference that should be seen."""
    lite, pg = await _both(tmp_path)
    assert set(pg.tables) >= PG_ONLY_TABLES and not PG_ONLY_TABLES & set(lite.tables)
    assert set(lite.tables) >= SQLITE_ONLY_TABLES and not SQLITE_ONLY_TABLES & set(pg.tables)
    for table, column in PG_ONLY_COLUMNS:
        assert column in {c.name for c in pg.tables[table]}
        assert column not in {c.name for c in lite.tables[table]}
    assert set(pg.indexes) >= PG_ONLY_INDEXES and not PG_ONLY_INDEXES & set(lite.indexes)
