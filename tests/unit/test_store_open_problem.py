"""The one-line reasons a store cannot be opened (pure), and the URL shown in them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.store import StoreError, postgres, sqlite

DB = Path("/var/lib/sms-bridge/sms-bridge.db")
HINT = "(check the file and directory permissions: the service user needs write access to both)"


def sqlite_error(name: str, text: str) -> sqlite3.Error:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


def test_sqlite_permission_problems_say_what_to_check() -> None:
    readonly = sqlite_error("SQLITE_READONLY", "attempt to write a readonly database")
    assert sqlite.open_problem(DB, readonly) == (
        f"cannot open the store at {DB}: attempt to write a readonly database {HINT}"
    )
    cantopen = sqlite_error("SQLITE_CANTOPEN", "unable to open database file")
    assert sqlite.open_problem(DB, cantopen).endswith(f"unable to open database file {HINT}")
    assert sqlite.open_problem(DB, PermissionError(13, "Permission denied")) == (
        f"cannot open the store at {DB}: Permission denied {HINT}"
    )


def test_sqlite_other_problems() -> None:
    notadb = sqlite_error("SQLITE_NOTADB", "file is not a database")
    assert "restore a backup" in sqlite.open_problem(DB, notadb)
    newer = StoreError("the store schema is version 99, newer than this bridge knows (20)")
    assert sqlite.open_problem(DB, newer) == str(newer)


def test_postgres_url_password_is_hidden() -> None:
    assert postgres.safe_url("postgresql://u:s3cret@db:5432/q") == "postgresql://u:***@db:5432/q"
    assert postgres.safe_url("postgresql://u@db/q") == "postgresql://u@db/q"
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)")
    line = postgres.open_problem("postgresql://u:s3cret@127.0.0.1:1/q", refused)
    assert line.startswith("cannot open the PostgreSQL store at postgresql://u:***@127.0.0.1:1/q:")
    assert "connection refused" in line and "s3cret" not in line
    assert "no answer within" in postgres.open_problem("postgresql://db/q", TimeoutError())
