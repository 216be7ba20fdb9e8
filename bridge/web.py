"""Admin HTTP listener: ``/metrics`` (Prometheus), ``/healthz`` and a read-only status page.

A deliberately small HTTP/1.1 server on asyncio streams (aiohttp is not a dependency and three
read-only routes do not need one). It is strict because it sits beside patron data: GET and HEAD
only (RFC 9110 §9.1 requires HEAD wherever GET is served), one request per connection
(``Connection: close``, RFC 9112 §9.6), the request line and headers limited to 8 KiB and 5 s,
no request body read. It listens on loopback by default (``admin.listen``); anything wider
belongs behind a reverse proxy that adds authentication.

The status page shows no patron number in full (``addressing.mask_msisdn``) and no message text:
library patron privacy applies to the people who run the bridge too.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from bridge import statuspage
from bridge.addressing import mask_msisdn
from bridge.metrics import CONTENT_TYPE, MAIL_STATES, QUEUE_STATES, Metrics
from bridge.model import SmsRecord
from bridge.receipt_watch import ReceiptHealth
from bridge.statuspage import LibraryInput, LibraryStats
from bridge.store import SmsFilter, Store
from bridge.store.base import LostMail

log = logging.getLogger(__name__)

__all__ = [
    "HEAD_LIMIT",
    "HEALTH_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "RECENT_FAILURES",
    "AdminServer",
    "BridgeView",
    "Health",
    "SessionView",
    "check_health",
    "render_status_page",
]

T = TypeVar("T")

HEAD_LIMIT = 8 * 1024  # request line + headers
READ_TIMEOUT_S = 5.0  # slow-loris guard: the whole head must arrive within this
HEALTH_TIMEOUT_S = 2.0  # a store slower than this is not healthy, whatever it answers later
RECENT_FAILURES = 20
# Lost emails (bounced or refused replies, notifications, reports) shown: this many, this recent.
RECENT_LOST = 20
RECENT_LOST_S = 7 * 86400.0
REFRESH_S = 10  # status page auto-refresh

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

# The page has inline CSS and nothing else: no script, no images, no frames.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_HTML_HEADERS = (("Content-Security-Policy", _CSP), ("Referrer-Policy", "no-referrer"))


# ----------------------------------------------------------------------------- what we read


class SessionView(Protocol):
    @property
    def bound(self) -> bool: ...

    @property
    def state(self) -> str: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def current_tps(self) -> float: ...


class BridgeView(Protocol):
    """Read-only properties, so a real ``Bridge`` (plain attributes) satisfies it."""

    @property
    def store(self) -> Store: ...

    @property
    def session(self) -> SessionView | None: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def libraries(self) -> list[LibraryInput]: ...


# ----------------------------------------------------------------------------- health


@dataclass(frozen=True)
class Health:
    store: str  # "ok" or why not
    smsc: str  # "bound" or the session state / last error
    # Detail only, not part of `ok`: a carrier that sends no receipts still takes texts, so the
    # instance stays in service; alert on sms_bridge_receipts_missing instead.
    receipts: str = "not checked yet"

    @property
    def ok(self) -> bool:
        return self.store == "ok" and self.smsc == "bound"

    def as_json(self) -> bytes:
        return json.dumps({"status": "ok" if self.ok else "unavailable", **self.__dict__}).encode()


async def check_health(bridge: BridgeView, timeout_s: float = HEALTH_TIMEOUT_S) -> Health:
    """Store: a trivial query through the store's writer thread, which opens every batch with
    BEGIN IMMEDIATE (so an answer means the write lock could be taken, and COMMIT succeeded).
    SMSC: the session is bound."""
    try:
        async with asyncio.timeout(timeout_s):
            store = "ok" if await bridge.store.ping() == 1 else "unexpected answer"
    except TimeoutError:
        store = f"no answer within {timeout_s:g} s"
    except Exception as exc:  # any failure is the answer here; CancelledError passes
        store = f"error: {exc}"
    session = bridge.session
    if session is None:
        smsc = "not started"
    elif session.bound:
        smsc = "bound"
    else:
        smsc = session.state + (f" ({session.last_error})" if session.last_error else "")
    receipts = receipt_health(bridge)
    return Health(
        store=store,
        smsc=smsc,
        receipts=receipts.describe() if receipts is not None else "not checked yet",
    )


def receipt_health(bridge: BridgeView) -> ReceiptHealth | None:
    """The inbound router's last receipt check (bridge/receipt_watch.py), when there is one."""
    health = getattr(getattr(bridge, "inbound", None), "receipt_health", None)
    return health if isinstance(health, ReceiptHealth) else None


# ----------------------------------------------------------------------------- status page

_CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:60em;color:#222;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.4em 0}th,td{padding:.2em .7em;text-align:left;
border-bottom:1px solid #eee;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#b3261e;font-weight:bold}
.muted{color:#666}footer{margin-top:2em;font-size:.85em;color:#666}
.card{display:inline-block;vertical-align:top;margin:0 1em 1em 0;padding:.3em .8em;
border:1px solid #ddd;border-radius:6px;min-width:16em}.card h3{margin:.3em 0}
.legend .key{margin-right:1em;white-space:nowrap}.sw{display:inline-block;width:.8em;
height:.8em;margin-right:.3em;border-radius:2px}.fixh{margin:.5em 0 0;font-weight:bold}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _count_table(title: str, counts: dict[str, int], seeded: tuple[str, ...]) -> str:
    states = [*seeded, *sorted(set(counts) - set(seeded))]
    rows = "".join(
        f'<tr><th scope="row">{_e(s)}</th><td class="n">{counts.get(s, 0)}</td></tr>'
        for s in states
    )
    return f"<h2>{_e(title)}</h2><table>{rows}</table>"


@dataclass(frozen=True)
class StatusData:
    now: float
    health: Health
    smsc_state: str
    tps: float | None
    queue: dict[str, int]
    mail: dict[str, int]
    failures: list[SmsRecord]
    optouts: dict[str, int]  # by scope (the library's sending number, not a patron's)
    libraries: list[LibraryStats] = field(default_factory=list)
    last_24h: list[dict[str, int]] = field(default_factory=list)  # per hour, by outcome
    chart_zone: str = "UTC"
    lost: list[LostMail] = field(default_factory=list)  # emails that never arrived, newest first
    receipts: ReceiptHealth | None = None


def _receipts_row(health: ReceiptHealth | None) -> str:
    """Whether the carrier sends delivery receipts on this bind; when it stopped, in words
    staff can act on (README: "The carrier sends no receipts")."""
    if health is None:
        text, cls = "not checked yet", "muted"
    elif not health.watching:
        text, cls = health.describe(), "muted"
    elif health.missing:
        text = (
            f"the carrier sends no receipts: none for the last {health.submits_since_receipt}"
            f" texts ({health.seconds_since_receipt / 60:.0f} min). Texts will end"
            " 'unconfirmed' rather than 'delivered'; ask the carrier or gateway to check"
            " delivery receipts for this account"
        )
        cls = "bad"
    else:
        text, cls = health.describe(), "ok"
    return f'<tr><th scope="row">receipts</th><td class="{cls}" id="receipts">{_e(text)}</td></tr>'


def render_status_page(data: StatusData) -> str:
    """The HTML page (pure). Every value from the store is escaped; numbers are masked."""
    h = data.health
    smsc_cls = "ok" if h.smsc == "bound" else "bad"
    store_cls = "ok" if h.store == "ok" else "bad"
    tps = f"{data.tps:.1f} messages/s" if data.tps is not None else "-"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_S}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>sms-bridge status</title><style>{_CSS}</style></head><body>",
        "<h1>sms-bridge status</h1>",
        "<h2>Carrier link (SMPP)</h2><table>",
        f'<tr><th scope="row">state</th><td class="{smsc_cls}" id="smsc">{_e(h.smsc)}</td></tr>',
        f'<tr><th scope="row">send rate</th><td>{_e(tps)}</td></tr>',
        _receipts_row(data.receipts),
        f'<tr><th scope="row">store</th><td class="{store_cls}" id="store">{_e(h.store)}</td></tr>',
        "</table>",
        "<h2>Last 24 hours</h2>",
        statuspage.chart_svg(data.last_24h, data.now, data.chart_zone)
        if data.last_24h
        else '<p class="muted">No figures: the store did not answer.</p>',
        "<h2>Libraries</h2>",
        statuspage.library_cards(data.libraries),
        _count_table("Text message queue", data.queue, QUEUE_STATES),
        _count_table("Outgoing email (replies, bounces)", data.mail, MAIL_STATES),
        "<h2>Opt-outs</h2>",
    ]
    if data.optouts:
        rows = "".join(
            f'<tr><th scope="row">{_e(scope)}</th><td class="n">{n}</td></tr>'
            for scope, n in sorted(data.optouts.items())
        )
        total = sum(data.optouts.values())
        parts.append(
            f"<table><tr><th>sending number</th><th>numbers opted out</th></tr>{rows}"
            f'<tr><th scope="row">total</th><td class="n" id="optouts">{total}</td></tr></table>'
        )
    else:
        parts.append('<p class="muted" id="optouts">No patron has opted out.</p>')
    parts.append(_lost_table(data.lost))
    parts.append(f"<h2>Recent failures (last {RECENT_FAILURES})</h2>")
    if not data.failures:
        parts.append('<p class="muted">None.</p>')
    by_tenant: dict[str, list[SmsRecord]] = {}
    for rec in data.failures:
        by_tenant.setdefault(rec.tenant_id, []).append(rec)
    for tenant in sorted(by_tenant):
        parts.append(
            f"<h3>{_e(tenant)}</h3><table><tr><th>when</th><th>queue id</th><th>number</th>"
            "<th>attempts</th><th>reason</th></tr>"
        )
        for rec in by_tenant[tenant]:
            parts.append(
                f"<tr><td>{_e(_utc(rec.updated_at))}</td><td><code>{_e(rec.queue_id)}</code></td>"
                f'<td>{_e(mask_msisdn(rec.msisdn))}</td><td class="n">{rec.attempts}</td>'
                f"<td>{_e(rec.reason or '-')}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        f"<footer>Generated {_e(_utc(data.now))}; refreshes every {REFRESH_S} s. "
        'Machine-readable: <a href="/metrics">/metrics</a>, <a href="/healthz">/healthz</a>.'
        "</footer></body></html>"
    )
    return "\n".join(parts)


_FALLBACK_SHOWN = {
    None: "none (no fallback address, or not a reply)",
    "queued": "being sent",
    "sent": "sent",
    "dead": "lost too",
    "bounced": "lost too",
}


def _lost_table(lost: list[LostMail]) -> str:
    """Emails the bridge sent that never arrived: a bounce came back or the relay refused
    them. A lost patron reply is what a library most needs to know about."""
    head = f"<h2>Lost emails (last {RECENT_LOST_S / 86400:.0f} days)</h2>"
    if not lost:
        return head + '<p class="muted" id="lost">None.</p>'
    rows = "".join(
        f"<tr><td>{_e(_utc(m.lost_at))}</td><td><code>{m.id}</code></td><td>{_e(m.kind)}</td>"
        f"<td>{_e(m.tenant_id or '-')}</td><td>{_e(', '.join(m.rcpt_to))}</td>"
        f"<td>{_e(m.reason)}</td>"
        f"<td>{_e(_FALLBACK_SHOWN.get(m.fallback_state, m.fallback_state or '-'))}</td></tr>"
        for m in lost
    )
    return (
        f'{head}<table id="lost"><tr><th>when</th><th>mail id</th><th>kind</th>'
        "<th>library</th><th>to</th><th>reason</th><th>fallback copy</th></tr>"
        f"{rows}</table>"
    )


async def gather_status(bridge: BridgeView) -> StatusData:
    health = await check_health(bridge)
    store = bridge.store
    now = bridge.clock()
    queue: dict[str, int] = {}
    mail: dict[str, int] = {}
    failures: list[SmsRecord] = []
    optouts: dict[str, int] = {}
    libraries: list[LibraryStats] = []
    last_24h: list[dict[str, int]] = []
    inputs = bridge.libraries
    lost: list[LostMail] = []
    if health.store == "ok":
        activity = await store.activity(now - statuspage.WEEK_S)
        libraries = statuspage.summarise(activity, inputs, now)
        last_24h = statuspage.hourly(activity, now)
        queue = await store.counts()
        mail = await store.mail_counts()
        failures = await store.list_sms(SmsFilter(state="failed", limit=RECENT_FAILURES), now)
        for rec in await store.list_optouts():
            optouts[rec.scope] = optouts.get(rec.scope, 0) + 1
        lost = await store.lost_mail(now - RECENT_LOST_S, limit=RECENT_LOST)
    session = bridge.session
    return StatusData(
        now=now,
        health=health,
        smsc_state=session.state if session is not None else "not started",
        tps=session.current_tps if session is not None else None,
        queue=queue,
        mail=mail,
        failures=failures,
        optouts=optouts,
        libraries=libraries,
        last_24h=last_24h,
        chart_zone=inputs[0].timezone if inputs else "UTC",
        lost=lost,
        receipts=receipt_health(bridge),
    )


# ----------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            f"Date: {_http_date(time.time())}",
            *(f"{k}: {v}" for k, v in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


def _http_date(ts: float) -> str:
    # RFC 9110 §5.6.7 IMF-fixdate
    return datetime.fromtimestamp(ts, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _text(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, (text + "\n").encode(), headers=headers)


@dataclass(frozen=True)
class Request:
    method: str
    path: str


def parse_request_head(head: bytes) -> Request | Response:
    """Request line and headers (RFC 9112 §3, §5) -> Request, or the error Response (pure)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return _text(400, "request head is not ASCII")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return _text(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        return _text(505, "only HTTP/1.0 and HTTP/1.1 are served")
    for line in lines[1:]:
        if not line:
            continue
        # RFC 9112 §5.1: no whitespace before the colon; obs-fold (§5.2) is refused.
        name, sep, _ = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            return _text(400, "malformed header field")
    if method not in ("GET", "HEAD"):
        return _text(405, "read-only: GET and HEAD only", (("Allow", "GET, HEAD"),))
    if not target.startswith("/"):
        return _text(400, "origin-form request target expected")
    return Request(method, target.split("?", 1)[0].split("#", 1)[0])


class AdminServer:
    """``await start()`` binds (port 0 picks a free one, see ``.port``); ``await stop()``."""

    def __init__(
        self,
        host: str,
        port: int,
        bridge: BridgeView,
        *,
        metrics: Metrics | None = None,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.host = host
        self._port = port
        self.bridge = bridge
        # Without the bridge's own Metrics the endpoint still serves the store gauges.
        self.metrics = metrics if metrics is not None else Metrics()
        self.read_timeout_s = read_timeout_s
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self._port, limit=HEAD_LIMIT
        )
        log.info("admin listener on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conns.add(task)
        try:
            await self._serve_one(reader, writer)
        except asyncio.CancelledError:
            raise
        except Exception:  # connection boundary: one bad request never stops the listener
            log.exception("admin listener: request failed")
        finally:
            if task is not None:
                self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head_only = False
        try:
            async with asyncio.timeout(self.read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            response: Response = _text(408, "request head not received in time")
        except asyncio.LimitOverrunError:
            response = _text(431, f"request line and headers exceed {HEAD_LIMIT} bytes")
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away before finishing its request
        else:
            parsed = parse_request_head(head)
            if isinstance(parsed, Response):
                response = parsed
            else:
                head_only = parsed.method == "HEAD"
                try:
                    response = await self._route(parsed.path)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("admin listener: %s failed", parsed.path)
                    response = _text(500, "internal error; see the bridge log")
        with contextlib.suppress(ConnectionError):
            writer.write(response.encode(head_only=head_only))
            await writer.drain()

    async def _route(self, path: str) -> Response:
        if path == "/metrics":
            await self.metrics.refresh(self.bridge.store)
            return Response(200, self.metrics.render(), CONTENT_TYPE)
        if path == "/healthz":
            health = await check_health(self.bridge)
            return Response(200 if health.ok else 503, health.as_json(), "application/json")
        if path in ("/", "/index.html"):
            page = render_status_page(await gather_status(self.bridge))
            return Response(200, page.encode(), "text/html; charset=utf-8", _HTML_HEADERS)
        return _text(404, "not found: try /, /metrics or /healthz")
