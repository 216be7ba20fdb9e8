"""systemd service notifications (sd_notify(3)) without libsystemd.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to the socket
named by ``$NOTIFY_SOCKET``; a name starting with ``@`` is in the Linux abstract namespace (the
``@`` stands for a leading NUL byte). With ``Type=notify`` systemd waits for ``READY=1`` before it
calls the unit started, and with ``WatchdogSec=`` it restarts the service when ``WATCHDOG=1``
pings stop. Outside systemd (``NOTIFY_SOCKET`` unset) every call is a no-op returning False, so
the daemon runs the same under ``make run`` and in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]


def _address(env: Mapping[str, str]) -> str | bytes | None:
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        # Abstract namespace: the kernel name is a NUL byte then the rest (unix(7)).
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        # sd_notify(3) also accepts vsock: addresses (VMs); the bridge does not run there.
        log.warning("NOTIFY_SOCKET %r is not a unix socket path; not notifying", path)
        return None
    return path


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, several lines allowed) to the service manager.

    Returns True when the datagram was sent, False when there is no manager to tell or the send
    failed (logged: a notification is never worth crashing the daemon for).
    """
    addr = _address(os.environ if env is None else env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def ready(env: Mapping[str, str] | None = None) -> bool:
    """Startup finished: every listener is open and taking work."""
    return notify("READY=1", env)


def reloading(env: Mapping[str, str] | None = None, *, monotonic_usec: int | None = None) -> bool:
    """A reload starts; send ``ready()`` when it is done.

    systemd >= 253 (``Type=notify-reload`` and ``ExecReload=`` tracking) wants MONOTONIC_USEC, the
    CLOCK_MONOTONIC time of the reload request, to tell this reload from an earlier one
    (sd_notify(3)); older versions ignore the extra line.
    """
    usec = (
        time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        if monotonic_usec is None
        else monotonic_usec
    )
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", env)


def stopping(env: Mapping[str, str] | None = None) -> bool:
    """Shutdown started (the drain can take up to TimeoutStopSec)."""
    return notify("STOPPING=1", env)


def watchdog(env: Mapping[str, str] | None = None) -> bool:
    """Keep-alive ping for ``WatchdogSec=``."""
    return notify("WATCHDOG=1", env)


def status(text: str, env: Mapping[str, str] | None = None) -> bool:
    """Free-form one-line status shown by ``systemctl status``. Never put patron data here."""
    return notify("STATUS=" + " ".join(text.split()), env)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """How often to ping, in seconds: half of ``$WATCHDOG_USEC`` as sd_watchdog_enabled(3)
    advises, or None when the watchdog is off or meant for another process.

    ``$WATCHDOG_PID``, when set, names the process the watchdog applies to; a child that
    inherited the environment must not ping on the parent's behalf.
    """
    e = os.environ if env is None else env
    raw = e.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = e.get("WATCHDOG_PID", "")
    if owner:
        try:
            owner_pid = int(owner)
        except ValueError:
            return None
        if owner_pid != (os.getpid() if pid is None else pid):
            return None
    return usec / 1_000_000 / 2
