"""Shared fixtures: configs built from dicts, an open store, a running bridge on port 0."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import Config, load_config_text
from bridge.model import SmsState
from bridge.store import SqliteStore, Store
from bridge.store.base import SubmittedSms
from bridge.store.postgres import PostgresStore
from tests.pg import create_database, drop_database, url_for

SAMPLES = Path(__file__).parent / "fixtures" / "samples"

BASE: dict[str, Any] = {
    "smtp": {"listen": "127.0.0.1:0", "domains": ["sms.example.org"]},
    "smpp": {
        "host": "127.0.0.1",
        "port": 0,
        "system_id": "bridge",
        "password": "secret",
        "source_addr": "12025550100",
        "enquire_link_s": 5,
        "response_timeout_s": 2,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "retry_min_s": 0.05,
        "retry_max_s": 0.2,
        "max_tps": 200,
    },
    "store": {"path": "bridge.db"},
    "inbound": {"receipt_match_delay_s": 0.2},
    "admin": {"listen": None},
    "mail": {"from": "sms-bridge@sms.example.org", "maildir": "mail"},
    "tenants": [
        {
            "id": "riverside",
            "name": "Riverside Public Library",
            "senders": ["*@riverside.example.org"],
            "networks": ["127.0.0.0/8"],
            "reply_to": "circulation@riverside.example.org",
            "region": "US",
            # tests run at any hour; quiet hours have their own tests with a fake clock
            "quiet_hours": None,
            "footer": None,  # shaping has its own tests
        }
    ],
}


async def record_submitted(
    store: Store,
    queue_id: str,
    smsc_ids: Sequence[str],
    segments: int,
    coding: str,
    now: float,
    *,
    first_contact: tuple[str, str] | None = None,
    shaped: str | None = None,
    settle: tuple[SmsState, str] | None = None,
) -> None:
    """One text recorded as submitted: the store's record_submitted_many of one."""
    await store.record_submitted_many(
        [
            SubmittedSms(
                queue_id, tuple(smsc_ids), segments, coding, now, first_contact, shaped, settle
            )
        ]
    )


# Tenants for tests: the BASE one, and a second library on the same sending number.
RIVERSIDE: dict[str, Any] = BASE["tenants"][0]
ASHLAND: dict[str, Any] = {
    "id": "ashland",
    "name": "Ashland Library",
    "senders": ["*@ashland.example.org"],
    "networks": ["127.0.0.0/8"],
    "reply_to": "desk@ashland.example.org",
    "quiet_hours": None,
    "footer": None,
}


def tenant(**over: Any) -> dict[str, Any]:
    """The BASE tenant with some keys changed."""
    return {**RIVERSIDE, **over}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


MakeConfig = Callable[..., Config]


@pytest.fixture
def make_config(tmp_path: Path) -> MakeConfig:
    def make(over: dict[str, Any] | None = None) -> Config:
        data = merge(BASE, over or {})
        return load_config_text(yaml.safe_dump(data), tmp_path)

    return make


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# Opens stores on one shared backend, once per backend (tests on both).
Opener = Callable[..., Awaitable[Store]]


@contextlib.asynccontextmanager
async def stores_on(backend: str, tmp_path: Path) -> AsyncIterator[Opener]:
    """An opener of stores sharing one `backend` ("sqlite" or "postgres", a fresh database),
    each closed (and the database dropped) at the end."""
    opened: list[Store] = []
    db = await create_database() if backend == "postgres" else None

    async def opener(instance_id: str = "a", lease_s: float = 30.0) -> Store:
        s: Store
        if db is None:
            s = SqliteStore(tmp_path / "store.db")
        else:
            s = PostgresStore(
                url_for(db), instance_id=instance_id, lease_s=lease_s, renew_leases=False
            )
        await s.open()
        opened.append(s)
        return s

    try:
        yield opener
    finally:
        for s in opened:
            await s.close()
        if db is not None:
            await drop_database(db)


@pytest.fixture(params=["sqlite", "postgres"])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores on one shared backend: `await open_store(instance_id="a")`."""
    async with stores_on(request.param, tmp_path) as opener:
        yield opener
