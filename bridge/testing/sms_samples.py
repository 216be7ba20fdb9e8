"""A sample text to queue (NewSms) with every field fixed, for tests: a test states only what
it changes (`sample_sms(3, msisdn=...)`). Numbers are 202-555-01xx fictional ones."""

from __future__ import annotations

from typing import Any

from bridge.model import NewSms

SAMPLE_PATRON = "+12025550143"
SAMPLE_SOURCE = "+12025550100"


def sample_sms(n: int = 0, *, msisdn: str = SAMPLE_PATRON, **kw: Any) -> NewSms:
    """Hold notice number `n` from the Riverside library to `msisdn`; `kw` sets other fields."""
    fields: dict[str, Any] = dict(
        tenant_id="riverside",
        msisdn=msisdn,
        rcpt_addr=f"{msisdn.lstrip('+')}@sms.example.org",
        source_addr=SAMPLE_SOURCE,
        envelope_from="ils@riverside.example.org",
        message_id=None,
        subject="Hold",
        body=f"Your hold {n} is ready",
    )
    fields.update(kw)
    return NewSms(**fields)
