"""The bridge's own bounce addresses (VERP): one envelope sender per outgoing email.

Every email the bridge originates, except a DSN, leaves with an envelope sender such as
``bounce+42-3f9c0a71d2e4b856@sms.example.org``: the mail outbox id (42) and a token, the first
16 hex digits (64 bits) of HMAC-SHA256 over the id with a secret only the bridge knows. A
bounce for that email comes back to this address (RFC 5321 §4.5.5: a DSN goes to the reverse-
path, from the null sender), and the address alone says which email failed; no need to trust
anything inside the bounce to find it. The token is what authenticates the bounce: without
the secret nobody can make the bridge mark a reply lost, so a DSN is accepted from any client.

This is variable envelope return paths (D. J. Bernstein, cr.yp.to/proto/verp.txt) with the
token of Postfix/ezmlm-style signed bounce addresses. Pure: the secret is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["VERP_PREFIX", "VerpAddress", "encode", "parse", "token"]

VERP_PREFIX: Final = "bounce"
TOKEN_HEX: Final = 16
# Domain label for the MAC input, so the same secret could sign other things without a
# signature for one being valid for another.
_CONTEXT: Final = b"sms-bridge verp v1\x00"
# "bounce+<id>-<token>"; case-insensitive because some MTAs fold the local part's case.
_LOCAL: Final = re.compile(rf"{VERP_PREFIX}\+([0-9]{{1,18}})-([0-9a-f]{{1,64}})", re.IGNORECASE)


def token(mail_id: int, secret: bytes) -> str:
    if mail_id < 0:
        raise ValueError("mail_id must not be negative")
    if not secret:
        raise ValueError("the VERP secret must not be empty")
    mac = hmac.new(secret, _CONTEXT + str(mail_id).encode("ascii"), hashlib.sha256)
    return mac.hexdigest()[:TOKEN_HEX]


def encode(mail_id: int, secret: bytes, domain: str) -> str:
    """The envelope sender for outbox email `mail_id`."""
    return f"{VERP_PREFIX}+{mail_id}-{token(mail_id, secret)}@{domain}"


@dataclass(frozen=True)
class VerpAddress:
    mail_id: int
    valid: bool  # False: the shape is ours but the token is wrong (forged or from another key)


def parse(address: str, secret: bytes, domains: Iterable[str]) -> VerpAddress | None:
    """`address` read as one of our bounce addresses; None when it is not shaped like one
    or is on a domain that is not ours (it is then some other recipient, not a bounce)."""
    addr = address.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    local, at, domain = addr.rpartition("@")
    if not at or domain.lower() not in {d.lower() for d in domains}:
        return None
    m = _LOCAL.fullmatch(local)
    if m is None:
        return None
    mail_id = int(m.group(1))
    # Constant-time comparison: the token must not be learnable one digit at a time.
    valid = hmac.compare_digest(m.group(2).lower(), token(mail_id, secret))
    return VerpAddress(mail_id, valid)
