"""SMTP AUTH password hashes: `scrypt$N$r$p$salt$hash` (base64), made by `sms-bridge hash-password`.

scrypt (RFC 7914) is in the standard library and memory-hard, so a leaked config file does not
hand out the libraries' SMTP passwords.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading

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


class Verifier:
    """Caches successful checks, keyed by a fast hash of (hash, password).

    The ILS opens a new SMTP connection per batch and aiosmtpd's authenticator is synchronous;
    without the cache every connection would stall the event loop for one scrypt run. Failures
    are never cached (and are slowed down by the intake instead).
    """

    def __init__(self) -> None:
        self._ok: set[bytes] = set()
        self._lock = threading.Lock()

    def verify(self, password: bytes, hashed: str) -> bool:
        key = hashlib.sha256(hashed.encode() + b"\0" + password).digest()
        with self._lock:
            if key in self._ok:
                return True
        if not _verify(password, hashed):
            return False
        with self._lock:
            if len(self._ok) > 4096:
                self._ok.clear()
            self._ok.add(key)
        return True
