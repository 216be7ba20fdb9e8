"""The `sms-bridge` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bridge.config import Config, ConfigError, load_config, summary
from bridge.passwords import hash_password

EXIT_OK = 0
EXIT_PROBLEM = 1  # bad config, not found, refused
EXIT_USAGE = 2

DEFAULT_CONFIG = "/etc/sms-bridge/config.yaml"


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
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Under systemd, stderr goes to the journal ($JOURNAL_STREAM is set), which stamps every
    # line itself: a second timestamp would only crowd `journalctl`.
    journald = "JOURNAL_STREAM" in os.environ
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _Formatter(timestamps=not journald))
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

    bridge = Bridge(cfg, config_path=Path(args.config))
    try:
        asyncio.run(bridge.serve())
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
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
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
                        "reason": (r.reason or "")[:50],
                    }
                    for r in recs
                ]
                if args.json:
                    print(json.dumps(rows, indent=2))
                else:
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

    cfg = _load(args.config)

    async def go() -> dict[str, object]:
        store = make_store(cfg.store, region=cfg.tenants[0].region)
        await store.open()
        try:
            return {"sms": await store.counts(), "mail": await store.mail_counts()}
        finally:
            await store.close()

    data = asyncio.run(go())
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for section, counts in data.items():
            assert isinstance(counts, dict)
            shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"
            print(f"{section:5} {shown}")
    return EXIT_OK


def cmd_optout(args: argparse.Namespace) -> int:
    from bridge.addressing import (
        AddressError,
        canonical_address,
        format_msisdn,
        local_part_to_e164,
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
                        "number": format_msisdn(r.msisdn),
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
            try:
                msisdn = local_part_to_e164(args.number, cfg.tenants[0].region)
            except AddressError as exc:
                print(f"{args.number}: {exc.reason}", file=sys.stderr)
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
            print(f"{format_msisdn(msisdn)} {what} for sending number {scope}")
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


def cmd_send_test(args: argparse.Namespace) -> int:
    """Send one text through the running bridge: SMTP to its listener, as a tenant would."""
    import smtplib
    from email.message import EmailMessage

    from bridge.store import make_store

    cfg = _load(args.config)
    tenant = cfg.tenant(args.tenant) if args.tenant else cfg.tenants[0]
    sender = args.sender or tenant.senders[0].replace("*", "sms-bridge-test")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"{args.number}@{cfg.smtp.domains[0]}"
    msg["Subject"] = "sms-bridge test"
    msg.set_content(args.text)
    host = cfg.smtp.listen.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    try:
        with smtplib.SMTP(host, cfg.smtp.listen.port, timeout=30) as smtp:
            refused = smtp.send_message(msg, from_addr=sender, to_addrs=[msg["To"]])
    except smtplib.SMTPResponseException as exc:
        err = exc.smtp_error
        text = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
        print(f"refused: {exc.smtp_code} {text}", file=sys.stderr)
        return EXIT_PROBLEM
    except (OSError, smtplib.SMTPException) as exc:
        print(f"cannot reach the bridge at {cfg.smtp.listen}: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    if refused:
        print(f"refused: {refused}", file=sys.stderr)
        return EXIT_PROBLEM
    print(f"accepted by the bridge for {msg['To']}")
    if args.wait <= 0:
        return EXIT_OK

    async def watch() -> str | None:
        store = make_store(cfg.store, region=cfg.tenants[0].region)
        await store.open()
        try:
            deadline = time.monotonic() + args.wait
            from bridge.store import SmsFilter

            while time.monotonic() < deadline:
                recs = await store.list_sms(SmsFilter(limit=1), time.time())
                if recs and recs[0].state.value in ("submitted", "delivered", "failed", "expired"):
                    return f"{recs[0].queue_id}: {recs[0].state.value} {recs[0].reason or ''}"
                await asyncio.sleep(0.2)
            return None
        finally:
            await store.close()

    outcome = asyncio.run(watch())
    print(outcome or f"still queued after {args.wait:g} s (quiet hours? SMSC down?)")
    return EXIT_OK if outcome and "failed" not in outcome else EXIT_PROBLEM


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sms-bridge", description="Email-to-SMS bridge")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="YAML configuration file")

    sp = sub.add_parser("run", help="run the bridge")
    with_config(sp)
    sp.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("check-config", help="validate a configuration file")
    with_config(sp)
    sp.set_defaults(fn=cmd_check_config)

    sp = sub.add_parser("hash-password", help="hash an SMTP AUTH password for tenants[].users")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sp.set_defaults(fn=cmd_hash_password)

    sp = sub.add_parser("smsc-sim", help="run the bundled SMSC simulator")
    sp.add_argument("--listen", default="127.0.0.1:2775")
    sp.add_argument("--system-id", default="bridge")
    sp.add_argument("--password", default="secret")
    sp.add_argument("--scenario", default="ok")
    sp.set_defaults(fn=cmd_smsc_sim)

    sp = sub.add_parser("status", help="queue and mail outbox counts")
    with_config(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=cmd_status)

    sp = sub.add_parser("queue", help="inspect and repair the SMS queue")
    with_config(sp)
    qsub = sp.add_subparsers(dest="queue_cmd", required=True)
    q = qsub.add_parser("ls", help="list messages")
    q.add_argument("--state")
    q.add_argument("--tenant")
    q.add_argument("--older", type=float, metavar="SECONDS")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "show messages"),
        ("retry", "queue failed messages again"),
        ("drop", "stop queued messages"),
    ):
        q = qsub.add_parser(name, help=text)
        q.add_argument("ids", nargs="+", metavar="QUEUE_ID")
        if name == "show":
            q.add_argument("--full", action="store_true", help="show the full number")
    sp.set_defaults(fn=cmd_queue)

    sp = sub.add_parser("optout", help="opt-out records")
    with_config(sp)
    osub = sp.add_subparsers(dest="optout_cmd", required=True)
    for name, text in (("ls", "numbers that opted out"), ("export", "opt-outs as CSV")):
        o = osub.add_parser(name, help=text)
        o.add_argument("--scope", help="sending number (default smpp.source_addr)")
        o.add_argument("--all-scopes", action="store_true")
        o.add_argument("--json", action="store_true")
    for name, text in (
        ("add", "opt a number out (audited as an admin change)"),
        ("rm", "opt a number back in (audited as an admin change)"),
        ("history", "every change for a number"),
    ):
        o = osub.add_parser(name, help=text)
        o.add_argument("number")
        o.add_argument("--scope", help="sending number (default smpp.source_addr)")
        if name != "history":
            o.add_argument("--reason", help="recorded in the audit trail")
    sp.set_defaults(fn=cmd_optout)

    sp = sub.add_parser("send-test", help="send one test SMS through the running bridge")
    with_config(sp)
    sp.add_argument("number", help="patron number, e.g. 2025550143")
    sp.add_argument("--text", default="Test message from sms-bridge.")
    sp.add_argument("--tenant", help="tenant id (default: the first)")
    sp.add_argument("--sender", help="envelope sender (default from the tenant's senders)")
    sp.add_argument("--wait", type=float, default=10.0, help="seconds to watch its state")
    sp.set_defaults(fn=cmd_send_test)

    sp = sub.add_parser("report", help="reports for library managers")
    with_config(sp)
    rsub = sp.add_subparsers(dest="report_cmd", required=True)
    r = rsub.add_parser("costs", help="templates that needed UCS-2 or several segments")
    r.add_argument("--days", type=int, default=30)
    r.add_argument("--json", action="store_true")
    r = rsub.add_parser("send", help="queue each library's report now (the daemon mails it)")
    r.add_argument("--days", type=int, default=7)
    r.add_argument("--tenant", help="only this tenant")
    sp.set_defaults(fn=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.fn(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
