"""The `sms-bridge` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bridge.config import Config, ConfigError, load_config, summary
from bridge.model import SmsState
from bridge.passwords import hash_password
from bridge.privacy import MaskingFilter, mask_text
from bridge.store.base import StoreError

EXIT_OK = 0
EXIT_PROBLEM = 1  # bad config, not found, refused
EXIT_USAGE = 2

DEFAULT_CONFIG = "/etc/sms-bridge/config.yaml"
CONFIG_ENV = "SMS_BRIDGE_CONFIG"


class _Formatter(logging.Formatter):
    def __init__(self, *, timestamps: bool = True) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s"
        super().__init__(("%(asctime)sZ " if timestamps else "") + fmt, "%Y-%m-%dT%H:%M:%S")
        self.converter = time.gmtime  # UTC timestamps: one clock for every host of a consortium


class _JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers (log.format: json)."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:  # as MaskingFilter left it: numbers masked
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd, stderr goes to the journal ($JOURNAL_STREAM is set), which stamps every
    # line itself: a second timestamp would only crowd `journalctl`.
    journald = "JOURNAL_STREAM" in os.environ
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _Formatter(timestamps=not journald))
    # The safety net under the explicit masking: no patron number reaches a log line at INFO
    # or above, whoever wrote it (bridge/privacy.py).
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every connection and its AUTH mechanisms at INFO; our own lines say more.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def _load(path: str) -> Config:
    try:
        return load_config(Path(path))
    except ConfigError as exc:
        print(f"{path}: configuration problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        raise SystemExit(EXIT_PROBLEM) from None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    setup_logging(args.log_level or cfg.log.level, cfg.log.format)
    from bridge.app import Bridge
    from bridge.eventloop import loop_factory

    bridge = Bridge(cfg, config_path=Path(args.config))
    factory, loop_name = loop_factory(cfg.run.event_loop)
    if factory is not None:  # the standard library's loop, the default, goes unsaid
        logging.getLogger("bridge").info(
            "event loop %s (run.event_loop: %s)", loop_name, cfg.run.event_loop
        )
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(bridge.serve())
    except OSError as exc:
        logging.getLogger("bridge").error("cannot start: %s", exc)
        return EXIT_PROBLEM
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{args.config}: OK")
    for line in summary(cfg):
        print(f"  {line}")
    return EXIT_OK


def cmd_hash_password(args: argparse.Namespace) -> int:
    if args.password_stdin or not sys.stdin.isatty():
        # Scripts and pipes (`echo pw | sms-bridge hash-password`): one line, no prompt.
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print(
                "no password on standard input: pipe one line in, or run this in a terminal",
                file=sys.stderr,
            )
            return EXIT_PROBLEM
    else:
        password = getpass.getpass("SMTP password: ")
        if getpass.getpass("again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return EXIT_PROBLEM
    if not password:
        print("an empty password is not allowed", file=sys.stderr)
        return EXIT_PROBLEM
    print(hash_password(password))
    return EXIT_OK


def cmd_smsc_sim(args: argparse.Namespace) -> int:
    from bridge.testing import smsc_sim

    argv = ["--listen", args.listen, "--system-id", args.system_id, "--password", args.password]
    argv += ["--scenario", args.scenario]
    return smsc_sim.main(argv)


def _table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def cmd_queue(args: argparse.Namespace) -> int:
    from bridge.addressing import mask_msisdn
    from bridge.store import SmsFilter, make_store

    cfg = _load(args.config)

    async def go() -> int:
        store = make_store(cfg.store, region=cfg.tenants[0].region)
        await store.open()
        try:
            now = time.time()
            if args.queue_cmd == "ls":
                flt = SmsFilter(
                    state=args.state,
                    tenant_id=args.tenant,
                    older_than_s=args.older,
                    limit=args.limit,
                )
                recs = await store.list_sms(flt, now)
                rows = [
                    {
                        "queue_id": r.queue_id,
                        "tenant": r.tenant_id,
                        "to": mask_msisdn(r.msisdn),
                        "state": r.state.value,
                        "attempts": r.attempts,
                        "age": _age(now - r.created_at),
                        "reason": mask_text(r.reason or ""),
                    }
                    for r in recs
                ]
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
                    for row in rows:  # the whole reason is in `queue show` and --json
                        row["reason"] = _cut(str(row["reason"]), 60)
                    print(_table(rows, list(rows[0]) if rows else ["queue_id"]))
                return EXIT_OK
            ok = True
            for qid in args.ids:
                if args.queue_cmd == "show":
                    rec = await store.get_sms(qid)
                    if rec is None:
                        print(f"{qid}: no such message", file=sys.stderr)
                        ok = False
                        continue
                    data = dataclasses.asdict(rec)
                    data["state"] = rec.state.value
                    if not args.full:
                        # Every text field, not only msisdn: rcpt_addr, the failure reason and
                        # the ILS's Message-ID may all carry the number.
                        data = {
                            k: mask_text(v) if isinstance(v, str) else v for k, v in data.items()
                        }
                        data["msisdn"] = mask_msisdn(rec.msisdn)
                    print(json.dumps(data, indent=2))
                elif args.queue_cmd == "retry":
                    done = await store.retry_sms(qid, now)
                    print(f"{qid}: {'queued again' if done else 'not retried (unknown or sent)'}")
                    ok = ok and done
                elif args.queue_cmd == "drop":
                    done = await store.drop_sms(qid, now)
                    print(f"{qid}: {'dropped' if done else 'not dropped (unknown or final)'}")
                    ok = ok and done
            return EXIT_OK if ok else EXIT_PROBLEM
        finally:
            await store.close()

    return asyncio.run(go())


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def cmd_status(args: argparse.Namespace) -> int:
    from bridge.store import make_store
    from bridge.store.base import LostMail

    cfg = _load(args.config)

    async def go() -> tuple[dict[str, object], list[LostMail]]:
        store = make_store(cfg.store, region=cfg.tenants[0].region)
        await store.open()
        try:
            counts: dict[str, object] = {
                "sms": await store.counts(),
                "mail": await store.mail_counts(),
            }
            # Emails that never arrived in the last week (a bounced patron reply above all).
            lost = await store.lost_mail(time.time() - 7 * 86400.0, limit=20)
            return counts, lost
        finally:
            await store.close()

    data, lost = asyncio.run(go())
    if args.json:
        data["lost_mail"] = [dataclasses.asdict(m) for m in lost]
        print(json.dumps(data, indent=2))
    else:
        sms_counts = data["sms"]
        assert isinstance(sms_counts, dict)
        # Every SMS state, 0 included: "unconfirmed 0" is an answer too.
        data["sms"] = {s.value: 0 for s in SmsState} | sms_counts
        for section, counts in data.items():
            assert isinstance(counts, dict)
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"
            print(f"{section:5} {shown}")
        if lost:
            print(f"lost emails in the last 7 days ({len(lost)} shown, newest first):")
        for m in lost:
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.lost_at))
            fallback = f"; fallback copy {m.fallback_state}" if m.fallback_state else ""
            print(
                f"  {when} mail id={m.id} {m.kind} tenant={m.tenant_id or '-'}"
                f" to={','.join(m.rcpt_to)} {m.state}: {m.reason}{fallback}"
            )
        if sms_counts.get(SmsState.UNCONFIRMED.value):
            hours = cfg.smpp.receipt_timeout_s / 3600
            print(
                f"      unconfirmed: accepted by the carrier, no receipt within {hours:g} h"
                " (smpp.receipt_timeout_s); list them with `queue ls --state unconfirmed`"
            )
    return EXIT_OK


def _patron_number(number: str, cfg: Config) -> str | None:
    """A number typed on the command line as E.164, read as the ILS's would be (the first
    library's region); None after saying on stderr what is wrong with it."""
    from bridge.addressing import AddressError, local_part_to_e164

    try:
        return local_part_to_e164(number, cfg.tenants[0].region)
    except AddressError as exc:
        print(f"{number}: {exc.reason}", file=sys.stderr)
        return None


def cmd_optout(args: argparse.Namespace) -> int:
    from bridge.addressing import (
        canonical_address,
        format_msisdn,
        mask_msisdn,
    )
    from bridge.model import OptoutRecord
    from bridge.store import make_store

    cfg = _load(args.config)
    scope = cfg.smpp.source_addr  # canonical (bridge/config.py)
    if args.scope:
        # Opt-outs are stored under the canonical sending number: read --scope the same way.
        canonical = canonical_address(args.scope, cfg.tenants[0].region)
        if canonical.kind == "other":
            print(
                f"--scope {args.scope}: not a phone number, short code or sender id; "
                "give the sending number, e.g. +12025550100",
                file=sys.stderr,
            )
            return EXIT_PROBLEM
        scope = canonical.value

    async def go() -> int:
        store = make_store(cfg.store, region=cfg.tenants[0].region)
        await store.open()
        try:
            if args.optout_cmd == "export":
                # CSV for the ILS: one row per opted-out number, E.164 in full (the library
                # needs it to update patron records); written to stdout.
                import csv

                out = csv.writer(sys.stdout)
                out.writerow(["msisdn", "sending_number", "opted_out_at", "keyword", "by"])
                for r in await store.list_optouts(None if args.all_scopes else scope):
                    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.changed_at))
                    out.writerow([r.msisdn, r.scope, when, r.keyword or "", r.actor])
                return EXIT_OK
            if args.optout_cmd == "ls":
                recs = await store.list_optouts(None if args.all_scopes else scope)
                rows = [
                    {
                        "number": format_msisdn(r.msisdn) if args.full else mask_msisdn(r.msisdn),
                        "scope": r.scope,
                        "since": time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.changed_at)),
                        "keyword": r.keyword or "",
                        "by": r.actor,
                    }
                    for r in recs
                ]
                if args.json:
                    print(json.dumps(rows, indent=2))
                elif rows:
                    print(_table(rows, list(rows[0])))
                else:
                    print("no opt-outs")
                return EXIT_OK
            msisdn = _patron_number(args.number, cfg)
            if msisdn is None:
                return EXIT_PROBLEM
            if args.optout_cmd == "history":
                for rec, ref in await store.optout_history(msisdn):
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.changed_at))
                    what = "opted out" if rec.opted_out else "opted in"
                    via = f" by replying {rec.keyword}" if rec.keyword else ""
                    print(f"{when}Z {rec.scope} {what}{via} ({rec.actor}; ref {ref or '-'})")
                return EXIT_OK
            actor = f"admin:{getpass.getuser()}"
            record = OptoutRecord(msisdn, scope, args.optout_cmd == "add", None, time.time(), actor)
            await store.set_optout(record, mo_ref=args.reason)
            what = "opted out" if record.opted_out else "opted back in"
            print(f"{mask_msisdn(msisdn)} {what} for sending number {scope}")
            return EXIT_OK
        finally:
            await store.close()

    return asyncio.run(go())


def cmd_report(args: argparse.Namespace) -> int:
    from bridge.store import make_store

    cfg = _load(args.config)
    if args.report_cmd == "send":
        from bridge.reports import Maintenance

        async def send() -> int:
            store = make_store(cfg.store, region=cfg.tenants[0].region)
            await store.open()
            try:
                m = Maintenance(cfg, store)
                now = time.time()
                sent = 0
                for tenant in cfg.tenants:
                    if args.tenant in (None, tenant.id):
                        sent += await m.send_report(tenant, now - args.days * 86400, now)
                return sent
            finally:
                await store.close()

        n = asyncio.run(send())
        print(f"{n} report(s) queued; the running bridge mails them")
        return EXIT_OK if n else EXIT_PROBLEM

    async def go() -> list[dict[str, object]]:
        store = make_store(cfg.store, region=cfg.tenants[0].region)
        await store.open()
        try:
            rows = await store.cost_report(time.time() - args.days * 86400)
        finally:
            await store.close()
        return [
            {
                "tenant": t,
                "template": tpl,
                "texts": n,
                "ucs2": u,
                "segments": seg,
                "forced_by": culprits,
            }
            for t, tpl, n, u, seg, culprits in rows
        ]

    rows = asyncio.run(go())
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif rows:
        print(_table(rows, list(rows[0])))
    else:
        print(f"no notice needed UCS-2 or more than one segment in the last {args.days} days")
    return EXIT_OK


def _cut(text: str, width: int) -> str:
    """``text`` shortened to ``width`` at a word boundary, marked with "..." (never mid-word:
    a cut number would escape masking, a cut reason loses its meaning)."""
    if len(text) <= width:
        return text
    return text[: width - 3].rsplit(" ", 1)[0] + "..."


_QUEUED_AS = re.compile(r"queued as ([\w-]+)")


def cmd_send_test(args: argparse.Namespace) -> int:
    """Send one text through the running bridge (SMTP to its listener, as a tenant would) and
    wait for its outcome: delivered, failed, or unconfirmed (sent, no receipt yet)."""
    import smtplib
    from email.message import EmailMessage
    from email.utils import make_msgid

    cfg = _load(args.config)
    tenant = cfg.tenant(args.tenant) if args.tenant else cfg.tenants[0]
    sender = args.sender or tenant.senders[0].replace("*", "sms-bridge-test")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"{args.number}@{cfg.smtp.domains[0]}"
    msg["Subject"] = "sms-bridge test"
    # A Message-ID, as every ILS sends one: the patron's reply is threaded with it.
    msg["Message-ID"] = make_msgid("send-test", domain=sender.rpartition("@")[2] or None)
    msg.set_content(args.text)
    host = cfg.smtp.listen.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with smtplib.SMTP(host, cfg.smtp.listen.port, timeout=30) as smtp:
            smtp.ehlo_or_helo_if_needed()
            steps: list[Callable[[], tuple[int, bytes]]] = [
                lambda: smtp.mail(sender),
                lambda: smtp.rcpt(msg["To"]),
                lambda: smtp.data(bytes(msg)),
            ]
            for step in steps:
                code, reply = step()
                if code >= 400:
                    shown = mask_text(reply.decode(errors="replace"))
                    print(f"refused: {code} {shown}", file=sys.stderr)
                    return EXIT_PROBLEM
    except smtplib.SMTPResponseException as exc:
        err = exc.smtp_error
        shown = mask_text(err.decode(errors="replace") if isinstance(err, bytes) else str(err))
        print(f"refused: {exc.smtp_code} {shown}", file=sys.stderr)
        return EXIT_PROBLEM
    except (OSError, smtplib.SMTPException) as exc:
        print(f"cannot reach the bridge at {cfg.smtp.listen}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    answer = reply.decode(errors="replace")
    print(f"accepted by the bridge for {mask_text(msg['To'])}: {code} {answer}")
    found = _QUEUED_AS.search(answer)
    if args.wait <= 0 or found is None:
        return EXIT_OK
    queue_id = found.group(1)
    outcome, code = asyncio.run(_watch(cfg, queue_id, args.wait))
    print(f"{queue_id}: {outcome}")
    return code


async def _watch(cfg: Config, queue_id: str, wait: float) -> tuple[str, int]:
    """Poll the store until the text is final or ``wait`` seconds have passed."""
    from bridge.model import SmsState
    from bridge.store import make_store

    store = make_store(cfg.store, region=cfg.tenants[0].region)
    await store.open()
    try:
        deadline = time.monotonic() + wait
        rec = None
        while True:
            rec = await store.get_sms(queue_id)
            if rec is not None and rec.state.final:
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.2)
    finally:
        await store.close()
    if rec is None:
        return "not found in the store (is this the running bridge's configuration?)", EXIT_PROBLEM
    reason = f": {mask_text(rec.reason)}" if rec.reason else ""
    if rec.state is SmsState.DELIVERED:
        return "delivered (the carrier's receipt says it reached the phone)", EXIT_OK
    if rec.state.final:
        return f"{rec.state.value}{reason}", EXIT_PROBLEM
    if rec.state is SmsState.SUBMITTED:
        return (
            f"unconfirmed: the SMSC accepted it, no delivery receipt within {wait:g} s"
            " (some carriers send receipts late or never)",
            EXIT_OK,
        )
    return (
        f"timeout: still {rec.state.value} after {wait:g} s{reason}"
        " (quiet hours? SMSC not bound? see `sms-bridge status`)",
        EXIT_PROBLEM,
    )


def cmd_simulate(args: argparse.Namespace) -> int:
    """Make the bundled SMSC simulator act as a patron's phone (see smsc_sim's control channel)."""
    import socket

    from bridge.testing.smsc_sim import CONTROL_MAGIC

    cfg = _load(args.config)
    host, port = cfg.smpp.host, cfg.smpp.port
    if args.smsc:
        host, _, raw_port = args.smsc.rpartition(":")
        host, port = host or "127.0.0.1", int(raw_port)
    elif not cfg.smpp.simulator:
        print(
            f"{args.config}: smpp.simulator is off, so there is no simulated phone to act as;"
            " simulate works with the bundled SMSC simulator (smpp.simulator: true), or with"
            " `sms-bridge smsc-sim` given as --smsc HOST:PORT",
            file=sys.stderr,
        )
        return EXIT_PROBLEM
    msisdn = _patron_number(args.number, cfg)
    if msisdn is None:
        return EXIT_PROBLEM
    request: dict[str, object] = {"cmd": args.sim_cmd, "number": msisdn}
    if args.sim_cmd == "reply":
        request["text"] = args.text
    request["to"] = "+" + (cfg.tenants[0].source_addr or cfg.smpp.source_addr).lstrip("+")
    try:
        with socket.create_connection((host, port), timeout=15) as sock:
            sock.sendall(CONTROL_MAGIC + json.dumps(request).encode() + b"\n")
            answer = sock.makefile("rb").readline()
    except OSError as exc:
        print(f"cannot reach the simulator at {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    try:
        result = json.loads(answer)
    except ValueError:
        print("the simulator gave no answer (is the bridge running?)", file=sys.stderr)
        return EXIT_PROBLEM
    shown = mask_text(msisdn)
    if not result.get("ok"):
        print(f"{args.sim_cmd} {shown}: {result.get('detail')}", file=sys.stderr)
        return EXIT_PROBLEM
    print(f"{args.sim_cmd} {shown}: {result.get('detail')}")
    return EXIT_OK


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default in --help, except the non-values (None, False): argparse's
    ArgumentDefaultsHelpFormatter would print "(default: None)" for each of those."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if action.option_strings and shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _host_port(value: str) -> str:
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:2775")
    return value


def build_parser() -> argparse.ArgumentParser:
    default_config = os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    config_help = f"YAML configuration file (default: ${CONFIG_ENV} if set, else {DEFAULT_CONFIG})"
    # -c is accepted before or after the subcommand (`sms-bridge -c F queue ls` and
    # `sms-bridge queue ls -c F`). The subcommands' copy defaults to SUPPRESS so that it does
    # not overwrite a value given before the subcommand with its own default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", default=argparse.SUPPRESS, metavar="FILE", help=config_help
    )

    p = argparse.ArgumentParser(
        prog="sms-bridge",
        description="Email-to-SMS bridge",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "-c",
        "--config",
        default=default_config,
        metavar="FILE",
        help=f"YAML configuration file, also ${CONFIG_ENV}",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        text: str,
        *,
        config: bool = True,
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name,
            help=text,
            description=text,
            parents=[common] if config else [],
            formatter_class=_HelpFormatter,
        )

    sp = add(sub, "run", "run the bridge")
    sp.add_argument(
        "--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override log.level"
    )
    sp.set_defaults(fn=cmd_run)

    sp = add(sub, "check-config", "validate a configuration file")
    sp.set_defaults(fn=cmd_check_config)

    sp = add(
        sub,
        "hash-password",
        "hash an SMTP AUTH password for tenants[].users (asks twice in a terminal;"
        " reads one line from standard input otherwise)",
        config=False,
    )
    sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sp.set_defaults(fn=cmd_hash_password)

    sp = add(sub, "smsc-sim", "run the bundled SMSC simulator on its own", config=False)
    sp.add_argument("--listen", default="127.0.0.1:2775", help="HOST:PORT")
    sp.add_argument("--system-id", default="bridge", help="account the bridge binds with")
    sp.add_argument("--password", default="secret", help="its password")
    sp.add_argument("--scenario", default="ok", help="fault scenario (README, The SMSC simulator)")
    sp.set_defaults(fn=cmd_smsc_sim)

    sp = add(sub, "simulate", "act as a patron's phone on the bundled SMSC simulator")
    sp.add_argument(
        "--smsc",
        type=_host_port,
        metavar="HOST:PORT",
        help="a simulator started with `sms-bridge smsc-sim` (default: smpp.host:port)",
    )
    ssub = sp.add_subparsers(dest="sim_cmd", required=True, metavar="ACTION")
    s = add(ssub, "reply", "the patron replies to the last text they got")
    s.add_argument("number", help="patron number, e.g. +12025550143")
    s.add_argument("text", help="what the patron writes")
    s = add(ssub, "stop", "the patron replies STOP (opts out)")
    s.add_argument("number", help="patron number, e.g. +12025550143")
    s = add(ssub, "fail", "the next text to this number fails (its receipt says UNDELIV)")
    s.add_argument("number", help="patron number, e.g. +12025550143")
    sp.set_defaults(fn=cmd_simulate)

    sp = add(sub, "status", "queue and mail outbox counts")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(fn=cmd_status)

    sp = add(sub, "queue", "inspect and repair the SMS queue")
    qsub = sp.add_subparsers(dest="queue_cmd", required=True, metavar="ACTION")
    q = add(qsub, "ls", "list messages")
    q.add_argument(
        "--state",
        choices=[s.value for s in SmsState],
        help="only this state (queued, submitted, unconfirmed, failed, ...)",
    )
    q.add_argument("--tenant", help="only this tenant id")
    q.add_argument("--older", type=float, metavar="SECONDS", help="only older than this")
    q.add_argument("--limit", type=int, default=50, help="at most this many")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("show", "show messages (numbers masked unless --full)"),
        ("retry", "queue failed messages again"),
        ("drop", "stop queued messages"),
    ):
        q = add(qsub, name, text)
        q.add_argument("ids", nargs="+", metavar="QUEUE_ID")
        if name == "show":
            q.add_argument("--full", action="store_true", help="show the number in full")
    sp.set_defaults(fn=cmd_queue)

    sp = add(sub, "optout", "opt-out records")
    osub = sp.add_subparsers(dest="optout_cmd", required=True, metavar="ACTION")
    for name, text in (
        ("ls", "numbers that opted out (masked unless --full)"),
        ("export", "opt-outs as CSV, numbers in full (for the ILS)"),
    ):
        o = add(osub, name, text)
        o.add_argument("--scope", help="sending number (default smpp.source_addr)")
        o.add_argument("--all-scopes", action="store_true", help="every sending number")
        o.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "ls":
            o.add_argument("--full", action="store_true", help="show the numbers in full")
    for name, text in (
        ("add", "opt a number out (audited as an admin change)"),
        ("rm", "opt a number back in (audited as an admin change)"),
        ("history", "every change for a number"),
    ):
        o = add(osub, name, text)
        o.add_argument("number")
        o.add_argument("--scope", help="sending number (default smpp.source_addr)")
        if name != "history":
            o.add_argument("--reason", help="recorded in the audit trail")
    sp.set_defaults(fn=cmd_optout)

    sp = add(sub, "send-test", "send one test SMS through the running bridge and wait for it")
    sp.add_argument("number", help="patron number, e.g. 2025550143")
    sp.add_argument("--text", default="Test message from sms-bridge.", help="the text")
    sp.add_argument("--tenant", help="tenant id (default: the first)")
    sp.add_argument("--sender", help="envelope sender (default from the tenant's senders)")
    sp.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for the outcome (0: do not)"
    )
    sp.set_defaults(fn=cmd_send_test)

    sp = add(sub, "report", "reports for library managers")
    rsub = sp.add_subparsers(dest="report_cmd", required=True, metavar="ACTION")
    r = add(rsub, "costs", "templates that needed UCS-2 or several segments")
    r.add_argument("--days", type=int, default=30, help="look back this many days")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r = add(rsub, "send", "queue each library's report now (the daemon mails it)")
    r.add_argument("--days", type=int, default=7, help="the period the report covers")
    r.add_argument("--tenant", help="only this tenant")
    sp.set_defaults(fn=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except StoreError as exc:
        # The store cannot be opened (read-only file, missing directory, PostgreSQL down):
        # the reason and what to check, in one line; a traceback would bury both.
        print(f"sms-bridge: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    return code


if __name__ == "__main__":
    raise SystemExit(main())
