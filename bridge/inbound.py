"""deliver_sm router: delivery receipts, patron replies (MO), and STOP/START/HELP via `keywords`.

The SMPP session calls `handle()` and sends deliver_sm_resp with the status it returns, and
only then: so whatever a deliver_sm causes (a state change, a bounce, a reply email, an answer
SMS) is committed before the SMSC hears ESME_ROK. A store failure answers ESME_RX_T_APPN
(SMPP 3.4 §5.1.3, "temporary application error") and the SMSC redelivers later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge import addressing
from bridge.batcher import Batcher
from bridge.bounces import build_bounces
from bridge.config import Config, TenantConfig
from bridge.mailbuild import build_notification, build_patron_reply
from bridge.metrics import Metrics
from bridge.model import Failure, MoOutcome, NewSms, SmsRecord, SmsState, Wake
from bridge.receipt_watch import (
    LIKELY_CAUSES,
    ReceiptHealth,
    ReceiptWatch,
    deadline_cutoff,
    deadline_outcome,
)
from bridge.smpp import errors
from bridge.smpp.encoding import concat_from_sar, decode_payload, split_udh
from bridge.smpp.pdu import DeliverSm
from bridge.smpp.receipts import (
    FINAL_FAILED,
    id_variants,
    is_receipt,
    is_sme_acknowledgement,
    parse_receipt,
)
from bridge.store import Outgoing, Store, StoreError
from bridge.store.base import HeldReceipt, ReceiptItem, ReceiptOutcome
from bridge.worker import Worker

log = logging.getLogger(__name__)

# How long a group of receipts waits for more before its transaction (see Inbound.__init__).
RECEIPT_LINGER_S = 0.002

# Marks the place of parts that never arrived in a long reply passed on after the timeout.
MISSING_PART = " [...] "


# Keyword handling (bridge/compliance.py) gets the first look at every MO; None means "not
# a keyword, route it as a reply".
KeywordHook = Callable[[str, str, str, float], Awaitable[MoOutcome | None]]


@dataclass
class InboundCounters:
    receipts: int = 0
    receipts_unknown: int = 0
    mo: int = 0
    mo_duplicates: int = 0


def join_with_gaps(parts: Sequence[tuple[int, str]], total: int) -> str:
    """The parts of a long message that arrived, with MISSING_PART wherever parts are missing
    (before, between or after them). Parts are cut at any character, so around a gap the
    spaces of both sides become the marker's own."""
    out = ""
    expected = 1
    for seq, text in sorted(parts):
        if seq != expected:
            out = out.rstrip() + MISSING_PART
            text = text.lstrip()
        out += text
        expected = seq + 1
    if expected <= total:
        out = out.rstrip() + MISSING_PART.rstrip()
    return out.strip()


@contextlib.asynccontextmanager
async def _no_lock(msisdn: str) -> AsyncIterator[None]:
    yield


def rollup(rec: SmsRecord, segment_states: list[str]) -> tuple[SmsState, str | None] | None:
    """One message state from its segments' receipts (pure).

    Any segment that failed finally fails the message (the patron did not get the whole text);
    it is delivered only when every segment is.
    """
    for state in segment_states:
        if state in FINAL_FAILED:
            if state == "expired":
                return SmsState.EXPIRED, "the carrier could not reach the phone before it gave up"
            words = {
                "undeliverable": "the carrier could not deliver the text to the phone",
                "rejected": "the carrier rejected the text",
                "deleted": "the carrier deleted the text before delivery",
            }
            return SmsState.FAILED, words.get(state, f"the carrier reported {state}")
    if segment_states and all(s == "delivered" for s in segment_states):
        return SmsState.DELIVERED, None
    return None


def _receipt_failure(state: SmsState, reason: str | None, raw: str) -> Failure:
    status = "5.4.7" if state is SmsState.EXPIRED else "5.0.0"
    return Failure(state, reason or raw, status, f"X-SMPP; receipt {raw}")


def _same_number(msisdn: str, patron: str) -> bool:
    """Whether a receipt's patron (canonical, bridge.addressing.canonical_address) is the
    number a segment was sent to. Canonical forms compare equal; the digit comparison remains
    for receipts held before numbers were canonical and for SMSCs that write the patron in a
    form no reading turns into the submitted number (a national number flagged TON 1)."""
    if not patron:
        return False
    if patron == msisdn:
        return True
    digits, theirs = msisdn.lstrip("+"), patron.lstrip("+")
    return theirs.isdigit() and (
        digits == theirs or (len(theirs) >= 7 and digits.endswith(theirs[-10:]))
    )


def _regions(cfg: Config) -> list[str]:
    """The tenants' regions, first tenant's first: the regions a national form is read in."""
    out: list[str] = []
    for t in cfg.tenants:
        if t.region not in out:
            out.append(t.region)
    return out


def our_number(cfg: Config, raw: str, ton: int | None) -> tuple[addressing.SmsAddress, str]:
    """The library number an MO was sent to, canonical, and the region its library reads
    numbers in. Read with the TON the SMSC gave, then without trusting it (carriers flag
    national numbers as international), in each tenant's region, and the reading that is one
    of the configured sending numbers wins; otherwise the first tenant's reading."""
    ours: dict[str, str] = {}
    for t in cfg.tenants:
        ours.setdefault(cfg.source_addr_for(t), t.region)
    regions = _regions(cfg)
    for region in regions:
        for reading in (ton, None):
            addr = addressing.canonical_address(raw, region, ton=reading)
            if addr.is_number and addr.value in ours:
                return addr, ours[addr.value]
    return addressing.canonical_address(raw, regions[0], ton=ton), regions[0]


def mo_addresses(
    cfg: Config, pdu: DeliverSm
) -> tuple[addressing.SmsAddress, addressing.SmsAddress]:
    """(patron, library number) of an MO in canonical form. The patron's number, when the
    SMSC writes it nationally, is read in the region of the library it wrote to."""
    dest, region = our_number(cfg, pdu.destination_addr, pdu.dest_addr_ton)
    sender = addressing.canonical_address(pdu.source_addr, region, ton=pdu.source_addr_ton)
    return sender, dest


def shown(value: str) -> str:
    """A sender for a log line: masked (bridge.addressing.mask_msisdn); "-" when nothing of it
    can be shown (a sender id, an empty sender)."""
    return addressing.mask_msisdn(value) or "-"


def _sender_kind(value: str, region: str) -> str:
    if value == "":
        return "no sender number"
    addr = addressing.canonical_address(value, region)
    return {
        "alphanumeric": "an alphanumeric sender id",
        "short_code": "a short code",
    }.get(addr.kind, "not a valid phone number")


class Inbound:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        wake: Wake | None = None,
        keywords: KeywordHook | None = None,
        hold: Callable[[str], AbstractAsyncContextManager[None]] = _no_lock,
        metrics: Metrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.wake = wake or Wake()
        self.keywords = keywords
        # Serialises an opt-out commit with the dispatcher's check-and-submit for one number
        # (bridge/compliance.py's NumberLocks); no lock when nothing else dispatches.
        self.hold = hold
        self.counters = InboundCounters()
        # Receipts on this bind against the texts that asked for one (bridge/receipt_watch.py).
        self.watch = ReceiptWatch(clock())
        self.receipt_health: ReceiptHealth | None = None
        # Receipts that arrive together (up to smpp.inbound_window deliver_sm in hand) share
        # one transaction; so do the held-receipt lookups of texts recorded together. A
        # carrier's receipts trickle in a few milliseconds apart while a batch drains, so a
        # group waits RECEIPT_LINGER_S for company: about a fifth less CPU per text (bench 8,
        # slow:20), for 2 ms more before each deliver_sm_resp (SMPP sets no deadline shorter
        # than seconds). The batcher stops waiting for an SMSC that sends one at a time.
        self._receipts: Batcher[ReceiptItem, ReceiptOutcome | Exception] = Batcher(
            self._apply_group, linger_s=RECEIPT_LINGER_S, name="receipts"
        )
        self._held: Batcher[tuple[str, ...], list[HeldReceipt]] = Batcher(
            self._held_group, name="held-receipts"
        )
        self._held_busy = False
        self._sweeper = Sweeper(self)

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg

    async def start(self) -> None:
        self.receipt_health, _ = self._check_receipts(self.clock())
        await self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()

    # --- entry point ---------------------------------------------------------------------------

    async def handle(self, pdu: DeliverSm) -> int:
        try:
            if is_receipt(pdu.esm_class):
                await self._receipt(pdu)
            elif is_sme_acknowledgement(pdu.esm_class):
                log.info(
                    "sme acknowledgement from=%s ignored", addressing.mask_msisdn(pdu.source_addr)
                )
            else:
                await self._mo(pdu)
            return errors.ESME_ROK
        except StoreError as exc:
            log.error(
                "deliver_sm seq=%d not committed (%s): asking the SMSC to retry", pdu.sequence, exc
            )
            return errors.ESME_RX_T_APPN
        except Exception:
            # A bug must not lose a patron's message: the SMSC keeps it and retries.
            log.exception("deliver_sm seq=%d failed: asking the SMSC to retry", pdu.sequence)
            return errors.ESME_RX_T_APPN

    # --- receipts ------------------------------------------------------------------------------

    async def _receipt(self, pdu: DeliverSm) -> None:
        payload = pdu.message_payload or pdu.short_message
        text = decode_payload(pdu.data_coding, payload)
        receipt = parse_receipt(
            text, pdu.receipted_message_id, pdu.message_state, pdu.network_error_code
        )
        self.counters.receipts += 1
        self.watch.receipt(self.clock())
        if receipt is None:
            self.counters.receipts_unknown += 1
            log.warning("receipt without a message id ignored seq=%d", pdu.sequence)
            return
        # SMPP 3.4 §4.6.1: a receipt's source is the original destination, the patron.
        patron = addressing.canonical_address(
            pdu.source_addr, self.cfg.tenants[0].region, ton=pdu.source_addr_ton
        ).value
        item = ReceiptItem(
            receipt.message_id,
            patron,
            receipt.state,
            receipt.error,
            receipt.raw_stat or receipt.state,
        )
        # Not (yet) ours when nothing matches: the submit_sm_resp it answers may still be on
        # its way to the store, or the carrier writes the id in another base. Then it is held
        # durably, matched when that submit is recorded or by the sweeper; the SMSC gets
        # ESME_ROK either way, after the commit.
        self._done(item, await self._apply_receipt(item))

    async def _apply_receipt(self, item: ReceiptItem) -> ReceiptOutcome:
        """One receipt through the receipt batcher: committed when this returns."""
        out = await self._receipts(item)
        if isinstance(out, Exception):
            raise out
        return out

    async def _apply_group(
        self, items: Sequence[ReceiptItem]
    ) -> Sequence[ReceiptOutcome | Exception]:
        """The receipts that arrived together (Batcher), matched and applied or held in one
        transaction (Store.apply_receipts)."""
        now = self.clock()
        cfg = self.cfg

        def bounces(
            item: ReceiptItem, rec: SmsRecord, final: SmsState, reason: str | None
        ) -> list[Outgoing]:
            return build_bounces(cfg, rec, _receipt_failure(final, reason, item.raw), now)

        try:
            return await self.store.apply_receipts(items, now, rollup, bounces, _same_number)
        except StoreError:
            raise  # the store is down: every receipt of the group is retried by the SMSC
        except Exception:
            if len(items) == 1:
                raise
        # A bug that one receipt triggers (its bounce, say) must not make the SMSC retry the
        # others with it for ever: each alone, and only the culprit fails.
        out: list[ReceiptOutcome | Exception] = []
        for item in items:
            try:
                out.extend(await self._apply_group([item]))
            except Exception as exc:
                out.append(exc)
        return out

    def _done(self, item: ReceiptItem, out: ReceiptOutcome) -> None:
        seg = out.segment
        if seg is None:
            if item.held_id is None:
                log.info(
                    "receipt smsc_id=%s stat=%s held until its submit is known",
                    item.smsc_id,
                    item.raw,
                )
            return
        if self.metrics is not None:
            self.metrics.receipt(item.state)
        log.info(
            "receipt queue_id=%s segment=%d smsc_id=%s stat=%s%s",
            seg.queue_id,
            seg.seq,
            item.smsc_id,
            item.raw,
            f" state={out.new_state.value}" if out.new_state else "",
        )
        if out.new_state in (SmsState.FAILED, SmsState.EXPIRED):
            self.wake.mail()

    async def submitted(self, rec: SmsRecord, smsc_ids: Sequence[str]) -> None:
        """The dispatcher recorded these ids: apply receipts that overtook them.

        Nearly always nothing is held, so the lookup is one cheap read (_held_for). It runs
        after the submit's commit; apply_receipts matches or holds in one transaction, so a
        receipt committed before the submit is seen here. One whose transaction overlaps the
        submit's (PostgreSQL, where transactions run side by side, on this instance or
        another) is held unseen and matched by the sweeper after receipt_match_delay_s."""
        if self.cfg.smpp.registered_delivery == "all":
            self.watch.submitted(self.clock())
        held = await self._held_for(tuple(smsc_ids))
        if not held:
            return
        items = [
            ReceiptItem(smsc_id, patron, state, error, raw or state, held_id=row_id)
            for row_id, smsc_id, patron, state, error, raw, _ in held
        ]
        outs = await asyncio.gather(*(self._apply_receipt(item) for item in items))
        for item, out in zip(items, outs, strict=True):
            self._done(item, out)

    async def _held_for(self, smsc_ids: tuple[str, ...]) -> list[HeldReceipt]:
        """Held receipts for one text's ids: straight to the store unless a lookup is in
        flight, else through the Batcher with the others that arrive meanwhile. A SQLite point
        read never leaves the loop's thread, so it is never in flight and pays no Batcher
        hop; PostgreSQL's round trips are shared."""
        if self._held_busy:
            return await self._held(smsc_ids)
        self._held_busy = True
        try:
            (rows,) = await self._held_group([smsc_ids])
        finally:
            self._held_busy = False
        return rows

    async def _held_group(self, asks: Sequence[tuple[str, ...]]) -> list[list[HeldReceipt]]:
        """held_for of several texts' ids in one read; each held row goes to the first text
        that asks for its id (two texts carrying one id, an SMSC reusing ids, must not apply
        it twice)."""
        rows = await self.store.held_for(sorted({i for ids in asks for i in ids}))
        given: set[int] = set()
        out: list[list[HeldReceipt]] = []
        for ids in asks:
            wanted = set(ids)
            mine = [r for r in rows if r[1] in wanted and r[0] not in given]
            given.update(r[0] for r in mine)
            out.append(mine)
        return out

    async def sweep_receipts(self, now: float) -> int:
        """Held receipts: after receipt_match_delay_s try the id's other bases; after
        receipt_hold_s give up on them as unknown."""
        applied = 0
        cfg = self.cfg.inbound
        held = await self.store.held_receipts(now - cfg.receipt_match_delay_s)
        items = [
            ReceiptItem(
                smsc_id,
                patron,
                state,
                error,
                raw or state,
                held_id=row_id,
                variants=tuple(v for v in id_variants(smsc_id) if v != smsc_id),
            )
            for row_id, smsc_id, patron, state, error, raw, _ in held
        ]
        outs = await asyncio.gather(*(self._apply_receipt(item) for item in items))
        for item, out, (row_id, *_, at) in zip(items, outs, held, strict=True):
            if out.segment is not None:
                self._done(item, out)
                applied += 1
            elif at < now - cfg.receipt_hold_s:
                self.counters.receipts_unknown += 1
                log.warning(
                    "receipt for unknown smsc_id=%s stat=%s dropped", item.smsc_id, item.raw
                )
                await self.store.drop_held_receipt(row_id)
        return applied

    async def sweep_deadlines(self, now: float) -> int:
        """Receipt deadline (bridge/receipt_watch.py): texts still `submitted` receipt_timeout_s
        after their submit end `unconfirmed` (no bounce: a carrier that sends no receipts must
        not flood a library with one email per text; the library report lists them). Then the
        bind's receipt health: a WARNING when receipts stop coming, an INFO when they resume."""
        smpp = self.cfg.smpp
        outcome = deadline_outcome(smpp.registered_delivery, smpp.receipt_timeout_s)
        settled = await self.store.settle_overdue(
            deadline_cutoff(now, smpp.receipt_timeout_s), outcome.state, outcome.reason, now
        )
        for queue_id, tenant_id, msisdn in settled:
            log.info(
                "%s queue_id=%s tenant=%s to=%s reason=%s",
                outcome.state.value,
                queue_id,
                tenant_id,
                addressing.mask_msisdn(msisdn),
                outcome.reason,
            )
        if self.metrics is not None:
            self.metrics.receipt_deadline(outcome.state, len(settled))
        health, changed = self._check_receipts(now)
        self.receipt_health = health
        if self.metrics is not None:
            self.metrics.receipt_health(health.missing, health.seconds_since_receipt)
        if changed and health.missing:
            log.warning(
                "receipts missing: no delivery receipt on this bind for %d text(s) sent in the"
                " last %.0f min; likely causes: %s. Texts without one become 'unconfirmed' after"
                " smpp.receipt_timeout_s",
                health.submits_since_receipt,
                (now - (self.watch.oldest_unanswered_at or now)) / 60,
                LIKELY_CAUSES,
            )
        elif changed:
            log.info("receipts arriving again on this bind")
        return len(settled)

    def _check_receipts(self, now: float) -> tuple[ReceiptHealth, bool]:
        smpp = self.cfg.smpp
        return self.watch.check(
            now,
            watching=smpp.registered_delivery == "all",
            min_submits=smpp.receipts_missing_after_submits,
            after_s=smpp.receipts_missing_after_s,
        )

    # --- patron messages -----------------------------------------------------------------------

    async def _mo(self, pdu: DeliverSm) -> None:
        payload = pdu.message_payload or pdu.short_message
        info, body = split_udh(payload, pdu.esm_class)
        if info is None:
            info = concat_from_sar(
                pdu.sar_msg_ref_num, pdu.sar_total_segments, pdu.sar_segment_seqnum
            )
        text = decode_payload(pdu.data_coding, body)
        # Canonical forms (bridge.addressing.canonical_address) before anything is compared,
        # stored or looked up: the opt-out a STOP records must be the one every later notice
        # from that library's number to that patron is checked against.
        sender, library = mo_addresses(self.cfg, pdu)
        msisdn, dest = sender.value, library.value
        now = self.clock()
        digest = hashlib.sha256(
            b"|".join(
                [
                    msisdn.encode(),
                    dest.encode(),
                    bytes([pdu.esm_class & 0xFF, pdu.data_coding & 0xFF]),
                    payload,
                    repr(info).encode(),
                ]
            )
        ).hexdigest()
        group = None
        if info is not None and info.total > 1:
            group = f"{msisdn}|{dest}|{info.ref_bits}|{info.ref}|{info.total}"
            parts = await self.store.add_mo_part(group, info.seq, info.total, text, now)
            if parts is None:
                log.info("mo part %d/%d from=%s kept", info.seq, info.total, shown(msisdn))
                return
            text = "".join(parts)
            digest = hashlib.sha256(f"{group}|{text}".encode()).hexdigest()
        await self.route(msisdn, dest, text, digest, now, done_group=group)

    async def route(
        self,
        msisdn: str,
        dest: str,
        text: str,
        dedup_key: str,
        now: float,
        *,
        done_group: str | None = None,
    ) -> None:
        self.counters.mo += 1
        async with self.hold(msisdn):
            outcome = None
            if self.keywords is not None:
                outcome = await self.keywords(msisdn, dest, text, now)
            if outcome is None:
                outcome = await self.reply_outcome(msisdn, dest, text, now)
            if outcome.dedup_salt:
                dedup_key = hashlib.sha256(f"{dedup_key}|{outcome.dedup_salt}".encode()).hexdigest()
            fresh = await self.store.commit_mo(
                dedup_key,
                now,
                self.cfg.inbound.dedup_window_s,
                mails=outcome.mails,
                sms=outcome.sms,
                conversations=outcome.conversations,
                done_group=done_group,
                optout=outcome.optout,
            )
        if not fresh:
            self.counters.mo_duplicates += 1
            log.info("mo redelivery from=%s acknowledged again", shown(msisdn))
            return
        log.info(
            "mo from=%s to=%s chars=%d emails=%d sms=%d",
            shown(msisdn),
            dest,
            len(text),
            len(outcome.mails),
            len(outcome.sms),
        )
        if outcome.mails:
            self.wake.mail()
        if outcome.sms:
            self.wake.sms()

    async def route_tenant(
        self, msisdn: str, dest: str, now: float
    ) -> tuple[TenantConfig | None, SmsRecord | None]:
        """Which library a reply belongs to: the one whose own number it was sent to; on a
        shared number, the one that texted this patron last within inbound.reply_window_s."""
        # Both sides canonical: config.py and mo_addresses read numbers the same way.
        own = [t for t in self.cfg.tenants if t.source_addr and t.source_addr == dest]
        last = await self.store.last_sms_to(msisdn, dest, now - self.cfg.inbound.reply_window_s)
        if len(own) == 1:
            return own[0], last if last and last.tenant_id == own[0].id else None
        if last is not None:
            return self.cfg.tenant_or_none(last.tenant_id), last
        return None, None

    def answer_sms(self, tenant_id: str, msisdn: str, source: str, text: str) -> NewSms:
        """An SMS the bridge itself sends a patron (canned answers, keyword confirmations),
        from the number the patron wrote to (canonical). Null envelope sender: nothing bounces
        back from it."""
        cfg = self.cfg
        if source not in {cfg.source_addr_for(t) for t in cfg.tenants}:
            # Never from a number the bridge does not send from (an MO destination no reading
            # of which is a configured number): from the library's own number instead.
            tenant = cfg.tenant_or_none(tenant_id)
            source = cfg.source_addr_for(tenant) if tenant is not None else cfg.smpp.source_addr
        return NewSms(
            tenant_id=tenant_id,
            msisdn=msisdn,
            rcpt_addr=f"{addressing.e164_to_local_part(msisdn)}@{self.cfg.smtp.domains[0]}",
            source_addr=source,
            envelope_from="",
            message_id=None,
            subject="",
            body=text,
        )

    async def reply_outcome(
        self,
        msisdn: str,
        dest: str,
        text: str,
        now: float,
        *,
        tag: str | None = None,
        keyword: str | None = None,
    ) -> MoOutcome:
        """A patron's message as an email to the library that texted them (or the fallback)."""
        if not addressing.is_msisdn(msisdn):
            return await self._unnumbered_reply(msisdn, dest, text, now, tag, keyword)
        cfg = self.cfg
        tenant, last = await self.route_tenant(msisdn, dest, now)
        when = datetime.fromtimestamp(now, UTC)
        domain = cfg.smtp.domains[0]
        if tenant is None:
            if cfg.inbound.fallback_to:
                mail = build_patron_reply(
                    from_local=addressing.e164_to_local_part(msisdn),
                    domain=domain,
                    from_display=f"SMS from {addressing.format_msisdn(msisdn)}",
                    to_addr=cfg.inbound.fallback_to,
                    text=text,
                    original_sms=None,
                    original_message_id=None,
                    original_subject=None,
                    tenant_name="(no library matched)",
                    now=when,
                    tag=tag,
                )
                return MoOutcome(mails=[mail])
            if cfg.inbound.unknown_reply_text:
                any_tenant = cfg.tenants[0].id
                return MoOutcome(
                    sms=[self.answer_sms(any_tenant, msisdn, dest, cfg.inbound.unknown_reply_text)]
                )
            return MoOutcome()
        if not tenant.takes_replies:
            return MoOutcome(sms=[self.answer_sms(tenant.id, msisdn, dest, tenant.noreply_answer)])
        assert tenant.reply_to is not None
        mail = build_patron_reply(
            from_local=addressing.e164_to_local_part(msisdn),
            domain=domain,
            from_display=f"SMS from {addressing.format_msisdn(msisdn)}",
            to_addr=tenant.reply_to,
            text=text,
            original_sms=last.body if last else None,
            original_message_id=last.message_id if last else None,
            original_subject=last.subject if last else None,
            tenant_name=tenant.name,
            now=when,
            original_sent_at=datetime.fromtimestamp(last.created_at, UTC) if last else None,
            tag=tag,
            tenant_id=tenant.id,
        )
        return MoOutcome(
            mails=[mail],
            conversations=[(mail.message_id, tenant.id, msisdn, dest)],
        )

    async def _unnumbered_reply(
        self, sender: str, dest: str, text: str, now: float, tag: str | None, keyword: str | None
    ) -> MoOutcome:
        """A message from a sender that is not a phone number (empty, an alphanumeric id, "1",
        twenty digits): accepted, never retried for ever, and passed on to staff like any
        reply, with the sender as the carrier gave it. Nothing can be texted back to it and no
        opt-out can be recorded for it, and the mail says so."""
        cfg = self.cfg
        tenant, _ = await self.route_tenant(sender, dest, now)
        to = tenant.reply_to if tenant is not None and tenant.takes_replies else None
        if tenant is None:
            to = cfg.inbound.fallback_to
        what = _sender_kind(sender, cfg.tenants[0].region)
        if to is None:
            log.warning(
                "mo from=%s (%s) to=%s: no library takes replies and inbound.fallback_to is"
                " not set; acknowledged and dropped",
                shown(sender),
                what,
                dest,
            )
            return MoOutcome()
        if keyword is not None:
            log.warning(
                "mo from=%s (%s) to=%s reads as %s, which cannot be recorded as an opt-out"
                " without a phone number; passed on to staff",
                shown(sender),
                what,
                dest,
                keyword,
            )
        given = sender or "(none)"
        note = (
            f"Note from the SMS bridge: the carrier gave the sender as {given!r}"
            f" ({what}), not a phone number, so this message cannot be answered by text"
        )
        if keyword is not None:
            note += (
                f". It reads as the keyword {keyword}, but an opt-out (or any other keyword)"
                " cannot be recorded against a number for such a sender."
            )
        else:
            note += ", and a STOP from it cannot be recorded as an opt-out."
        local, _, domain = cfg.mail.from_.rpartition("@")
        mail = build_patron_reply(
            from_local=local,
            domain=domain,
            from_display=f"SMS from {given}",
            to_addr=to,
            text=text,
            note=note,
            tag=tag,
            original_sms=None,
            original_message_id=None,
            original_subject=None,
            tenant_name=tenant.name if tenant is not None else "(no library matched)",
            now=datetime.fromtimestamp(now, UTC),
            # Null envelope sender: a bounce must not come back as a reply to nobody.
            envelope_from="",
        )
        return MoOutcome(mails=[mail])

    def notification(self, to: str, subject: str, body: str, now: float) -> Outgoing:
        return build_notification(
            from_addr=self.cfg.mail.from_,
            to_addr=to,
            subject=subject,
            body=body,
            now=datetime.fromtimestamp(now, UTC),
            domain=self.cfg.smtp.domains[0],
        )

    # --- long replies whose parts never all arrived --------------------------------------------

    async def sweep(self, now: float) -> int:
        stale = await self.store.stale_mo_groups(now - self.cfg.inbound.reassembly_timeout_s)
        for group, total, parts in stale:
            msisdn, dest = group.split("|")[:2]
            # Canonical already, except in parts kept by a version before canonical numbers
            # (the forms are idempotent: a canonical value reads as itself).
            library, region = our_number(self.cfg, dest, None)
            dest = library.value
            if msisdn.startswith("+"):  # a sender id is kept as it came, with its TON 5
                msisdn = addressing.canonical_address(msisdn, region).value
            text = join_with_gaps(parts, total)
            digest = hashlib.sha256(f"{group}|partial|{text}".encode()).hexdigest()
            log.warning(
                "mo from=%s incomplete after timeout: passing on %d of %d part(s)",
                shown(msisdn),
                len(parts),
                total,
            )
            await self.route(msisdn, dest, text, digest, now, done_group=group)
        return len(stale)


class Sweeper(Worker):
    """The inbound router's timed work: long replies whose parts never all arrived, held
    receipts (other id bases, then given up), and the receipt deadline."""

    name = "mo-reassembly-sweeper"

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound
        super().__init__()

    def interval(self) -> float:
        """Often enough for the shortest of the timeouts it serves (at most 30 s)."""
        cfg = self.inbound.cfg
        return max(
            0.05,
            min(
                30.0,
                cfg.inbound.reassembly_timeout_s / 2,
                cfg.inbound.receipt_match_delay_s / 2,
                cfg.smpp.receipt_timeout_s / 4,
            ),
        )

    async def step(self) -> float:
        inbound = self.inbound
        await inbound.sweep(inbound.clock())
        await inbound.sweep_receipts(inbound.clock())
        await inbound.sweep_deadlines(inbound.clock())
        return self.interval()
