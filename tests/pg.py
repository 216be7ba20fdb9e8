"""A throwaway PostgreSQL database per test, on the server at 127.0.0.1:5432 (trust auth).

Without a reachable server the tests skip with a message saying so, except when
SMS_BRIDGE_REQUIRE_PEERS=1 (.ci/run sets it): then a missing server fails the test, so CI
cannot pass by skipping the PostgreSQL suite.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg  # type: ignore[import-untyped]
import pytest

from tests.peers import require_peer

# The maintenance database of the server the tests may use; override for another server.
ADMIN_URL = os.environ.get("SMS_BRIDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_CONNECT_TIMEOUT_S = 5.0


def _unavailable(reason: str) -> None:
    message = (
        f"PostgreSQL tests need a server at {ADMIN_URL} (trust auth, user postgres;"
        f" set SMS_BRIDGE_TEST_PG for another): {reason}"
    )
    require_peer("PostgreSQL", message)


def url_for(name: str) -> str:
    """The URL of database `name` on the test server."""
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def create_database() -> str:
    """Create a database with a random name; return its name (skips when no server)."""
    try:
        conn = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _unavailable(f"{exc.__class__.__name__}: {exc}")
        raise AssertionError("unreachable") from exc
    name = "smsbridge_test_" + secrets.token_hex(6)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    """Drop it, closing whatever connections a killed bridge left behind (PostgreSQL 13+)."""
    conn = await asyncpg.connect(ADMIN_URL, timeout=_CONNECT_TIMEOUT_S)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def throwaway_database() -> AsyncIterator[str]:
    """A fresh database's URL for the duration of the block."""
    name = await create_database()
    try:
        yield url_for(name)
    finally:
        await drop_database(name)


async def query(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the database directly (tests check what the bridges committed)."""
    conn = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT_S)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with throwaway_database() as url:
        yield url
