"""The admin HTTP listener over real sockets, in front of a real bridge (simulator + SMTP sink)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics
from bridge.model import OptoutRecord, SmsRecord, SmsState
from bridge.statuspage import LibraryInput
from bridge.store import SmsFilter, Store, StoreError
from bridge.store.base import Activity
from bridge.web import (
    HEAD_LIMIT,
    AdminServer,
    Health,
    StatusData,
    check_health,
    parse_request_head,
    render_status_page,
)
from tests.flows.harness import Env
from tests.peers import require_peer
from tests.smtp_client import notice, send
from tests.waiting import eventually

FROM = "ils@riverside.example.org"
TO = "2025550143@sms.example.org"
FULL_NUMBER_FORMS = ("2025550143", "202-555-0143", "202 555 0143", "(202) 555-0143")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


async def http(port: int, raw: bytes, timeout: float = 5.0) -> Reply:  # noqa: ASYNC109
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            await writer.drain()
            data = await reader.read()  # the server closes: Connection: close
        finally:
            writer.close()
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Reply(status, headers, body)


async def get(port: int, path: str, method: str = "GET") -> Reply:
    return await http(port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


@pytest.fixture
async def admin(env: Env) -> AsyncIterator[AdminServer]:
    server = AdminServer("127.0.0.1", 0, env.bridge, metrics=Metrics())
    await server.start()
    try:
        yield server
    finally:
        await asyncio.wait_for(server.stop(), 5)


# ----------------------------------------------------------------------------- /healthz


async def test_healthz_ok_when_store_answers_and_smsc_bound(admin: AdminServer) -> None:
    assert admin.port > 0
    r = await get(admin.port, "/healthz")
    assert r.status == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["connection"] == "close"
    assert json.loads(r.body) == {
        "status": "ok",
        "store": "ok",
        "smsc": "bound",
        "receipts": "ok (none yet)",
    }


async def test_healthz_503_with_reason_when_smsc_down(env: Env, admin: AdminServer) -> None:
    session = env.bridge.session
    assert session is not None
    env.sim.set_scenario("refuse_bind")
    await env.sim.stop()
    await eventually(lambda: not session.bound, 5, "the session to unbind")
    r = await get(admin.port, "/healthz")
    assert r.status == 503
    doc = json.loads(r.body)
    assert doc["status"] == "unavailable" and doc["store"] == "ok"
    assert doc["smsc"] != "bound" and doc["smsc"].split(" ")[0] in (
        "connecting",
        "backoff",
    )


class _BrokenStore:
    async def ping(self) -> int:
        raise StoreError("the store could not commit: disk I/O error")

    async def counts(self) -> dict[str, int]:
        raise StoreError("disk I/O error")

    async def mail_counts(self) -> dict[str, int]:
        raise StoreError("disk I/O error")

    async def list_sms(self, flt: SmsFilter, now: float) -> list[SmsRecord]:
        raise StoreError("disk I/O error")

    async def list_optouts(self, scope: str | None = None) -> list[OptoutRecord]:
        raise StoreError("disk I/O error")

    async def activity(self, since: float) -> Activity:
        raise StoreError("disk I/O error")


class _HungStore(_BrokenStore):
    async def ping(self) -> int:
        await asyncio.Event().wait()  # never answers
        return 1


@dataclass
class _FakeBridge:
    store: Store  # a fake answering only what the admin listener asks: cast(Store, ...)
    session: Any = None
    clock: Callable[[], float] = lambda: 1_700_000_000.0
    libraries: list[LibraryInput] = field(default_factory=list)


async def test_healthz_503_when_store_fails() -> None:
    server = AdminServer("127.0.0.1", 0, _FakeBridge(cast(Store, _BrokenStore())))
    await server.start()
    try:
        r = await get(server.port, "/healthz")
        assert r.status == 503
        doc = json.loads(r.body)
        assert doc["store"] == "error: the store could not commit: disk I/O error"
        assert doc["smsc"] == "not started"
        # the page and the metrics still answer with what they can
        page = await get(server.port, "/")
        assert page.status == 200 and "disk I/O error" in page.text
        metrics = await get(server.port, "/metrics")
        assert metrics.status == 200
        assert "sms_bridge_metrics_refresh_errors_total 1.0" in metrics.text
    finally:
        await asyncio.wait_for(server.stop(), 5)


async def test_health_times_out_on_a_hung_store() -> None:
    health = await asyncio.wait_for(
        check_health(_FakeBridge(cast(Store, _HungStore())), timeout_s=0.2), 5
    )
    assert health == Health(store="no answer within 0.2 s", smsc="not started")
    assert not health.ok


# ----------------------------------------------------------------------------- /metrics


async def test_metrics_scrape_reads_queue_from_the_store(env: Env, admin: AdminServer) -> None:
    conv = await send(env.smtp_port, FROM, [TO], notice("Your hold is ready."))
    (qid,) = conv.queue_ids
    await env.wait_state(qid, SmsState.DELIVERED)
    r = await get(admin.port, "/metrics")
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }
    assert samples[("sms_bridge_queue_messages", (("state", "delivered"),))] == 1
    assert samples[("sms_bridge_queue_messages", (("state", "queued"),))] == 0
    assert samples[("sms_bridge_mail_outbox_messages", (("state", "queued"),))] == 0
    assert "2025550143" not in r.text


async def test_head_has_headers_and_no_body(admin: AdminServer) -> None:
    r = await get(admin.port, "/metrics", method="HEAD")
    assert r.status == 200
    assert int(r.headers["content-length"]) > 100
    assert r.body == b""


# ----------------------------------------------------------------------------- status page


async def test_status_page_shows_state_without_full_numbers(env: Env, admin: AdminServer) -> None:
    env.sim.set_scenario("reject:0x0B")
    conv = await send(env.smtp_port, FROM, [TO], notice("Your hold is ready."))
    (qid,) = conv.queue_ids
    await env.wait_state(qid, SmsState.FAILED)
    await env.bridge.store.set_optout(
        OptoutRecord("+12025550199", "+12025550100", True, "STOP", 1.0, "patron")
    )
    r = await get(admin.port, "/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert '<meta http-equiv="refresh" content="10">' in page
    assert '<td class="ok" id="smsc">bound</td>' in page
    assert "<script" not in page
    assert "<h3>riverside</h3>" in page
    assert qid in page
    assert "the carrier rejected the destination number" in page
    assert "+1********43" in page
    assert '<td class="n" id="optouts">1</td>' in page
    for form in (*FULL_NUMBER_FORMS, "2025550199", "Your hold is ready"):
        assert form not in page, form


async def test_status_page_shows_each_library_today_and_the_last_24_hours(
    env: Env, admin: AdminServer
) -> None:
    # two delivered, one rejected by the carrier, a patron reply and a STOP
    for i in range(2):
        conv = await send(
            env.smtp_port, FROM, [TO], notice(f"Hold {i} is ready.", Message_ID=f"<ok{i}@x>")
        )
        await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    env.sim.set_scenario("reject:0x0B")
    conv = await send(env.smtp_port, FROM, ["2025550188@sms.example.org"], notice("Due soon."))
    await env.wait_state(conv.queue_ids[0], SmsState.FAILED)
    env.sim.set_scenario("ok")
    assert await env.sim.inject_mo("+12025550143", "+12025550100", "Can I renew?") == [0]
    assert await env.sim.inject_mo("+12025550177", "+12025550100", "STOP") == [0]

    page = (await get(admin.port, "/")).text
    for key, n in {"sent": 3, "delivered": 2, "failed": 1, "replies": 1, "optouts": 1}.items():
        assert f'data-k="today-{key}">{n}<' in page, key
        assert f'data-k="week-{key}">{n}<' in page, key
    assert "Riverside Public Library" in page
    assert "Numbers to fix in the ILS" in page and "+1********88" in page
    assert '<svg id="chart24h"' in page
    assert len(re.findall(r'class="bar-delivered"', page)) == 1  # one hour, one bar
    assert len(re.findall(r'class="bar-failed"', page)) == 1
    for form in (*FULL_NUMBER_FORMS, "2025550188", "2025550177", "Can I renew"):
        assert form not in page, form


def _rec(**over: Any) -> SmsRecord:
    base: dict[str, Any] = {
        "queue_id": "0190abcdef12345678",
        "tenant_id": "riverside",
        "msisdn": "+12025550143",
        "rcpt_addr": TO,
        "source_addr": "12025550100",
        "envelope_from": FROM,
        "message_id": "<m@x>",
        "subject": "Hold",
        "body": "secret body",
        "state": SmsState.FAILED,
        "attempts": 3,
        "reason": "x",
        "created_at": 1_700_000_000.0,
        "updated_at": 1_700_000_000.0,
        "next_attempt_at": 1_700_000_000.0,
        "segments": 1,
        "coding": "gsm7",
    }
    base.update(over)
    return SmsRecord(**base)


def test_status_page_escapes_everything_from_the_store() -> None:
    data = StatusData(
        now=1_700_000_000.0,
        health=Health(store="ok", smsc="bind_failed: <b>x</b>"),
        smsc_state="bind_failed",
        tps=None,
        queue={"failed": 2, "<i>": 1},
        mail={},
        failures=[
            _rec(reason="<script>alert(1)</script>", tenant_id="a&b"),
            _rec(queue_id="q2", reason=None, tenant_id="zeta", msisdn="+442079460123"),
        ],
        optouts={},
    )
    page = render_status_page(data)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h3>a&amp;b</h3>" in page and "<h3>zeta</h3>" in page
    assert page.index("a&amp;b") < page.index("zeta")
    assert '<td class="bad" id="smsc">bind_failed: &lt;b&gt;x&lt;/b&gt;</td>' in page
    assert "&lt;i&gt;" in page
    assert "+44********23" in page and "2079460123" not in page
    assert "secret body" not in page
    assert "No patron has opted out." in page
    assert "2023-11-14 22:13:20 UTC" in page


# ----------------------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0),
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET /\r\n\r\n", 400),
        (b"GET http://x/ HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
    ],
)
def test_parse_request_head(head: bytes, status: int) -> None:
    parsed = parse_request_head(head)
    if status == 0:
        assert not hasattr(parsed, "status")
    else:
        assert getattr(parsed, "status", None) == status


async def test_unknown_path_query_and_methods(admin: AdminServer) -> None:
    assert (await get(admin.port, "/nope")).status == 404
    assert (await get(admin.port, "/healthz?x=1")).status == 200
    r = await get(admin.port, "/", method="DELETE")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"


async def test_oversized_head_is_refused(admin: AdminServer) -> None:
    raw = b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * HEAD_LIMIT + b"\r\n\r\n"
    r = await http(admin.port, raw)
    assert r.status == 431


async def test_slow_client_gets_408_and_listener_keeps_serving(env: Env) -> None:
    server = AdminServer("127.0.0.1", 0, env.bridge, read_timeout_s=0.3)
    await server.start()
    try:
        r = await http(server.port, b"GET / HTTP/1.1\r\n")  # head never finished
        assert r.status == 408
        assert (await get(server.port, "/healthz")).status == 200
    finally:
        await asyncio.wait_for(server.stop(), 5)


async def test_stop_closes_idle_connections(env: Env) -> None:
    server = AdminServer("127.0.0.1", 0, env.bridge, read_timeout_s=30)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # the listener has taken the connection (and waits for its request)
        await eventually(lambda: server._conns, 5, "the listener to take the connection")
        await asyncio.wait_for(server.stop(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), 5)


# ----------------------------------------------------------------------------- browser


async def _run(cmd: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 25)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


async def test_status_page_renders_in_headless_chromium(
    env: Env, admin: AdminServer, tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None:
        require_peer("Chromium", "not installed (Debian: apt-get install chromium)")
    for i in range(3):
        conv = await send(env.smtp_port, FROM, [TO], notice(f"Hold {i}.", Message_ID=f"<c{i}@x>"))
        await env.wait_state(conv.queue_ids[0], SmsState.DELIVERED)
    shot = tmp_path / "status.png"
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        # a phone's viewport: the page must be readable there
        "--window-size=412,1600",
        f"--screenshot={shot}",
        f"http://127.0.0.1:{admin.port}/",
    ]
    await _run(cmd)
    # the DOM as the browser built it: the page parsed, and shows the live bind state
    dom = await _run([*cmd[:-2], "--dump-dom", cmd[-1]])
    assert '<td class="ok" id="smsc">bound</td>' in dom
    assert 'data-k="today-delivered">3<' in dom
    assert '<rect class="bar-delivered"' in dom
    width, height, pixels = _read_png(shot.read_bytes())
    assert (width, height) == (412, 1600)
    # the chart's delivered bar is drawn: pixels of its colour, and none wider than the screen
    green = [i for i in range(0, len(pixels), 4) if pixels[i : i + 3] == bytes.fromhex("1a7f37")]
    assert len(green) > 50, len(green)
    columns = {(i // 4) % width for i in green}
    assert max(columns) < width - 1


def _read_png(data: bytes) -> tuple[int, int, bytes]:
    """Width, height and RGBA rows of an 8-bit RGB(A) PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
        if kind == b"IHDR":
            width, height = int.from_bytes(body[:4], "big"), int.from_bytes(body[4:8], "big")
            assert body[8] == 8 and body[9] in (2, 6) and body[12] == 0, body
            channels = 4 if body[9] == 6 else 3
        elif kind == b"IDAT":
            idat += body
        pos += 12 + size
    raw, stride = zlib.decompress(idat), width * channels
    out, prev = bytearray(), bytearray(stride)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, row = line[0], bytearray(line[1:])
        for x in range(stride):  # RFC 2083 §6: undo the row filter
            a = row[x - channels] if x >= channels else 0
            b, c = prev[x], prev[x - channels] if x >= channels else 0
            if kind == 1:
                row[x] = (row[x] + a) & 0xFF
            elif kind == 2:
                row[x] = (row[x] + b) & 0xFF
            elif kind == 3:
                row[x] = (row[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                row[x] = (row[x] + pred) & 0xFF
        prev = row
        for x in range(width):
            px = row[x * channels : (x + 1) * channels]
            out += px if channels == 4 else px + b"\xff"
    return width, height, bytes(out)
