"""Which event loop runs `sms-bridge run` (`run.event_loop`).

The bridge is written against asyncio's interfaces only, so any conforming loop runs it. The
standard library's loop is the default, and the one every test runs on. uvloop (libuv under
asyncio's API, https://github.com/MagicStack/uvloop) spends less CPU per socket event and
timer; it is an optional extra (`pip install 'sms-bridge[uvloop]'`), never required.
`make bench` reports the bridge on both loops side by side (bench/kannel_bench.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

EventLoopChoice = Literal["asyncio", "uvloop", "auto"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]

UVLOOP_MISSING = (
    "uvloop is not installed here: install it (pip install 'sms-bridge[uvloop]'), or set"
    " run.event_loop to asyncio, or to auto (uvloop when installed, else asyncio)"
)


def uvloop_available() -> bool:
    """Whether uvloop can be imported, without importing it (config validation is cheap)."""
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: EventLoopChoice) -> tuple[LoopFactory | None, str]:
    """The factory to give `asyncio.Runner` (None: the standard library's default loop) and a
    name for the log line that says which loop runs. `auto` takes uvloop when it imports."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_available()):
        return None, "asyncio"
    try:
        import uvloop
    except ImportError as exc:  # "uvloop" chosen explicitly; config validation says so first
        raise RuntimeError(UVLOOP_MISSING) from exc
    from importlib.metadata import version

    return uvloop.new_event_loop, f"uvloop {version('uvloop')}"
