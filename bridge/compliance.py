"""Compliance at the edges of the queue: keywords in patron messages, and the checks made just
before a text is submitted (opt-out, quiet hours, frequency caps).

The rules themselves are pure functions in bridge/policy.py; this module applies them to the
store and the configuration.

One promise needs more than a check: once a STOP is committed, no text leaves for that number
(except the one confirmation). A dispatcher that checked a moment before the commit could still
submit a moment after. `NumberLocks` closes that gap: the dispatcher holds the number's lock from
its opt-out check until its submit_sm is answered, and the keyword handler holds it while it
commits the opt-out, so the two can never interleave (within one bridge process).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from bridge import addressing, policy
from bridge.config import Config, TenantConfig
from bridge.inbound import Inbound
from bridge.model import Decision, MoOutcome, NewSms, OptoutRecord, SmsRecord
from bridge.store import Optouts, Outgoing

log = logging.getLogger(__name__)


class NumberLocks:
    """One asyncio.Lock per patron number, created on demand and dropped when free."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, msisdn: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(msisdn, (asyncio.Lock(), 0))
        self._locks[msisdn] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[msisdn]
            if users <= 1:
                del self._locks[msisdn]
            else:
                self._locks[msisdn] = (lock, users - 1)


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class Compliance:
    def __init__(self, cfg: Config, store: Optouts, inbound: Inbound, locks: NumberLocks) -> None:
        self.cfg = cfg
        self.store = store
        self.inbound = inbound
        self.locks = locks

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg

    # --- dispatch-time checks (bridge.dispatcher.DispatchPolicy) -------------------------------

    async def check(self, rec: SmsRecord, now: float) -> Decision:
        if rec.kind == "confirmation":
            # The keyword answers: sent even to a number that has just opted out (CTIA).
            return Decision("send")
        optout = await self.store.optout_status(rec.msisdn, rec.source_addr)
        if optout is not None and optout.opted_out:
            how = f" (replied {optout.keyword})" if optout.keyword else ""
            return Decision(
                "drop",
                reason=f"the patron opted out of text messages on {_day(optout.changed_at)}{how}",
            )
        tenant = self.cfg.tenant_or_none(rec.tenant_id)
        if tenant is None or rec.kind != "notice":
            return Decision("send")  # staff answers go out at once: the patron just wrote
        if tenant.quiet_hours is not None and not rec.urgent:
            qh = tenant.quiet_hours
            until = policy.quiet_until(
                datetime.fromtimestamp(now, UTC),
                policy.QuietHours(qh.start, qh.end, qh.timezone, qh.use_recipient_timezone),
                rec.msisdn,
            )
            if until is not None:
                return Decision(
                    "defer",
                    until=until.timestamp(),
                    reason=f"quiet hours until {until.strftime('%Y-%m-%d %H:%M')} UTC",
                )
        if tenant.frequency_cap is not None:
            cap = tenant.frequency_cap
            times = await self.store.sent_times(rec.msisdn, tenant.id, now - cap.per_s)
            action, at = policy.cap_decision(
                times, now, policy.FrequencyCap(cap.max_messages, cap.per_s, cap.mode)
            )
            limit = f"at most {cap.max_messages} texts per {cap.per_s / 3600:g} h"
            if action == "defer":
                return Decision("defer", until=at, reason=f"frequency cap: {limit}")
            if action == "refuse":
                return Decision("drop", reason=f"frequency cap reached ({limit})")
        return Decision("send")

    # --- keywords in patron messages (bridge.inbound.KeywordHook) ------------------------------

    def tenants_on(self, dest: str) -> list[TenantConfig]:
        # Both canonical (bridge.addressing.canonical_address): config.py stores sending
        # numbers as E.164 and the MO router reads the destination the same way.
        return [t for t in self.cfg.tenants if self.cfg.source_addr_for(t) == dest]

    async def keyword(self, msisdn: str, dest: str, text: str, now: float) -> MoOutcome | None:
        cfg = self.cfg
        routed, _ = await self.inbound.route_tenant(msisdn, dest, now)
        custom = routed.keywords if routed else ()
        keywords = cfg.compliance.keyword_set(custom)
        # A bare keyword ("STOP", "Stop!"), else an unmistakable opt-out request ("stop
        # please", "STOP STOP"): policy.match_optout_request documents the rule.
        match = policy.match_keyword(text, keywords) or policy.match_optout_request(text, keywords)
        if match is None:
            return None
        if not addressing.is_msisdn(msisdn):
            # No number to record an opt-out for or to text an answer to (an alphanumeric
            # sender id, an empty or broken sender): staff get the message, told why.
            return await self.inbound.reply_outcome(
                msisdn,
                dest,
                text,
                now,
                tag=match.keyword,
                keyword=match.keyword if match.action != "custom" else None,
            )
        comp = cfg.compliance
        owner = routed or next(iter(self.tenants_on(dest)), cfg.tenants[0])
        log.info("keyword %s from=%s to=%s", match.keyword, addressing.mask_msisdn(msisdn), dest)
        if match.action == "help":
            body = comp.help_text or policy.help_text(comp.program_name, comp.help_contact)
            return MoOutcome(sms=[self._answer(owner, msisdn, dest, body)])
        if match.action == "custom":
            return await self.inbound.reply_outcome(msisdn, dest, text, now, tag=match.keyword)
        opted_out = match.action == "optout"
        current = await self.store.optout_status(msisdn, dest)
        salt = f"{match.action}@{current.changed_at if current else 0}"
        if current is not None and current.opted_out == opted_out:
            # Already in that state: one confirmation was enough; say nothing again.
            return MoOutcome(dedup_salt=salt)
        if current is None and not opted_out:
            # START from a number that never opted out: a welcome, no state to change.
            body = self.welcome_text()
            return MoOutcome(sms=[self._answer(owner, msisdn, dest, body)], dedup_salt=salt)
        record = OptoutRecord(msisdn, dest, opted_out, match.keyword, now, "patron")
        if opted_out:
            body = comp.optout_text or policy.optout_confirmation(comp.program_name)
        else:
            body = self.welcome_text()
        return MoOutcome(
            sms=[self._answer(owner, msisdn, dest, body)],
            mails=self._notify_libraries(msisdn, dest, record),
            optout=record,
            dedup_salt=salt,
        )

    def welcome_text(self) -> str:
        comp = self.cfg.compliance
        return (
            comp.welcome_text
            or comp.optin_text
            or policy.optin_confirmation(comp.program_name, frequency=comp.frequency_text)
        )

    def _answer(self, tenant: TenantConfig, msisdn: str, dest: str, body: str) -> NewSms:
        sms = self.inbound.answer_sms(tenant.id, msisdn, dest, body)
        return dataclasses.replace(sms, kind="confirmation")

    def _notify_libraries(self, msisdn: str, dest: str, rec: OptoutRecord) -> list[Outgoing]:
        """Every library sending from that number learns of it, so staff can update the ILS."""
        what = "opted out of" if rec.opted_out else "opted back in to"
        number = addressing.format_msisdn(msisdn)
        sending = addressing.format_msisdn(dest)
        out = []
        for tenant in self.tenants_on(dest):
            to = tenant.reply_to if tenant.takes_replies else tenant.bounce_to
            if not to:
                continue
            body = (
                f"The patron with phone number {number} {what} text notices on "
                f"{_day(rec.changed_at)} by replying {rec.keyword} to {sending}.\n\n"
                + (
                    "The bridge will not text this number again until the patron replies "
                    "START. Please update the patron's notice preference in the ILS so notices "
                    "reach them another way.\n"
                    if rec.opted_out
                    else "Texts to this number are allowed again.\n"
                )
            )
            out.append(
                self.inbound.notification(
                    to, f"Patron {number} {what} text notices", body, rec.changed_at
                )
            )
        return out
