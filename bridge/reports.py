"""Library reports and housekeeping.

`build_report` is pure: the period's figures in, a plain-text and an HTML body out. `Maintenance`
runs the scheduled work: the privacy purge every hour, and each library's report every
`reports.every_days`, each once per period (remembered in the store, so a restart neither skips
nor repeats one).
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from bridge import defaults
from bridge.addressing import format_msisdn
from bridge.config import Config, TenantConfig
from bridge.model import Wake
from bridge.store import Outgoing, Store
from bridge.store.base import ReportData
from bridge.worker import Worker

log = logging.getLogger(__name__)

DAY = 86400.0


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


@dataclass(frozen=True)
class Report:
    subject: str
    text: str
    html: str


def build_report(name: str, data: ReportData, since: float, until: float) -> Report:
    """A library's report. The library owns its patrons' numbers, so failed numbers are shown
    in full here (staff must find them in the ILS); the report goes only to that library."""
    sent = sum(data.states.values())
    delivered = data.states.get("delivered", 0)
    failed = data.states.get("failed", 0) + data.states.get("expired", 0)
    unconfirmed = data.states.get("unconfirmed", 0)
    waiting = sent - delivered - failed - unconfirmed
    period = f"{_day(since)} to {_day(until)}"
    subject = f"Text notices for {name}: {period}"
    lines = [
        f"Text notices sent for {name}, {period} (UTC)",
        "",
        f"  Notices:     {sent}",
        f"  Delivered:   {delivered}",
        f"  Failed:      {failed}",
        f"  Unconfirmed: {unconfirmed}",
        f"  In progress: {waiting}",
        "",
    ]
    if data.failed:
        lines += ["Numbers to check in the ILS (the text could not be delivered):", ""]
        for msisdn, reason, subj, at in data.failed:
            lines.append(f"  {format_msisdn(msisdn)}  {_day(at)}  {subj[:40]}  - {reason}")
        lines.append("")
    if data.unconfirmed:
        lines += [
            f"{len(data.unconfirmed)} texts to these numbers were never confirmed by the carrier"
            " (accepted, but no delivery receipt came; they may or may not have arrived):",
            "",
        ]
        for msisdn, subj, at in data.unconfirmed:
            lines.append(f"  {format_msisdn(msisdn)}  {_day(at)}  {subj[:40]}")
        lines.append("")
    replies = [m for m in data.lost_mail if m.kind == "reply"]
    if data.lost_mail:
        lines += [
            f"Emails from the bridge that never arrived: {len(data.lost_mail)}"
            f" (patron replies: {len(replies)})",
            "",
        ]
        for m in data.lost_mail:
            lines.append(f"  {_day(m.lost_at)}  {m.kind} to {', '.join(m.rcpt_to)}  - {m.reason}")
            lines.append(f"    {_fallback_line(m.kind, m.fallback_state)}")
        lines += [
            "  Check that the library's reply address exists and accepts mail from the bridge.",
            "",
        ]
    outs = [c for c in data.optout_changes if c[1]]
    ins = [c for c in data.optout_changes if not c[1]]
    lines.append(f"Opt-outs: {len(outs)}   Opt-ins: {len(ins)}")
    for msisdn, opted_out, keyword, at in data.optout_changes:
        what = "opted out" if opted_out else "opted back in"
        via = f" ({keyword})" if keyword else ""
        lines.append(f"  {format_msisdn(msisdn)}  {what}{via} on {_day(at)}")
    lines.append("")
    if data.costly:
        lines += ["Notices that cost more than one plain SMS (shorten these templates):", ""]
        for template, texts, ucs2, segments, culprits in data.costly:
            why = f" characters {culprits} force UCS-2;" if ucs2 else ""
            lines.append(f"  {template}\n    {texts} texts, {segments} segments;{why}")
        lines.append("")
    text = "\n".join(lines)

    def row(*cells: object) -> str:
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    parts = [
        f"<h2>{html.escape(subject)}</h2>",
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>",
        row("Notices", sent),
        row("Delivered", delivered),
        row("Failed", failed),
        row("Unconfirmed", unconfirmed),
        row("In progress", waiting),
        "</table>",
    ]
    if data.failed:
        parts += ["<h3>Numbers to check in the ILS</h3>", "<table border='1' cellpadding='4'>"]
        parts += [row("Number", "Date", "Notice", "Why")]
        parts += [row(format_msisdn(m), _day(a), s[:40], r) for m, r, s, a in data.failed]
        parts.append("</table>")
    if data.unconfirmed:
        parts += [
            f"<h3>{len(data.unconfirmed)} texts to these numbers were never confirmed by the"
            " carrier</h3>",
            "<table border='1' cellpadding='4'>",
            row("Number", "Date", "Notice"),
        ]
        parts += [row(format_msisdn(m), _day(a), s[:40]) for m, s, a in data.unconfirmed]
        parts.append("</table>")
    if data.lost_mail:
        parts += [
            "<h3>Emails from the bridge that never arrived</h3>",
            "<table border='1' cellpadding='4'>",
            row("Date", "Kind", "To", "Why", "Copy"),
        ]
        parts += [
            row(
                _day(m.lost_at),
                m.kind,
                ", ".join(m.rcpt_to),
                m.reason,
                _fallback_line(m.kind, m.fallback_state),
            )
            for m in data.lost_mail
        ]
        parts.append("</table>")
    parts.append(f"<h3>Opt-outs: {len(outs)}, opt-ins: {len(ins)}</h3>")
    if data.costly:
        parts += ["<h3>Costly templates</h3>", "<table border='1' cellpadding='4'>"]
        parts += [row("Template", "Texts", "UCS-2", "Segments", "Forced by")]
        parts += [row(*c) for c in data.costly]
        parts.append("</table>")
    return Report(subject, text, "\n".join(parts))


def _fallback_line(kind: str, state: str | None) -> str:
    if kind != "reply":
        return "nothing was resent"
    if state is None:
        return "no copy was sent (no fallback address: set tenants[].fallback_to)"
    if state in ("dead", "bounced"):
        return "the copy to the fallback address was lost too"
    return f"a copy went to the fallback address ({state})"


def report_mail(cfg: Config, to: str, report: Report, now: float) -> Outgoing:
    msg = EmailMessage()
    msg["From"] = cfg.mail.from_
    msg["To"] = to
    msg["Subject"] = report.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, UTC))
    msg["Message-ID"] = make_msgid(domain=cfg.smtp.domains[0])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg.set_content(report.text)
    msg.add_alternative(f"<html><body>{report.html}</body></html>", subtype="html")
    # The mailer sends it from its own bounce address: a report that cannot be delivered is
    # recorded as lost (bridge/bounce_intake.py), never answered.
    return Outgoing("report", "", (to,), bytes(msg), None)


def report_address(tenant: TenantConfig) -> str | None:
    if tenant.report_to:
        return tenant.report_to
    if tenant.takes_replies:
        return tenant.reply_to
    return tenant.bounce_to


class Maintenance(Worker):
    """The privacy purge and the libraries' reports, each when due (see the module docstring)."""

    name = "maintenance"

    def __init__(
        self,
        cfg: Config,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        wake: Wake | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.wake_mail = (wake or Wake()).mail  # when a report is queued
        super().__init__()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg

    async def step(self) -> float:
        await self.tick(self.clock())
        return min(defaults.MAINTENANCE_EVERY_S, 60.0)

    async def tick(self, now: float) -> None:
        """Run whatever is due. Safe to call often: each job records its own last run."""
        privacy = self.cfg.privacy
        if await self.store.job_due("purge", now, defaults.MAINTENANCE_EVERY_S):
            counts = await self.store.purge(
                now - privacy.retain_bodies_days * DAY,
                now - privacy.retain_metadata_days * DAY,
                now,
            )
            log.info(
                "privacy purge: %d text(s) erased, %d record(s) deleted, %d email(s) deleted",
                counts.bodies,
                counts.records,
                counts.mails,
            )
        every = self.cfg.reports.every_days
        if every is None:
            return
        for tenant in self.cfg.tenants:
            if await self.store.job_due(f"report:{tenant.id}", now, every * DAY):
                await self.send_report(tenant, now - every * DAY, now)

    async def send_report(self, tenant: TenantConfig, since: float, until: float) -> bool:
        to = report_address(tenant)
        if to is None:
            log.warning("report for tenant=%s not sent: no report_to/reply_to/bounce_to", tenant.id)
            return False
        data = await self.store.tenant_report(
            tenant.id, self.cfg.source_addr_for(tenant), since, until
        )
        report = build_report(tenant.name, data, since, until)
        await self.store.enqueue_mail(report_mail(self.cfg, to, report, until), until)
        self.wake_mail()
        log.info("report queued tenant=%s period=%s..%s", tenant.id, _day(since), _day(until))
        return True
