"""IMAP intake over TLS against a real Dovecot with a self-signed certificate: implicit TLS
(RFC 8314 §3.2, the port-993 style) and STARTTLS (RFC 3501 §6.2.1) both take notices when the
certificate is trusted through tls_ca_file; with verification on and no CA file the bridge
must refuse the server before it sends the password."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.imap_intake import ImapIntake
from bridge.store import SqliteStore, Store
from tests.conftest import MakeConfig
from tests.flows.dovecot import Dovecot, dovecot_tls, dovecot_tls_server
from tests.flows.test_imap import Harness, imap_entry, notice
from tests.waiting import eventually

__all__ = ["dovecot_tls", "dovecot_tls_server"]  # fixtures, re-exported for pytest

# Dovecot's login log element %c: "TLS" for an encrypted session, "secured" for plaintext
# over loopback, so a plaintext login cannot pass for a TLS one.
_TLS_LOGIN = re.compile(r", TLS, ")


def tls_entry(dc: Dovecot, security: str, **over: Any) -> dict[str, Any]:
    assert dc.tls_port is not None and dc.cert is not None
    port = dc.tls_port if security == "tls" else dc.port
    return imap_entry(dc, security=security, port=port, **over)


@pytest.fixture
async def harness(
    make_config: MakeConfig, dovecot_tls: Dovecot, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    made: list[Harness] = []
    stores: list[Store] = []

    async def make(security: str, **over: Any) -> Harness:
        cfg = make_config({"imap": [tls_entry(dovecot_tls, security, **over)]})
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


def _tls_version(imap: ImapIntake) -> str | None:
    client = imap._client
    assert client is not None
    ssl_object = client._imap.protocol.transport.get_extra_info("ssl_object")
    return ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else None


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_notice_over_tls(  # short: the Dovecot user is the test id, cut at 40
    harness: Callable[..., Awaitable[Harness]], dovecot_tls: Dovecot, security: str
) -> None:
    assert dovecot_tls.cert is not None
    h = await harness(security, tls_ca_file=str(dovecot_tls.cert))
    imap = await h.start()  # returns once the intake is IDLE, i.e. logged in and selected
    # The bridge's side of the connection is TLS (after STARTTLS: the upgraded transport) ...
    assert _tls_version(imap) in ("TLSv1.2", "TLSv1.3")

    # ... and so is Dovecot's: its only login for this user so far is the bridge's.
    async def logged_in() -> bool:
        return len(dovecot_tls.logins()) == 1

    await eventually(logged_in, 5, "Dovecot's login log line")
    (login,) = dovecot_tls.logins()
    assert _TLS_LOGIN.search(login), login

    await asyncio.to_thread(
        dovecot_tls.append, notice("2025550143@sms.example.org", "Hold ready", msgid="t1")
    )

    async def seen() -> bool:
        return await asyncio.to_thread(dovecot_tls.flags) == {1: "\\Seen"}

    await eventually(seen, 5, "the notice flagged \\Seen")
    (rec,) = await h.sms()
    assert rec.msisdn == "+12025550143"
    assert rec.body == "Hold ready"
    assert rec.tenant_id == "riverside"
    state = await h.store.imap_state("lib")
    assert state is not None and state[1] == 1


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_untrusted_cert_refused(
    make_config: MakeConfig,
    dovecot_tls: Dovecot,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    security: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.imap_intake")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "bridge.imap_intake"]

    # Mail waiting before the bridge connects: a bridge that skipped verification would
    # log in and queue it at once.
    await asyncio.to_thread(dovecot_tls.append, notice("2025550143@sms.example.org", "Secret"))
    cfg = make_config({"imap": [tls_entry(dovecot_tls, security, tls_verify=True)]})
    assert cfg.imap[0].tls_ca_file is None
    store = SqliteStore(tmp_path / "imap.db")
    await store.open()
    h = Harness(cfg, store)
    imap = ImapIntake(cfg, cfg.imap[0], h.intake, store)
    try:
        await imap.start()

        async def refused() -> bool:
            return imap.state.startswith("backoff:")

        await eventually(refused, 5, "the intake backing off")
        assert "certificate verify failed" in imap.state, imap.state

        # Every reconnect (backoff 0.05-0.5 s) is refused alike; none gets further.
        async def retried() -> bool:
            return len(warnings()) >= 3

        await eventually(retried, 5, "three refused connection attempts")
        assert all("certificate verify failed" in w for w in warnings()), warnings()
        assert imap.state == "connecting" or "certificate verify failed" in imap.state
        assert await h.sms() == []
        assert await store.imap_state("lib") is None  # never got as far as SELECT
        # The password was never sent: no TLS login (the test side's own logins are plain).
        assert [x for x in dovecot_tls.logins() if _TLS_LOGIN.search(x)] == []
        flags = await asyncio.to_thread(dovecot_tls.flags)
        assert list(flags) == [1] and "\\Seen" not in flags[1], flags
    finally:
        await asyncio.wait_for(imap.stop(), 10)
        await store.close()
    assert imap.state == "stopped"
