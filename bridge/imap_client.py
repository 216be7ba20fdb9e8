"""A small typed adapter over one aioimaplib connection: exactly the IMAP the intake uses.

aioimaplib answers every command with a raw `Response(result, lines)` and leaves the caller to
read OK/NO/BAD and the untagged data out of it; `ImapClient` does that once. Every call is
bounded by `timeout_s` with asyncio.timeout (aioimaplib 2.x can wait forever, e.g. in
`idle_start()` when a server answers IDLE with BYE), and every refusal or protocol failure is
one exception type, `ImapError`, carrying the server's words. Network errors (OSError, TLS
errors) and timeouts (TimeoutError) pass through as they are.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import ssl
from collections.abc import Awaitable, Sequence
from typing import Literal, NamedTuple, TypeVar

import aioimaplib

__all__ = [
    "ImapClient",
    "ImapError",
    "Security",
    "encode_mailbox",
    "fetched_message",
    "parse_search",
    "parse_uidvalidity",
]

T = TypeVar("T")

Security = Literal["none", "tls", "starttls"]

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.IGNORECASE)


class ImapError(Exception):
    """The server refused or broke off a step; the session is closed and retried."""


class _Response(NamedTuple):
    """aioimaplib's Response, typed: `lines` holds bytes, a literal as a bytearray."""

    result: str
    lines: list[bytes | bytearray]


# --- pure helpers ------------------------------------------------------------------------------


def encode_mailbox(name: str) -> str:
    """A mailbox name as an IMAP quoted string, non-ASCII in modified UTF-7 (RFC 3501 §5.1.3).

    aioimaplib sends arguments verbatim, so a folder such as "SMS errors" or "Fehlgeschlagen/
    SMS-Rückläufer" must be encoded here.
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            b64 = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            pending.clear()

    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return _quote("".join(out))


def parse_uidvalidity(lines: Sequence[bytes | bytearray]) -> int:
    """UIDVALIDITY from a SELECT response (RFC 3501 §7.1: required in the OK response)."""
    for line in lines:
        m = _UIDVALIDITY.search(bytes(line))
        if m:
            return int(m.group(1))
    raise ImapError("SELECT response carried no UIDVALIDITY")


def parse_search(lines: Sequence[bytes | bytearray], above: int) -> list[int]:
    """UIDs from a UID SEARCH response, only those above `above`, ascending.

    RFC 3501 §6.4.8 / §9: in `UID n:*` the `*` stands for the highest UID in the mailbox, so
    the range always holds the last message even when its UID is below n; filter it out.
    The last line is the tagged completion text, which is not data.
    """
    uids: set[int] = set()
    for line in lines[:-1]:
        for tok in bytes(line).split():
            if tok.isdigit() and int(tok) > above:
                uids.add(int(tok))
    return sorted(uids)


def fetched_message(lines: Sequence[bytes | bytearray]) -> bytes | None:
    """The message literal of a one-message `UID FETCH n (BODY.PEEK[])` response, if any.

    None when the server sent no data: the message was expunged between SEARCH and FETCH.
    """
    for line in lines:
        if isinstance(line, bytearray):
            return bytes(line)
    return None


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(resp: _Response) -> str:
    """The server's words: the text of the tagged completion line, cut for a log line."""
    return bytes(resp.lines[-1]).decode("utf-8", "replace")[:200] if resp.lines else ""


def _typed(resp: aioimaplib.Response) -> _Response:
    lines = [x for x in resp.lines if isinstance(x, bytes | bytearray)]
    return _Response(str(resp.result), lines)


# --- the connection ----------------------------------------------------------------------------


class ImapClient:
    """One IMAP connection, opened (TCP, and TLS for security "tls") as it is made;
    `connect()` waits for the greeting and upgrades for STARTTLS, `abort()` drops it without
    talking. Not reusable: make a new one per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Security,
        ssl_context: ssl.SSLContext | None,
        timeout_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self.security = security
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self._lost = asyncio.Event()
        self._created: set[str] = set()
        self._idling = False
        if security == "tls":
            self._imap = aioimaplib.IMAP4_SSL(
                host, port, timeout=timeout_s, ssl_context=ssl_context
            )
        else:
            self._imap = aioimaplib.IMAP4(host, port, timeout=timeout_s)
        # IMAP4_SSL does not pass conn_lost_cb through; set it on the protocol for both.
        self._imap.protocol.conn_lost_cb = lambda exc: self._lost.set()

    @property
    def lost(self) -> bool:
        """The server closed the connection (or the network dropped it)."""
        return self._lost.is_set()

    async def _call(self, aw: Awaitable[T]) -> T:
        # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow a
        # cancellation that races with a completed result (bpo-42130).
        try:
            async with asyncio.timeout(self.timeout_s):
                return await aw
        except aioimaplib.AioImapException as exc:
            raise ImapError(str(exc) or type(exc).__name__) from exc

    async def _command(self, aw: Awaitable[aioimaplib.Response], refused: str) -> _Response:
        """Run one command; anything but OK raises ImapError("<refused>: <server's words>")."""
        resp = _typed(await self._call(aw))
        if resp.result != "OK":
            raise ImapError(f"{refused}: {_text(resp)}")
        return resp

    # --- connecting ----------------------------------------------------------------------------

    async def connect(self) -> None:
        """Wait for the greeting; with security "starttls", upgrade the connection."""
        await self._call(self._imap.wait_hello_from_server())
        if self.security == "starttls":
            await self._starttls()

    async def _starttls(self) -> None:
        """STARTTLS (RFC 3501 §6.2.1), which aioimaplib lists but does not implement."""
        proto = self._imap.protocol
        if "STARTTLS" not in proto.capabilities:
            raise ImapError("server does not offer STARTTLS (security: starttls)")
        ctx = self.ssl_context or ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        command = aioimaplib.Command("STARTTLS", proto.new_tag(), loop=proto.loop)
        await self._command(proto.execute(command), "STARTTLS refused")
        loop = asyncio.get_running_loop()
        transport = await self._call(
            loop.start_tls(proto.transport, proto, ctx, server_hostname=self.host)
        )
        proto.transport = transport
        # The client MUST discard cached capabilities after STARTTLS (RFC 3501 §6.2.1).
        await self._call(proto.capability())

    async def login(self, user: str, password: str) -> None:
        # aioimaplib quotes the password but sends the user name verbatim.
        await self._command(self._imap.login(_quote(user), password), f"login refused for {user}")
        # Capabilities change after login (RFC 3501 §6.2.3); aioimaplib's parse of the
        # LOGIN response code leaves "[" and "]" glued to names, so ask again.
        await self._call(self._imap.protocol.capability())

    def has_capability(self, name: str) -> bool:
        return bool(self._imap.has_capability(name))

    # --- the mailbox ---------------------------------------------------------------------------

    async def select(self, mailbox: str) -> int:
        """SELECT `mailbox`; returns its UIDVALIDITY."""
        resp = await self._command(
            self._imap.select(encode_mailbox(mailbox)), f"cannot select {mailbox}"
        )
        return parse_uidvalidity(resp.lines)

    async def uid_search(self, *criteria: str, above: int) -> list[int]:
        """UID SEARCH; the UIDs above `above`, ascending."""
        resp = await self._command(
            self._imap.uid_search(*criteria, charset=None), "UID SEARCH failed"
        )
        return parse_search(resp.lines, above)

    async def uid_fetch(self, uid: int) -> bytes | None:
        """The whole message, without setting \\Seen; None if it was expunged meanwhile."""
        aw = self._imap.uid("fetch", str(uid), "(BODY.PEEK[])")
        resp = await self._command(aw, f"UID FETCH {uid} failed")
        return fetched_message(resp.lines)

    async def store_flags(self, uid: int, flags: str) -> None:
        aw = self._imap.uid("store", str(uid), f"+FLAGS.SILENT ({flags})")
        await self._command(aw, f"UID STORE {uid} {flags} failed")

    async def expunge(self, uid: int) -> None:
        if self.has_capability("UIDPLUS"):
            await self._command(self._imap.uid("expunge", str(uid)), "EXPUNGE failed")
        else:
            # Without UIDPLUS (RFC 4315) EXPUNGE removes every \Deleted message in the
            # mailbox (RFC 3501 §6.4.3); the mailbox is the bridge's own, so that is accepted.
            await self._command(self._imap.expunge(), "EXPUNGE failed")

    async def move(self, uid: int, folder: str) -> None:
        """Move one message to `folder`, creating the folder first if need be."""
        target = encode_mailbox(folder)
        if folder not in self._created:
            # CREATE answers NO [ALREADYEXISTS] (RFC 5530) when the folder is there: fine. Any
            # other problem shows up as a failed MOVE/COPY right after.
            await self._call(self._imap.create(target))
            self._created.add(folder)
        if self.has_capability("MOVE"):
            await self._command(
                self._imap.uid("move", str(uid), target), f"UID MOVE {uid} to {folder} failed"
            )
            return
        # RFC 6851 §3.3: without MOVE, COPY then mark \Deleted and expunge.
        await self._command(
            self._imap.uid("copy", str(uid), target), f"UID COPY {uid} to {folder} failed"
        )
        await self.store_flags(uid, "\\Seen \\Deleted")
        await self.expunge(uid)

    # --- waiting for mail ----------------------------------------------------------------------

    async def wait_closed(self, seconds: float) -> bool:
        """Wait up to `seconds` for the connection to drop; True if it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._lost.wait()
        return self.lost

    async def idle(self, renew_s: float) -> None:
        """IDLE (RFC 2177) until new mail (EXISTS) or `renew_s` has passed.

        RFC 2177 §3: a server may drop an IDLE client after 30 minutes, so the caller issues
        it again after each return. aioimaplib's own renewal timer pushes a marker into its
        queue. Raises ImapError on BYE or a dropped connection.
        """
        imap = self._imap
        # Pushes left over from an earlier IDLE are stale: the search just done covered them.
        queue = imap.protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()
        idle_task = await self._call(imap.idle_start(timeout=renew_s))
        self._idling = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + renew_s + self.timeout_s
        try:
            while (remaining := deadline - loop.time()) > 0:
                if await self._idle_push(remaining):
                    break
        finally:
            if not self.lost:
                self.idle_done()
        resp = _typed(await self._call(idle_task))
        if resp.result != "OK":
            raise ImapError(f"IDLE ended with {resp.result}: {_text(resp)}")

    async def _idle_push(self, seconds: float) -> bool:
        """Wait up to `seconds` for one server push during IDLE; True when the IDLE should end."""
        push = asyncio.ensure_future(self._imap.wait_server_push(timeout=seconds))
        gone = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({push, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not push.done():
                push.cancel()
        if self.lost:
            raise ImapError("connection closed by the server during IDLE")
        try:
            lines = push.result()
        except TimeoutError:
            return True
        if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
            return True
        data = [bytes(x) for x in lines if isinstance(x, bytes | bytearray)]
        if any(line.upper().startswith(b"BYE") for line in data):
            raise ImapError("server said BYE during IDLE")
        return any(line.upper().endswith(b" EXISTS") for line in data)

    def idle_done(self) -> None:
        """End a pending IDLE. DONE goes out exactly once per IDLE (RFC 2177 §3): a second one
        would reach the server as a command named DONE and its BAD answer would confuse
        aioimaplib's tag matching."""
        if self._idling:
            self._idling = False
            if self._imap.has_pending_idle():
                self._imap.idle_done()

    # --- ending --------------------------------------------------------------------------------

    async def logout(self, timeout_s: float) -> None:
        """Polite LOGOUT (RFC 3501 §6.1.3), ending a pending IDLE first, within `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            self.idle_done()
            await self._call(self._imap.logout())

    def abort(self) -> None:
        """Drop the connection without talking: cancel aioimaplib's helper tasks, close the
        socket."""
        imap = self._imap
        with contextlib.suppress(Exception):
            if imap._idle_waiter is not None:
                imap._idle_waiter.cancel()
        # A connection still being opened would otherwise leave an unclosed socket behind.
        for task in [imap._client_task, *imap.tasks, *imap.protocol.tasks]:
            task.cancel()
        transport = imap.protocol.transport
        if transport is not None:
            transport.close()
