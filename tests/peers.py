"""Third-party peers the flow tests run against (PostgreSQL, Dovecot, Postfix, Jasmin,
Chromium, systemd, a mountable file system): skip when one is missing, and say how to get it.

Under SMS_BRIDGE_REQUIRE_PEERS=1 (CI sets it) a missing peer fails the test instead, so a run
cannot pass by skipping the tests that matter.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "SMS_BRIDGE_REQUIRE_PEERS"


def require_peer(name: str, reason: str) -> NoReturn:
    """Skip (or, under SMS_BRIDGE_REQUIRE_PEERS=1, fail) because peer `name` is missing."""
    message = f"{name}: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: required)")
    pytest.skip(message)
