"""IMAP intake against a real Dovecot: notices delivered (IMAP APPEND, as local delivery would)
into a mailbox while the bridge is IDLE come out as SMS; restarts send nothing twice; notices
that cannot be sent are bounced and parked in the error folder."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config
from bridge.imap_intake import ImapIntake
from bridge.intake import Intake
from bridge.model import Wake
from bridge.store import SmsFilter, SqliteStore, Store
from tests.conftest import SAMPLES, MakeConfig
from tests.flows.dovecot import Dovecot, dovecot, dovecot_server
from tests.flows.harness import StartEnv
from tests.waiting import eventually

__all__ = ["dovecot", "dovecot_server"]  # fixtures, re-exported for pytest

FROM = "ils@riverside.example.org"
KOHA_TEXT = (
    'Riverside Public Library: Jane, your hold "The Overstory" is ready for pickup at Main '
    "Branch until 11/23. Questions? 202-555-0100"
)


def imap_entry(dc: Dovecot, **over: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "lib",
        "host": dc.host,
        "port": dc.port,
        "security": "none",
        "user": dc.user,
        "password": dc.password,
        "tenant": "riverside",
        "timeout_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    entry.update(over)
    return entry


def notice(to: str, body: str, *, sender: str = FROM, msgid: str | None = None) -> bytes:
    lines = [
        f"From: Riverside Library <{sender}>",
        f"To: {to}",
        "Subject: Library notice",
        "Date: Mon, 16 Nov 2026 09:12:03 -0500",
    ]
    if msgid:
        lines.append(f"Message-ID: <{msgid}@riverside.example.org>")
    lines += ["Content-Type: text/plain; charset=us-ascii", "", body, ""]
    return "\r\n".join(lines).encode()


async def wait_idle(imap: ImapIntake) -> None:
    async def idle() -> bool:
        return imap.state == "idle"

    await eventually(idle, 10, lambda: f"IDLE (state is {imap.state!r})")


class Harness:
    """Store + Intake + ImapIntake without SMPP: what IMAP intake itself must get right."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.intake = Intake(cfg, store)
        self.running: list[ImapIntake] = []
        self.wakes = 0

    async def start(self) -> ImapIntake:
        imap = ImapIntake(
            self.cfg, self.cfg.imap[0], self.intake, self.store, wake=Wake(mail=self._wake)
        )
        self.running.append(imap)
        await imap.start()
        await wait_idle(imap)
        return imap

    def _wake(self) -> None:
        self.wakes += 1

    async def stop(self) -> None:
        while self.running:
            await asyncio.wait_for(self.running.pop().stop(), 10)

    async def sms(self) -> list[Any]:
        return await self.store.list_sms(SmsFilter(limit=1000), time.time())


@pytest.fixture
async def harness(
    make_config: MakeConfig, dovecot: Dovecot, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []
    stores: list[Store] = []

    async def make(**over: Any) -> Harness:
        cfg = make_config({"imap": [imap_entry(dovecot, **over)]})
        store = SqliteStore(tmp_path / "imap.db")
        await store.open()
        stores.append(store)
        h = Harness(cfg, store)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.stop()
    for s in stores:
        await s.close()


async def test_notice_appended_while_idle_is_texted_and_seen(
    env_factory: StartEnv, dovecot: Dovecot
) -> None:
    env = await env_factory({"imap": [imap_entry(dovecot)]})
    (imap,) = env.bridge.imap  # the bridge's own intake, started from cfg.imap
    await wait_idle(imap)
    started = time.monotonic()
    await asyncio.to_thread(dovecot.append, (SAMPLES / "koha-hold-qp.eml").read_bytes())
    (sms,) = await env.sim.wait_for_messages(1, timeout=5)
    assert time.monotonic() - started < 5
    assert sms.destination == "+12025550143"
    assert sms.text == KOHA_TEXT

    async def seen() -> bool:
        return await asyncio.to_thread(dovecot.flags) == {1: "\\Seen"}

    await eventually(seen, 10, "the notice flagged \\Seen")
    stored = await env.bridge.store.imap_state("lib")
    assert stored is not None and stored[1] == 1
    await wait_idle(imap)  # back to IDLE after the batch
    await asyncio.wait_for(env.bridge.stop(), 20)  # stopping twice (teardown) is harmless
    assert imap.state == "stopped"


async def test_restart_sends_nothing_twice_and_skips_nothing(
    harness: Callable[..., Awaitable[Harness]],
    dovecot: Dovecot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.imap_intake")
    h = await harness()
    for i, number in enumerate(("2025550143", "2025550167")):
        raw = notice(f"{number}@sms.example.org", f"Notice {i}", msgid=f"n{i}")
        await asyncio.to_thread(dovecot.append, raw)
    await h.start()

    async def two() -> bool:
        return len(await h.sms()) == 2

    await eventually(two, 10, "two queued SMS")
    await h.stop()
    # A flag-based implementation would take these again: the UID high-water mark must not.
    with dovecot.client() as imap:
        imap.select("INBOX")
        imap.uid("STORE", "1:*", "-FLAGS.SILENT", "(\\Seen)")
    await asyncio.to_thread(dovecot.append, notice("2025550188@sms.example.org", "Notice 2"))

    await h.start()

    async def three() -> bool:
        return len(await h.sms()) == 3

    await eventually(three, 10, "the notice delivered while the bridge was down")
    # A later notice is taken too: by then a wrong implementation has re-taken the old two
    # (they come before it in the mailbox).
    await asyncio.to_thread(dovecot.append, notice("2025550177@sms.example.org", "Notice 3"))

    async def four() -> bool:
        return len(await h.sms()) == 4

    await eventually(four, 10, "the notice after the restart")
    rows = await h.sms()
    assert sorted(r.msisdn for r in rows) == [
        "+12025550143",
        "+12025550167",
        "+12025550177",
        "+12025550188",
    ]
    queued = [r for r in caplog.records if "queued=" in r.getMessage()]
    assert len(queued) == 4
    state = await h.store.imap_state("lib")
    assert state is not None and state[1] == 4


async def test_bad_number_is_bounced_and_parked_not_retried(
    harness: Callable[..., Awaitable[Harness]], dovecot: Dovecot
) -> None:
    h = await harness()
    await h.start()
    await asyncio.to_thread(
        dovecot.append, notice("12345@sms.example.org", "Your hold is ready", msgid="bad1")
    )

    async def parked() -> bool:
        return await asyncio.to_thread(dovecot.uids, "sms-bridge-errors") == [1]

    await eventually(parked, 10, "the notice in the error folder")
    assert await asyncio.to_thread(dovecot.uids) == []
    assert await h.sms() == []
    assert h.wakes == 1
    mails = [rec.mail for rec in await h.store.claim_mail(time.time() + 1, 10)]
    assert [(m.kind, m.rcpt_to) for m in mails] == [("dsn", (FROM,))]
    assert mails[0].mail_from == ""
    assert b"12345@sms.example.org" in mails[0].data
    assert b"bad1@riverside.example.org" in mails[0].data
    # Restarting does not fetch it again: one bounce, ever.
    await h.stop()
    await h.start()
    # A good notice after the restart is taken: the mailbox has been read again by then.
    await asyncio.to_thread(dovecot.append, notice("2025550143@sms.example.org", "Good"))

    async def taken() -> bool:
        return len(await h.sms()) == 1

    await eventually(taken, 10, "the good notice after the restart")
    assert await h.store.mail_counts() == {"queued": 1}
    assert await asyncio.to_thread(dovecot.uids, "sms-bridge-errors") == [1]


async def test_partly_bad_recipients_text_the_good_and_bounce_the_bad(
    harness: Callable[..., Awaitable[Harness]], dovecot: Dovecot
) -> None:
    h = await harness()
    await h.start()
    raw = notice("2025550143@sms.example.org, 12345@sms.example.org", "Two patrons")
    await asyncio.to_thread(dovecot.append, raw)

    async def seen() -> bool:
        return await asyncio.to_thread(dovecot.flags) == {1: "\\Seen"}

    await eventually(seen, 10, "the notice flagged \\Seen")
    assert [r.msisdn for r in await h.sms()] == ["+12025550143"]
    assert await h.store.mail_counts() == {"queued": 1}
    assert await asyncio.to_thread(dovecot.mailboxes) == ["INBOX"]


@pytest.mark.parametrize("after", ["move", "delete"])
async def test_after_move_or_delete(
    harness: Callable[..., Awaitable[Harness]], dovecot: Dovecot, after: str
) -> None:
    # No fixed tenant: the notice's From picks the library (tenant senders).
    h = await harness(tenant=None, after=after, move_to="SMS sent")
    await h.start()
    await asyncio.to_thread(dovecot.append, notice("2025550143@sms.example.org", "Due soon"))

    async def gone() -> bool:
        return await asyncio.to_thread(dovecot.uids) == []

    await eventually(gone, 10, "the notice gone from INBOX")
    (rec,) = await h.sms()
    assert rec.tenant_id == "riverside" and rec.body == "Due soon"
    if after == "move":
        assert await asyncio.to_thread(dovecot.uids, "SMS sent") == [1]
    else:
        assert await asyncio.to_thread(dovecot.mailboxes) == ["INBOX"]


async def test_unknown_sender_is_parked_without_a_bounce(
    harness: Callable[..., Awaitable[Harness]], dovecot: Dovecot
) -> None:
    h = await harness(tenant=None)
    await h.start()
    raw = notice("2025550143@sms.example.org", "Buy now", sender="spam@elsewhere.example")
    await asyncio.to_thread(dovecot.append, raw)

    async def parked() -> bool:
        return await asyncio.to_thread(dovecot.uids, "sms-bridge-errors") == [1]

    await eventually(parked, 10, "the notice in the error folder")
    assert await h.sms() == []
    assert await h.store.mail_counts() == {}


async def test_dropped_connection_reconnects(
    harness: Callable[..., Awaitable[Harness]], dovecot: Dovecot
) -> None:
    """A connection that drops under an IDLE leads to backoff and a new session."""
    h = await harness()
    imap = await h.start()
    client = imap._client
    assert client is not None
    client._imap.protocol.transport.close()  # what a dropped TCP connection looks like to us

    async def back() -> bool:
        return imap._client is not client and imap.state == "idle"

    await eventually(back, 10, "a new IDLE session")
    await asyncio.to_thread(dovecot.append, notice("2025550143@sms.example.org", "After"))

    async def one() -> bool:
        return len(await h.sms()) == 1

    await eventually(one, 10, "the notice after reconnecting")
