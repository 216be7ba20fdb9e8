"""IMAP intake: the pure helpers, and session behaviour against a scripted IMAP server.

The scripted server plays the misbehaving peers a real Dovecot will not: a server that answers
IDLE with BYE and then says nothing (aioimaplib's `idle_start()` hangs forever on that), a server
without IDLE, a mailbox whose UIDVALIDITY changed. (aioimaplib's own test server needs pytz,
which is not a dependency.)
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bridge.config import Config
from bridge.imap_client import (
    ImapError,
    encode_mailbox,
    fetched_message,
    parse_search,
    parse_uidvalidity,
)
from bridge.imap_intake import (
    After,
    ImapIntake,
    after_action,
    notice_recipients,
    notice_sender,
    refusal_bounces,
)
from bridge.intake import Intake, Rejected
from bridge.mailbuild import NoticeRef
from bridge.store import Store
from tests.conftest import MakeConfig, tenant
from tests.waiting import eventually

# --- pure helpers ----------------------------------------------------------------------------


def test_parse_search_drops_the_star_quirk_and_the_completion_line() -> None:
    # RFC 3501: "UID 8:*" matches the last message even when its UID is 7.
    assert parse_search([b"7", b"Search completed (0.001 secs)."], 7) == []
    assert parse_search([b"9 8 12", b"Search completed 3."], 7) == [8, 9, 12]
    assert parse_search([b"", b"Search completed."], 0) == []


def test_parse_uidvalidity() -> None:
    lines = [b"FLAGS (\\Seen)", b"2 EXISTS", b"OK [UIDVALIDITY 1795423390] UIDs valid", b"done"]
    assert parse_uidvalidity(lines) == 1795423390
    with pytest.raises(ImapError):
        parse_uidvalidity([b"2 EXISTS", b"[READ-WRITE] Select completed"])


def test_fetched_message_is_the_literal() -> None:
    lines = [b"2 FETCH (UID 2 BODY[] {5}", bytearray(b"hello"), b")", b"Fetch completed."]
    assert fetched_message(lines) == b"hello"
    assert fetched_message([b"Fetch completed."]) is None


def test_encode_mailbox_modified_utf7() -> None:
    # The example of RFC 3501 §5.1.3.
    assert encode_mailbox("~peter/mail/台北/日本語") == '"~peter/mail/&U,BTFw-/&ZeVnLIqe-"'
    assert encode_mailbox("SMS errors") == '"SMS errors"'
    assert encode_mailbox('A&B "x"\\') == '"A&-B \\"x\\"\\\\"'


def test_encode_mailbox_non_bmp_is_a_surrogate_pair() -> None:
    # U+1F4DA is D83D DCDA in UTF-16; base64 "2D3c2g==" without padding (RFC 3501 §5.1.3).
    assert encode_mailbox("Ausgang 📚") == '"Ausgang &2D3c2g-"'


def _msg(headers: str) -> email.message.Message:
    return email.message_from_string(headers + "\n\nbody\n", policy=email.policy.compat32)


def test_notice_recipients_only_sms_domains_deduplicated() -> None:
    msg = _msg(
        "To: Jane <2025550143@SMS.example.org>, staff@lib.example.org\n"
        "Cc: 2025550167@sms.example.org\n"
        "Delivered-To: 2025550143@sms.example.org\n"
        "X-Original-To: 2025550188@sms.example.org"
    )
    assert notice_recipients(msg, ["sms.example.org"]) == [
        "2025550143@SMS.example.org",
        "2025550167@sms.example.org",
        "2025550188@sms.example.org",
    ]
    assert notice_recipients(_msg("To: a@b.example"), ["sms.example.org"]) == []


def test_notice_sender_prefers_return_path_and_honours_null() -> None:
    assert notice_sender(_msg("Return-Path: <ils@lib.org>\nFrom: x@y.org")) == "ils@lib.org"
    assert notice_sender(_msg("Return-Path: <>\nFrom: x@y.org")) == ""
    assert notice_sender(_msg("Sender: s@lib.org\nFrom: x@y.org")) == "s@lib.org"
    assert notice_sender(_msg("From: Lib <x@y.org>")) == "x@y.org"
    assert notice_sender(_msg("Subject: none")) == ""


def test_after_action_follows_the_box_and_parks_refusals(make_config: MakeConfig) -> None:
    def box(**over: Any) -> Any:
        return _cfg(make_config, 143, **over).imap[0]

    assert after_action(box(), True) == After(flags="\\Seen")
    assert after_action(box(after="move", move_to="Sent SMS"), True) == After(folder="Sent SMS")
    assert after_action(box(after="delete"), True) == After(flags="\\Deleted", expunge=True)
    for after in ("seen", "move", "delete"):
        parked = after_action(box(after=after, move_to="Sent SMS"), False)
        assert parked == After(folder="sms-bridge-errors")


def _notice(sender: str) -> NoticeRef:
    return NoticeRef("imap-lib-7-3", "<n1@lib.org>", "Hold ready", sender, "Riverside")


def test_refusal_bounces_one_dsn_per_refused_recipient_and_address(
    make_config: MakeConfig,
) -> None:
    riverside_both = tenant(bounce_mode="both", bounce_to="desk@lib.org")
    cfg = _cfg(lambda over: make_config({**over, "tenants": [riverside_both]}), 143)
    box, riverside = cfg.imap[0], cfg.tenant("riverside")
    bad = Rejected(553, "5.1.3", "not a phone number")
    refused = [("12345@sms.example.org", bad), ("", bad)]
    mails = refusal_bounces(cfg, box, riverside, _notice("ils@lib.org"), refused, 1e9)
    assert [m.rcpt_to for m in mails] == [("ils@lib.org",), ("desk@lib.org",)] * 2
    assert {m.ref for m in mails} == {"imap-lib-7-3"}
    texts = [m.data.decode() for m in mails]
    human = email.message_from_bytes(mails[0].data, policy=email.policy.default)
    first_part = next(part for part in human.walk() if part.get_content_type() == "text/plain")
    assert "Final-Recipient: rfc822; 12345@sms.example.org" in texts[0]
    # No SMS address to name: the mailbox's user stands in, else the bridge itself.
    assert "(no SMS address)" in texts[2]
    # the advice for 5.1.3 (bridge/bounces.py)
    assert "it must be a mobile number" in " ".join(first_part.get_content().split())
    # Never a bounce to the bridge's own address: only bounce_to is told.
    ours = refusal_bounces(cfg, box, riverside, _notice(cfg.mail.from_), refused[:1], 1e9)
    assert [m.rcpt_to for m in ours] == [("desk@lib.org",)]


# --- a scripted IMAP server -------------------------------------------------------------------


class FakeImap:
    """Just enough IMAP4rev1 to drive one ImapIntake session; every command is recorded."""

    def __init__(
        self,
        *,
        caps: str = "IMAP4rev1 IDLE UIDPLUS MOVE",
        uidvalidity: int = 7,
        idle: str = "ok",  # "ok": + idling, "bye": * BYE then silence
        messages: dict[int, bytes] | None = None,
        login_ok: bool = True,
    ) -> None:
        self.caps = caps
        self.login_ok = login_ok
        self.uidvalidity = uidvalidity
        self.idle = idle
        self.messages = messages or {}
        self.commands: list[str] = []
        self.connections = 0
        self.port = 0
        self._idle_tag = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def count(self, prefix: str) -> int:
        return sum(1 for c in self.commands if c.upper().startswith(prefix))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        writer.write(b"* OK fake ready\r\n")
        try:
            while line := await reader.readline():
                text = line.decode().rstrip("\r\n")
                if text == "DONE":  # RFC 2177: ends the IDLE command, answered with its tag
                    self.commands.append("DONE")
                    writer.write(f"{self._idle_tag} OK idle done\r\n".encode())
                    await writer.drain()
                    continue
                tag, _, command = text.partition(" ")
                self.commands.append(command)
                if command.upper() == "IDLE":
                    self._idle_tag = tag
                writer.write(self._answer(tag, command))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _answer(self, tag: str, command: str) -> bytes:
        word = command.split(" ", 1)[0].upper()
        rest = command[len(word) + 1 :].upper()
        if word == "CAPABILITY":
            out = f"* CAPABILITY {self.caps}\r\n{tag} OK done\r\n"
        elif word == "LOGIN" and not self.login_ok:
            out = f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
        elif word in ("LOGIN", "CREATE", "NOOP"):
            out = f"{tag} OK done\r\n"
        elif word == "SELECT":
            out = (
                f"* {len(self.messages)} EXISTS\r\n"
                f"* OK [UIDVALIDITY {self.uidvalidity}] UIDs valid\r\n"
                f"{tag} OK [READ-WRITE] done\r\n"
            )
        elif word == "UID" and rest.startswith("SEARCH"):
            uids = " ".join(str(u) for u in sorted(self.messages))
            out = f"* SEARCH {uids}\r\n{tag} OK done\r\n".replace("SEARCH \r", "SEARCH\r")
        elif word == "UID" and rest.startswith("FETCH"):
            uid = int(rest.split()[1])
            raw = self.messages[uid]
            return (
                f"* 1 FETCH (UID {uid} BODY[] {{{len(raw)}}}\r\n".encode()
                + raw
                + f")\r\n{tag} OK done\r\n".encode()
            )
        elif word == "UID":
            out = f"{tag} OK done\r\n"
        elif word == "IDLE":
            out = "+ idling\r\n" if self.idle == "ok" else "* BYE going away\r\n"
        elif word == "LOGOUT":
            out = f"* BYE bye\r\n{tag} OK done\r\n"
        else:
            out = f"{tag} BAD unknown\r\n"
        return out.encode()


@pytest.fixture
async def fake() -> AsyncIterator[Callable[..., Awaitable[FakeImap]]]:
    servers: list[FakeImap] = []

    async def make(**kwargs: Any) -> FakeImap:
        server = FakeImap(**kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.stop()


def _cfg(make_config: MakeConfig, port: int, **over: Any) -> Config:
    entry = {
        "name": "lib",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "user": "library",
        "password": "x",
        "tenant": "riverside",
        "timeout_s": 0.3,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.1,
        "poll_s": 0.1,
    }
    entry.update(over)
    return make_config({"imap": [entry]})


async def test_bye_in_answer_to_idle_times_out_and_reconnects(
    make_config: MakeConfig,
    store: Store,
    fake: Callable[..., Awaitable[FakeImap]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await fake(idle="bye")
    cfg = _cfg(make_config, server.port)
    imap = ImapIntake(cfg, cfg.imap[0], Intake(cfg, store), store)
    await imap.start()
    try:
        await eventually(lambda: server.connections >= 3, 5, "three connections")
    finally:
        await asyncio.wait_for(imap.stop(), 5)
    assert server.count("IDLE") >= 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("imap lib: timed out; reconnecting" in m for m in warnings)


async def test_refused_login_backs_off_with_the_servers_words(
    make_config: MakeConfig,
    store: Store,
    fake: Callable[..., Awaitable[FakeImap]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await fake(login_ok=False)
    cfg = _cfg(make_config, server.port)
    imap = ImapIntake(cfg, cfg.imap[0], Intake(cfg, store), store)
    await imap.start()
    try:
        await eventually(lambda: server.connections >= 2, 5, "a second attempt")
    finally:
        await asyncio.wait_for(imap.stop(), 5)
    assert server.count("SELECT") == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    expected = "login refused for library: [AUTHENTICATIONFAILED] Authentication failed."
    assert any(expected in r.getMessage() for r in warnings), [r.getMessage() for r in warnings]
    assert not any(r.exc_info for r in warnings)  # a refusal is no bug: no traceback


async def test_without_idle_the_mailbox_is_polled(
    make_config: MakeConfig, store: Store, fake: Callable[..., Awaitable[FakeImap]]
) -> None:
    server = await fake(caps="IMAP4rev1")
    cfg = _cfg(make_config, server.port)
    imap = ImapIntake(cfg, cfg.imap[0], Intake(cfg, store), store)
    await imap.start()
    try:
        await eventually(lambda: server.count("UID SEARCH") >= 3, 5, "three searches")
        assert imap.state in ("polling", "processing")
    finally:
        await asyncio.wait_for(imap.stop(), 5)
    assert server.connections == 1
    assert server.count("IDLE") == 0
    assert server.count("LOGOUT") == 1  # stop() logs out politely


async def test_changed_uidvalidity_rescans_unseen_from_uid_1(
    make_config: MakeConfig,
    store: Store,
    fake: Callable[..., Awaitable[FakeImap]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await fake(caps="IMAP4rev1", uidvalidity=99)
    await store.set_imap_state("lib", 5, 40, 0.0)
    cfg = _cfg(make_config, server.port)
    imap = ImapIntake(cfg, cfg.imap[0], Intake(cfg, store), store)
    await imap.start()
    try:
        await eventually(lambda: server.count("UID SEARCH") >= 1, 5, "a search")
    finally:
        await asyncio.wait_for(imap.stop(), 5)
    assert server.commands[server.commands.index("UID SEARCH UID 1:* UNSEEN")]
    assert await store.imap_state("lib") == (99, 0)
    assert any("UIDVALIDITY changed 5 -> 99" in r.getMessage() for r in caplog.records)


NOTICE = (
    b"From: ils@riverside.example.org\r\nTo: 2025550143@sms.example.org\r\n"
    b"Subject: x\r\n\r\nYour hold is ready.\r\n"
)


async def test_temporary_refusal_neither_advances_nor_flags(
    make_config: MakeConfig,
    store: Store,
    fake: Callable[..., Awaitable[FakeImap]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = await fake(caps="IMAP4rev1", messages={3: NOTICE})
    cfg = _cfg(make_config, server.port)
    intake = Intake(cfg, store)

    async def queue_full() -> None:
        raise Rejected(452, "4.3.1", "queue full")

    monkeypatch.setattr(intake, "check_backlog", queue_full)
    imap = ImapIntake(cfg, cfg.imap[0], intake, store)
    await imap.start()
    try:
        await eventually(lambda: server.connections >= 2, 5, "a retry on a new connection")
        # between retries it backs off; by the time we look it may already be reconnecting
        assert imap.state.startswith("backoff: 452 4.3.1") or imap.state in (
            "connecting",
            "processing",
        )
    finally:
        await asyncio.wait_for(imap.stop(), 5)
    assert await store.imap_state("lib") == (7, 0)
    assert server.count("UID STORE") == 0
    assert await store.counts() == {}

    # Once the queue has room the same message is taken, flagged, and the mark advances.
    monkeypatch.undo()
    intake = Intake(cfg, store)
    imap = ImapIntake(cfg, cfg.imap[0], intake, store)
    await imap.start()
    try:
        await eventually(lambda: server.count("UID STORE") >= 1, 5, "the \\Seen flag")
    finally:
        await asyncio.wait_for(imap.stop(), 5)
    assert "UID STORE 3 +FLAGS.SILENT (\\Seen)" in server.commands
    assert await store.imap_state("lib") == (7, 3)
    assert await store.counts() == {"queued": 1}
