"""The README's quick start, run as written, and the privacy promise checked on real output.

The bridge runs as a real process on `config.example.yaml` (what `make run` starts: embedded
SMSC simulator, Maildir for replies and bounces), only its ports moved to free ones; the
commands are the README's own lines, run through `python -m bridge` with $SMS_BRIDGE_CONFIG
pointing at that configuration.
"""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
import yaml

from tests.flows.proc import REPO, BridgeProcess, free_port
from tests.smtp_client import send
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

README = REPO / "README.md"
QUICKSTART_MARK = "<!-- quickstart:"


@dataclass
class Running:
    tmp: Path
    cfg_path: Path
    proc: BridgeProcess
    smtp_port: int
    admin_port: int

    @property
    def maildir(self) -> Path:
        return self.tmp / "var" / "mail"

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge", *argv],
            cwd=self.tmp,
            env={**os.environ, "SMS_BRIDGE_CONFIG": str(self.cfg_path)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def mails(self) -> list[Message]:
        if not self.maildir.exists():
            return []
        return list(mailbox.Maildir(self.maildir, create=False))

    async def wait_mail(self, what: str, pred: Callable[[Message], bool]) -> Message:
        def found() -> Message | None:
            return next((m for m in self.mails() if pred(m)), None)

        def said() -> str:
            subjects = [m["Subject"] for m in self.mails()]
            return f"{what} in the Maildir: {subjects}\n{self.proc.log()}"

        return await eventually(found, 20, said)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """`make run`: config.example.yaml as shipped, on free ports, in a scratch directory."""
    data = yaml.safe_load((REPO / "config.example.yaml").read_text(encoding="utf-8"))
    smtp_port, smpp_port, admin_port = free_port(), free_port(), free_port()
    data["smtp"]["listen"] = f"127.0.0.1:{smtp_port}"
    data["smpp"]["port"] = smpp_port
    data["admin"]["listen"] = f"127.0.0.1:{admin_port}"
    (tmp_path / "var").mkdir()
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    proc = BridgeProcess(cfg_path, smtp_port, tmp_path / "bridge.log")
    try:
        await proc.start(timeout=30)
        yield Running(tmp_path, cfg_path, proc, smtp_port, admin_port)
    finally:
        proc.terminate()
        await proc.close()


def quickstart_commands() -> list[list[str]]:
    """The `sms-bridge` lines of the README's quick-start block, as argv after the program."""
    text = README.read_text(encoding="utf-8")
    block = text.split(QUICKSTART_MARK, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if argv and argv[0].endswith("/sms-bridge"):
            commands.append(argv[1:])
    return commands


async def test_readme_quick_start_shows_both_directions(running: Running) -> None:
    commands = quickstart_commands()
    assert [c[:2] for c in commands] == [
        ["send-test", "2025550143"],
        ["simulate", "reply"],
        ["simulate", "fail"],
        ["send-test", "2025550143"],
        ["simulate", "stop"],
        ["send-test", "2025550143"],
        ["optout", "ls"],
    ], "the README's quick start changed: update this test with it"
    outputs = []
    for argv in commands:
        result = await asyncio.to_thread(running.cli, *argv)
        outputs.append(result)
        if argv[:2] == ["simulate", "reply"]:
            reply = await running.wait_mail(
                "patron reply", lambda m: str(m["Subject"]).startswith("SMS reply")
            )
    codes = [r.returncode for r in outputs]
    # The failed text and the one refused after STOP end in 1; everything else succeeds.
    assert codes == [0, 0, 0, 1, 0, 1, 0], [(r.args, r.stdout, r.stderr) for r in outputs]
    assert "delivered" in outputs[0].stdout
    assert "failed" in outputs[3].stdout
    assert "550 5.7.1" in outputs[5].stderr and "opted out" in outputs[5].stderr
    assert "+1********43" in outputs[6].stdout

    assert "Can I renew it?" in reply.get_payload(decode=False) or "renew" in str(reply)
    assert reply["In-Reply-To"] and "send-test" in reply["In-Reply-To"]
    assert reply["To"] == "circulation@riverside.example.org"
    await running.wait_mail("bounce", lambda m: m.get_content_type() == "multipart/report")
    await running.wait_mail(
        "opt-out notice",
        lambda m: "opt" in str(m["Subject"]).lower() and "reply" not in str(m["Subject"]).lower(),
    )


# ----------------------------------------------------------------------------- privacy

# National numbers of the patrons in the traffic below; none may appear, in any formatting, in
# a log line at INFO or above or in the default output of a CLI command.
PATRONS = {
    "reply_stop": "2025550143",
    "fail": "2025550144",
    "optout_refused": "2025550145",
    "toll_free": "8002255288",
    "invalid": "31415926",  # too short for a US number
}


def leaks(text: str) -> list[str]:
    """Lines of `text` that hold a patron number, whatever separators it is written with."""
    found = []
    for line in text.splitlines():
        compact = re.sub(r"[\s().\-]", "", line)
        found += [f"{name}: {line}" for name, digits in PATRONS.items() if digits in compact]
    return found


async def test_no_patron_number_in_logs_or_default_cli_output(running: Running) -> None:
    ils = "ils@riverside.example.org"

    def notice(to: str, mid: str) -> bytes:
        return (
            f"From: {ils}\r\nTo: {to}\r\nSubject: Hold ready\r\nMessage-ID: <{mid}@riverside>\r\n"
            "\r\nYour hold is ready.\r\n"
        ).encode()

    domain = "sms.example.org"
    patron = f"{PATRONS['reply_stop']}@{domain}"
    conv = await send(running.smtp_port, ils, [patron], notice(patron, "a"))
    assert conv.data is not None and conv.data[0] == 250
    # the same notice again: a duplicate, not texted twice
    conv = await send(running.smtp_port, ils, [patron], notice(patron, "a"))
    assert conv.data is not None and "not sent again" in conv.data[1]
    for bad in ("toll_free", "invalid"):
        to = f"{PATRONS[bad]}@{domain}"
        conv = await send(running.smtp_port, ils, [to], notice(to, bad))
        assert conv.rcpts[0][0] >= 500, conv
    # a failed text (receipt UNDELIV) and its bounce
    assert running.cli("simulate", "fail", "+1" + PATRONS["fail"]).returncode == 0
    failing = f"1{PATRONS['fail']}@{domain}"
    conv = await send(running.smtp_port, ils, [failing], notice(failing, "f"))
    assert conv.data is not None and conv.data[0] == 250
    await running.wait_mail("bounce", lambda m: m.get_content_type() == "multipart/report")
    # MO reply, STOP, then a notice refused for the opt-out; an admin opt-out refused the same way
    assert running.cli("simulate", "reply", "+1" + PATRONS["reply_stop"], "Renew?").returncode == 0
    assert running.cli("simulate", "stop", "+1" + PATRONS["reply_stop"]).returncode == 0
    await running.wait_mail("opt-out notice", lambda m: "STOP" in str(m))
    conv = await send(running.smtp_port, ils, [patron], notice(patron, "b"))
    assert conv.rcpts[0][0] == 550, conv
    assert running.cli("optout", "add", PATRONS["optout_refused"]).returncode == 0
    refused = f"({PATRONS['optout_refused'][:3]})-{PATRONS['optout_refused'][3:]}@{domain}"
    conv = await send(running.smtp_port, ils, [refused], notice(refused, "c"))
    assert conv.rcpts[0][0] >= 500, conv

    outputs: dict[str, str] = {}
    ls = running.cli("queue", "ls", "--json")
    outputs["queue ls --json"] = ls.stdout + ls.stderr
    ids = re.findall(r'"queue_id": "(\w+)"', ls.stdout)
    assert len(ids) >= 2
    for argv in (
        ["queue", "ls"],
        ["queue", "show", *ids],
        ["status"],
        ["optout", "ls"],
        ["optout", "history", PATRONS["reply_stop"]],
        ["send-test", PATRONS["reply_stop"], "--wait", "0"],
    ):
        result = running.cli(*argv)
        outputs[" ".join(argv[:2])] = result.stdout + result.stderr

    def status_page() -> str:
        url = f"http://127.0.0.1:{running.admin_port}/"
        with urllib.request.urlopen(url, timeout=10) as page:
            return str(page.read().decode())

    outputs["status page"] = await asyncio.to_thread(status_page)

    running.proc.terminate()
    assert await running.proc.wait(20) == 0
    log = running.proc.log_path.read_text(encoding="utf-8")
    shown = [line for line in log.splitlines() if line.split(" ", 2)[1:2] != ["DEBUG"]]
    problems = leaks("\n".join(shown))
    for name, text in outputs.items():
        problems += [f"[{name}] {p}" for p in leaks(text)]
    assert not problems, "\n".join(problems)
    assert "smtp rcpt refused" in log and "toll-free number" in log  # the reason, not cut
    # ...and the full outputs are still useful: the full numbers are there on request
    full = running.cli("queue", "show", "--full", ids[0])
    assert PATRONS["reply_stop"] in full.stdout or PATRONS["fail"] in full.stdout
