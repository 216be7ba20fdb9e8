"""The admin CLI against a real store file (no daemon needed: SQLite WAL allows a second reader)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
import yaml

from bridge.cli import main
from bridge.model import NewSms
from bridge.passwords import Verifier
from bridge.store import Outgoing, SqliteStore
from tests.conftest import BASE


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(BASE))
    return path


def enqueue(cfg_path: Path, n: int) -> list[str]:
    async def go() -> list[str]:
        store = SqliteStore(cfg_path.parent / "bridge.db")
        await store.open()
        items = [
            NewSms(
                "riverside",
                f"+120255501{i:02d}",
                f"20255501{i:02d}@sms.example.org",
                "12025550100",
                "ils@riverside.example.org",
                f"<m{i}@x>",
                "Hold",
                "Your hold is ready",
            )
            for i in range(n)
        ]
        res = await store.enqueue_sms(items, now=1000.0, dedup_window_s=0)
        await store.close()
        return [r.queue_id for r in res]

    return asyncio.run(go())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_queue_commands(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = enqueue(cfg_path, 2)
    code, out = run(capsys, "queue", "-c", str(cfg_path), "ls", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["queue_id"] for r in rows} == {a, b}
    assert all(r["to"].startswith("+1") and "*" in r["to"] for r in rows)  # masked
    code, out = run(capsys, "queue", "-c", str(cfg_path), "drop", a)
    assert code == 0 and "dropped" in out
    code, out = run(capsys, "queue", "-c", str(cfg_path), "show", a)
    shown = json.loads(out)
    assert shown["state"] == "failed" and shown["reason"] == "dropped by admin"
    assert shown["msisdn"] != "+12025550100"
    code, out = run(capsys, "queue", "-c", str(cfg_path), "retry", a)
    assert code == 0 and "queued again" in out
    code, _ = run(capsys, "queue", "-c", str(cfg_path), "show", "nope")
    assert code == 1
    code, out = run(capsys, "status", "-c", str(cfg_path), "--json")
    assert json.loads(out)["sms"] == {"queued": 2}


def test_optout_commands(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        capsys, "optout", "-c", str(cfg_path), "add", "202-555-0143", "--reason", "call"
    )
    assert code == 0 and out.strip() == "+1********43 opted out for sending number +12025550100"
    code, out = run(capsys, "optout", "-c", str(cfg_path), "ls", "--json")
    (row,) = json.loads(out)
    assert row["number"] == "+1********43" and row["by"].startswith("admin:")
    code, out = run(capsys, "optout", "ls", "--full", "--json", "-c", str(cfg_path))
    (row,) = json.loads(out)
    assert row["number"] == "+1 202-555-0143"
    code, out = run(capsys, "optout", "-c", str(cfg_path), "rm", "2025550143")
    code, out = run(capsys, "optout", "-c", str(cfg_path), "history", "2025550143")
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "opted out" in lines[0] and "ref call" in lines[0]
    assert "opted in" in lines[1]
    code, _ = run(capsys, "optout", "-c", str(cfg_path), "add", "1800FLOWERS")
    assert code == 1


def test_report_costs_empty(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "report", "-c", str(cfg_path), "costs")
    assert code == 0 and out.startswith("no notice needed UCS-2")


def test_hash_password_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    code, out = run(capsys, "hash-password", "--password-stdin")
    assert code == 0 and Verifier().verify(b"s3cret", out.strip())


def test_optout_export_csv(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "optout", "-c", str(cfg_path), "add", "2025550143")
    code, out = run(capsys, "optout", "-c", str(cfg_path), "export")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "msisdn,sending_number,opted_out_at,keyword,by"
    assert lines[1].startswith("+12025550143,+12025550100,")


def test_json_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from bridge.cli import setup_logging

    setup_logging("INFO", "json")
    logging.getLogger("bridge.test").info("queued queue_id=%s", "abc")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    data = json.loads(line)
    assert data["message"] == "queued queue_id=abc" and data["level"] == "INFO"
    logging.getLogger().handlers.clear()


def test_plain_log_lines_under_journald(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from bridge.cli import setup_logging

    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    setup_logging("INFO")
    logging.getLogger("bridge.test").info("bound")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "INFO bridge.test: bound"
    logging.getLogger().handlers.clear()


def test_status_lists_lost_emails(cfg_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> None:
        store = SqliteStore(cfg_path.parent / "bridge.db")
        await store.open()
        reply = Outgoing("reply", "", ("circ@riverside.example.org",), b"x", None, "riverside")
        mid = await store.enqueue_mail(reply, now=time.time())
        await store.mail_lost(mid, "bounced", "bounced: 5.1.1 User unknown", time.time())
        await store.close()

    asyncio.run(go())
    code, out = run(capsys, "status", "-c", str(cfg_path))
    assert code == 0 and "mail  bounced 1" in out
    assert "lost emails in the last 7 days (1 shown, newest first):" in out
    assert "mail id=1 reply tenant=riverside to=circ@riverside.example.org bounced:" in out
    code, out = run(capsys, "status", "-c", str(cfg_path), "--json")
    (row,) = json.loads(out)["lost_mail"]
    assert row["kind"] == "reply" and row["reason"] == "bounced: 5.1.1 User unknown"


def test_config_option_before_or_after_the_command_or_from_the_environment(
    cfg_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (a,) = enqueue(cfg_path, 1)
    for argv in (
        ["-c", str(cfg_path), "queue", "ls", "--json"],
        ["queue", "-c", str(cfg_path), "ls", "--json"],
        ["queue", "ls", "--json", "-c", str(cfg_path)],
        ["-c", "/nonexistent.yaml", "queue", "ls", "--json", "-c", str(cfg_path)],  # last wins
    ):
        code, out = run(capsys, *argv)
        assert code == 0 and [r["queue_id"] for r in json.loads(out)] == [a], argv
    monkeypatch.setenv("SMS_BRIDGE_CONFIG", str(cfg_path))
    code, out = run(capsys, "queue", "ls", "--json")
    assert code == 0 and [r["queue_id"] for r in json.loads(out)] == [a]


def test_help_names_the_default_configuration(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMS_BRIDGE_CONFIG", raising=False)
    for argv in (["--help"], ["queue", "ls", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "/etc/sms-bridge/config.yaml" in out and "SMS_BRIDGE_CONFIG" in out, argv
    with pytest.raises(SystemExit):
        main(["queue", "ls", "--help"])
    assert "(default: 50)" in capsys.readouterr().out


@pytest.mark.parametrize(("stdin", "ok"), [("s3cret\n", True), ("", False)])
def test_hash_password_without_a_terminal(stdin: str, ok: bool) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "bridge", "hash-password"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Traceback" not in result.stderr
    if ok:
        assert result.returncode == 0 and Verifier().verify(b"s3cret", result.stdout.strip())
    else:
        assert result.returncode == 1 and "no password on standard input" in result.stderr


def test_queue_show_masks_every_field_unless_full(
    cfg_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (a,) = enqueue(cfg_path, 1)
    code, out = run(capsys, "queue", "-c", str(cfg_path), "show", a)
    data = json.loads(out)
    assert code == 0 and data["msisdn"] == "+1********00"
    assert data["rcpt_addr"] == "********00@sms.example.org"
    code, out = run(capsys, "queue", "-c", str(cfg_path), "show", "--full", a)
    data = json.loads(out)
    assert data["msisdn"] == "+12025550100" and data["rcpt_addr"] == "2025550100@sms.example.org"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_mask_numbers_in_messages_and_tracebacks(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    import logging

    from bridge.cli import setup_logging

    setup_logging("INFO", fmt)
    log = logging.getLogger("bridge.test")
    log.info("smtp rcpt refused reply=%s", "550 5.7.1 +1 202-555-0143 opted out")
    try:
        raise ValueError("cannot text 12025550143@sms.example.org")
    except ValueError:
        log.exception("failed for (202) 555-0143")
    err = capsys.readouterr().err
    logging.getLogger().handlers.clear()
    assert "+1********43 opted out" in err and "cannot text *********43@" in err
    assert "555-0143" not in err and "5550143" not in err
