"""SMTP AUTH password hashes: `scrypt$N$r$p$salt$hash` (base64), made by `sms-bridge hash-password`.

scrypt (RFC 7914) is in the standard library and memory-hard, so a leaked config file does not
hand out the libraries' SMTP passwords.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from bridge import defaults

# RFC 7914 §2 recommends N=2^14, r=8, p=1 for interactive logins (~16 MiB, tens of ms).
_N, _R, _P = 2**14, 8, 1
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=_MAXMEM)
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def _verify(password: bytes, hashed: str) -> bool:
    try:
        _, n, r, p, salt, digest = hashed.split("$")
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password,
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def dummy_hash_like(hashed: str | None) -> str:
    """A hash no password matches, with the cost parameters and digest length of `hashed`
    (default: those of hash_password). An unknown login is checked against it, so it takes
    as long to fail as a known login with a wrong password and timing does not tell an
    attacker which logins exist."""
    n, r, p, dklen = _N, _R, _P, 64
    if hashed is not None:
        try:
            _, n_s, r_s, p_s, _, digest = hashed.split("$")
            n, r, p, dklen = int(n_s), int(r_s), int(p_s), len(base64.b64decode(digest))
        except ValueError:
            pass
    b64 = base64.b64encode
    salt, digest_bytes = os.urandom(16), os.urandom(dklen)
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest_bytes).decode()}"


class VerifierBusy(Exception):
    """More password checks are waiting than the limit allows: answer 454 and let the client
    retry later (RFC 4954 §6: 454 4.7.0 Temporary authentication failure)."""


class Verifier:
    """Password checks off the event loop, a bounded number at a time.

    scrypt takes tens of milliseconds of CPU by design; run on the loop, a few dozen wrong
    passwords would stall every other SMTP session. hashlib.scrypt releases the GIL, so the
    checks run in `concurrency` worker threads; at most `queue` more may wait for one, and
    the rest are refused at once (VerifierBusy) instead of piling up.

    Successful checks are cached, keyed by a fast hash of (hash, password): the ILS opens a
    new SMTP connection per batch and need not pay for scrypt (or wait behind an attacker's
    delay) each time. Failures are never cached.
    """

    def __init__(
        self,
        concurrency: int = defaults.AUTH_PARALLEL_CHECKS,
        queue: int = defaults.AUTH_VERIFY_QUEUE,
    ) -> None:
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()
        self._concurrency = max(1, concurrency)
        self._queue = max(0, queue)
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None

    @staticmethod
    def _key(password: bytes, hashed: str) -> bytes:
        return hashlib.sha256(hashed.encode() + b"\0" + password).digest()

    def known_good(self, password: bytes, hashed: str) -> bool:
        """This password was verified against this hash before (no scrypt needed)."""
        key = self._key(password, hashed)
        with self._lock:
            return key in self._ok

    def verify(self, password: bytes, hashed: str) -> bool:
        """Blocking check (scrypt): call from a worker thread, or use check()."""
        if self.known_good(password, hashed):
            return True
        if not _verify(password, hashed):
            return False
        with self._lock:
            if len(self._ok) > 4096:
                self._ok.clear()
            self._ok.add(self._key(password, hashed))
        return True

    def _done(self, _: Future[bool]) -> None:
        with self._lock:
            self._pending -= 1

    async def check(self, password: bytes, hashed: str) -> bool:
        """verify() in a worker thread; VerifierBusy when too many checks are waiting."""
        with self._lock:
            if self._pending >= self._concurrency + self._queue:
                raise VerifierBusy
            self._pending += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._concurrency, thread_name_prefix="smtp-auth"
                )
            executor = self._executor
        # A client that hangs up does not cancel a check already running; the count is
        # given back when the thread is done with it, so the bound holds either way.
        future = executor.submit(self.verify, password, hashed)
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    @property
    def pending(self) -> int:
        return self._pending

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
