"""sd_notify over a real AF_UNIX datagram socket, as systemd would listen for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import sdnotify


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be long, so fall back to a
    # short name in the same directory's parent when needed.
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:
        path = Path("/tmp") / f"sdn-{uuid.uuid4().hex[:8]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    try:
        yield sock, str(path)
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_unset_socket_is_a_noop() -> None:
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.ready(env={"NOTIFY_SOCKET": ""}) is False


def test_ready_reaches_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path}
    assert sdnotify.ready(env) is True
    assert _recv(sock) == "READY=1"
    assert sdnotify.stopping(env) is True
    assert _recv(sock) == "STOPPING=1"
    assert sdnotify.watchdog(env) is True
    assert _recv(sock) == "WATCHDOG=1"


def test_reads_notify_socket_from_the_environment(
    listener: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = listener
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert sdnotify.notify("STATUS=up") is True
    assert _recv(sock) == "STATUS=up"


def test_reloading_carries_monotonic_usec(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.reloading({"NOTIFY_SOCKET": path}, monotonic_usec=123456789) is True
    assert _recv(sock) == "RELOADING=1\nMONOTONIC_USEC=123456789"


def test_reloading_default_time_is_clock_monotonic(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading({"NOTIFY_SOCKET": path}) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = _recv(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_is_one_line(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    assert sdnotify.status("bound,\n queue 3", {"NOTIFY_SOCKET": path}) is True
    assert _recv(sock) == "STATUS=bound, queue 3"


def test_abstract_namespace_socket() -> None:
    name = f"sms-bridge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2.0)
    try:
        assert sdnotify.ready({"NOTIFY_SOCKET": "@" + name}) is True
        assert _recv(sock) == "READY=1"
    finally:
        sock.close()


def test_missing_socket_returns_false(tmp_path: Path) -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False


def test_non_unix_address_is_refused() -> None:
    assert sdnotify.ready({"NOTIFY_SOCKET": "vsock:2:1234"}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env, pid=4242) == expected


def test_watchdog_interval_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 1.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
