"""Outbound SMS worker: claim → check → encode → submit every segment → record ids | retry | fail.

Mailman's queue runners are the model: a message is claimed (state `sending`), and every path
out of `process()` either finishes it or gives it back with a reason. A crash between claim and
finish leaves it in `sending`; `requeue_inflight()` at start puts it back, so at worst a patron
gets one text twice ("no submit_sm_resp" is an unknown outcome by nature), never zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from bridge.addressing import mask_msisdn
from bridge.backoff import backoff_delay
from bridge.batcher import Batcher
from bridge.config import Config, SmppConfig
from bridge.metrics import Metrics
from bridge.model import Decision, Failure, NewSms, SmsRecord, SmsState
from bridge.policy import optin_confirmation
from bridge.receipt_watch import at_submit, registered_delivery, validity_period
from bridge.shaping import Shaped, shape
from bridge.smpp import errors
from bridge.smpp.encoding import EncodedSms, TooManySegments, encode_sms, segment_count
from bridge.smpp.pdu import SubmitSm, source_address
from bridge.smpp.session import NotBound, ResponseTimeout, SmppSession
from bridge.store import Outgoing, Store
from bridge.store.base import SubmittedSms
from bridge.worker import Worker

log = logging.getLogger(__name__)

# How long a submitted text's record waits for company before its transaction starts. Texts
# whose answers trickle in (a window of 10 at 20 ms per answer: one every 2 ms) would each pay
# a commit of their own, about 300 µs of CPU; waiting 10 ms puts about five in one commit, for
# a sixth less CPU per text over a drain with receipts (bench 8, slow:20: 0.8 to 0.67 ms). The
# text has its answer and has given back its slot by then (_free_slot), so the wait keeps no
# other text off the wire. It waits only while other texts are on the wire awaiting their
# answer (_answers_due): a text sent alone (a trickle, a max_tps of 1) is recorded at once,
# since a crash before its record commits would send it again at the next start; in a drain,
# that can happen to the texts answered in the last 10 ms. A peer that answers one at a time
# stops the waiting too: see bridge/batcher.py LONELY_LIMIT.
RECORD_LINGER_S = 0.01


# Builds the bounce emails for a failed message (bridge/bounces.py); queued in the same
# transaction as the failure, so a crash can neither lose a bounce nor send one twice.
BounceBuilder = Callable[[SmsRecord, Failure, float], Sequence[Outgoing]]


class DispatchPolicy(Protocol):
    """Dispatch-time checks (opt-out, quiet hours, caps): bridge/compliance.py, over the pure
    rules in bridge/policy.py."""

    async def check(self, rec: SmsRecord, now: float) -> Decision: ...


# --- pure planning: what to send for a text, what a submit_sm_resp means --------------------


@dataclass(frozen=True)
class SubmitPlan:
    """The submit_sm PDUs of one text, in sending order, and the validity_period they carry
    (None: not sent; a refusal of it is explained in the failure)."""

    pdus: tuple[SubmitSm, ...]
    validity: str | None


def plan_submit(rec: SmsRecord, encoded: EncodedSms, smpp: SmppConfig) -> SubmitPlan:
    # Sending numbers are stored as E.164 ("+12025550100"); on the wire a TON 1 number
    # carries its digits without the '+' (SMPP 3.4 §5.2.5).
    source, ton, npi = source_address(rec.source_addr)
    dest = rec.msisdn.lstrip("+")
    # SMPP 3.4 §5.2.17 which receipts to ask for; §5.2.15 / §7.1.1 validity_period: the
    # carrier stops trying when the receipt deadline makes the text `unconfirmed` here.
    rd = registered_delivery(smpp.registered_delivery)
    validity = validity_period(smpp.receipt_timeout_s) if smpp.send_validity_period else None
    # message_payload mode: one submit_sm carrying the whole text in the TLV (SMPP 3.4
    # §5.3.2.32), short_message empty; otherwise one submit_sm per part.
    parts: list[tuple[bytes, tuple[int, int, int] | None]] = (
        [(b"", None)]
        if encoded.message_payload is not None
        else [(part.short_message, part.sar) for part in encoded.parts]
    )
    pdus = tuple(
        SubmitSm(
            source_addr=source,
            source_addr_ton=ton,
            source_addr_npi=npi,
            destination_addr=dest,
            short_message=short_message,
            data_coding=encoded.data_coding,
            esm_class=encoded.esm_class,
            sar=sar,
            message_payload=encoded.message_payload,
            registered_delivery=rd,
            validity_period=validity,
        )
        for short_message, sar in parts
    )
    return SubmitPlan(pdus, validity)


@dataclass(frozen=True)
class Accepted:
    """ESME_ROK: the segment is the carrier's; its id matches the receipt later."""

    message_id: str


@dataclass(frozen=True)
class Retry:
    """Give the text back for a later attempt; count=False: it does not use one up."""

    reason: str
    count: bool = True


@dataclass(frozen=True)
class Fail:
    failure: Failure


Outcome: TypeAlias = Accepted | Retry | Fail

NOT_BOUND = Retry("the SMSC link is down", count=False)


def no_answer(exc: ResponseTimeout) -> Retry:
    """No submit_sm_resp (timeout, link lost): the outcome is unknown, so the retry counts."""
    return Retry(f"no answer from the SMSC ({exc.__class__.__name__})")


def resp_outcome(status: int, message_id: str | None, validity: str | None) -> Outcome:
    """What a submit_sm_resp command_status means for the text (SMPP 3.4 §5.1.3)."""
    kind = errors.classify(status)
    if kind == "ok":
        return Accepted(message_id or "")
    name = errors.status_name(status)
    if kind in ("temporary", "throttled", "rebind"):
        return Retry(f"{name}: {errors.describe(status)}")
    reason = errors.describe(status)
    if status == errors.ESME_RINVEXPIRY and validity is not None:
        # Our validity_period (smpp.receipt_timeout_s): a carrier that refuses it refuses
        # every text, so say how to stop sending it.
        reason += (
            f" (validity_period {validity}); if every text fails like this, set"
            " smpp.send_validity_period: false"
        )
    return Fail(
        Failure(SmsState.FAILED, reason, _dsn_status(status), f"X-SMPP; {name} (0x{status:08X})")
    )


def shaped_note(shaped: Shaped | None) -> str | None:
    """What shaping did to a notice, as recorded with it (the cost lint reads it)."""
    if shaped is None or not (shaped.prefix_added or shaped.footer_added or shaped.shortened):
        return None
    return ",".join(
        word
        for word, on in (
            ("prefix", shaped.prefix_added),
            ("footer", shaped.footer_added),
            ("shortened", shaped.shortened),
            (f"+{shaped.extra_segments}segment", shaped.extra_segments > 0),
        )
        if on
    )


def submitted(
    rec: SmsRecord,
    ids: Sequence[str],
    encoded: EncodedSms,
    shaped: Shaped | None,
    smpp: SmppConfig,
    now: float,
) -> SubmittedSms:
    """The store record of a text whose every segment was accepted."""
    settled = at_submit(smpp.registered_delivery)
    return SubmittedSms(
        rec.queue_id,
        tuple(ids),
        encoded.segments,
        encoded.coding,
        now,
        first_contact=(rec.msisdn, rec.source_addr) if rec.kind == "notice" else None,
        shaped=shaped_note(shaped),
        settle=None if settled is None else (settled.state, settled.reason),
    )


class Dispatcher(Worker):
    name = "dispatcher"

    def __init__(
        self,
        cfg: Config,
        store: Store,
        session: SmppSession,
        *,
        clock: Callable[[], float] = time.time,
        bounces: BounceBuilder | None = None,
        policy: DispatchPolicy | None = None,
        on_submitted: Callable[[SmsRecord, Sequence[str]], Awaitable[None]] | None = None,
        hold: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
        metrics: Metrics | None = None,
        may_send: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.session = session
        self.clock = clock
        self.bounces = bounces
        self.policy = policy
        self.on_submitted = on_submitted
        # Per-number lock shared with the opt-out commit (bridge/compliance.py NumberLocks).
        self.hold = hold
        self.metrics = metrics
        # False while this instance has no part of the carrier's max_tps (several instances on
        # PostgreSQL, bridge/ratebudget.py): the queue is left to the instances that have one.
        self.may_send = may_send
        super().__init__()
        self._tasks: set[asyncio.Task[None]] = set()
        # Texts whose first submit_sm has not reached the wire yet (waiting for a window or
        # rate slot): the ones an instance that stops sending can hand back without a duplicate.
        self._unsent: dict[asyncio.Task[None], SmsRecord] = {}
        self._handing_back: set[asyncio.Task[None]] = set()
        # Group commit of the submitted texts (bridge/batcher.py): the texts whose last
        # submit_sm_resp arrived within RECORD_LINGER_S of each other, or while the previous
        # write ran, go in one transaction. A text cancelled at stop while its write waits
        # still gets it committed (the batcher shields it); None is stop()'s barrier behind
        # those writes.
        self._record: Batcher[SubmittedSms | None, None] = Batcher(
            self._record_many,
            max_batch=max(2, cfg.smpp.window * 2),
            linger_s=RECORD_LINGER_S,
            company=self._answers_due,
            name="record-submitted",
        )
        # Enough messages in flight to keep the SMPP window full; each message sends its own
        # segments in order, so a long text cannot hog every slot.
        self._slots = asyncio.Semaphore(max(2, cfg.smpp.window * 2))
        # One text per number at a time, in claim order: a text claimed while another to the
        # same number is in hand waits for that one's task (not for a slot, and not counted
        # as in hand), so a patron with several notices queued cannot fill the window's
        # slots with texts that only wait for each other.
        self._last_for: dict[str, asyncio.Task[None]] = {}
        self._chained = 0
        # Texts holding one of the slots, and texts whose submit_sm_resp are all in and only
        # wait for their record's commit: those gave their slot back (_free_slot), so the
        # commit's wait does not keep the next text off the wire, and are not in hand.
        self._in_slot: set[asyncio.Task[None]] = set()
        self._recording: set[asyncio.Task[None]] = set()

    def reload(self, cfg: Config) -> None:
        self.cfg = cfg

    async def start(self) -> None:
        requeued = await self.store.requeue_inflight(self.clock())
        if requeued:
            log.warning("requeued %d message(s) left in flight by an earlier stop", requeued)
        await super().start()

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop claiming; give in-flight messages up to drain_timeout_s to get their resp,
        then cancel them (each gives its text back: see _process_guarded)."""
        # A round never waits on a text (each has its own task): it ends within a second
        # (the longest wait in step() is for the bind).
        await super().stop(max(1.0, drain_timeout_s))
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("%d message(s) still in flight at stop: requeued", len(pending))
        # Batches run in order: once the barrier's is done, every text's write before it is
        # committed, before the store closes. A failed write was its text's to report.
        with contextlib.suppress(Exception):
            await self._record(None)

    # --- main loop -----------------------------------------------------------------------------

    async def step(self) -> float:
        # Do not claim while the SMSC is away: the backlog waits in `queued` without burning
        # attempts, and drains at max_tps once the bind is back.
        if not self.session.bound:
            await self.session.wait_bound(timeout=1.0)
            if not self.session.bound:
                return 0.0
        if self.may_send is not None and not self.may_send():
            self._hand_back()
            return 1.0
        # Claim a window's worth at a time: up to window*2 texts are in hand, and once a
        # window's worth of them is done, the other still fills the SMSC's window while the
        # claim runs. One claim of ten costs about a quarter per text of one per slot (bench
        # 9), and fewer, larger claims took a sixth off the CPU per text of a drain at
        # slow:20 (bench 8, against claiming at half a window). A task that ends wakes this
        # loop, so no slot waits for the 50 ms.
        window = self.cfg.smpp.window
        free = window * 2 - (len(self._tasks) - self._chained - len(self._recording))
        if free < window or self._chained >= window * 2:
            return 0.05
        batch = await self.store.claim_sms(self.clock(), min(free, 50))
        if not batch:
            due = await self.store.next_due()
            return 1.0 if due is None else min(1.0, due - self.clock())
        for rec in batch:
            after = self._last_for.get(rec.msisdn)
            task = asyncio.create_task(
                self._process_guarded(rec, after), name=f"sms-{rec.queue_id}"
            )
            self._last_for[rec.msisdn] = task
            self._tasks.add(task)
            self._unsent[task] = rec
            task.add_done_callback(functools.partial(self._task_done, number=rec.msisdn))
        return 0.0

    def _hand_back(self) -> None:
        """This instance stopped sending (it stands by, or its heartbeat lapsed: see
        bridge/ratebudget.py): give back at once every claimed text none of whose segments has
        gone out, so a sending instance takes it, rather than have it wait for this one's pause
        rate (one text per quarter hour) while its lease is renewed. A text with a segment on
        the wire finishes here: giving it back would send that segment twice."""
        for task in list(self._unsent):
            if task not in self._handing_back:
                self._handing_back.add(task)
                task.cancel()

    def _task_done(self, task: asyncio.Task[None], *, number: str) -> None:
        self._tasks.discard(task)
        self._recording.discard(task)
        self._unsent.pop(task, None)
        self._handing_back.discard(task)
        if self._last_for.get(number) is task:
            del self._last_for[number]
        self.wake()

    async def _process_guarded(self, rec: SmsRecord, after: asyncio.Task[None] | None) -> None:
        try:
            if after is not None and not after.done():
                self._chained += 1
                try:
                    await asyncio.wait({after})  # its outcome is its own, not this text's
                finally:
                    self._chained -= 1
            await self._slots.acquire()
            task = asyncio.current_task()
            assert task is not None
            self._in_slot.add(task)
            try:
                await self.process(rec)
            finally:
                self._free_slot(task)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task in self._recording:
                # Answered by the SMSC: its record is in the batcher's hands, which commits
                # it even now (stop() waits for that). Giving the text back would put it in
                # `queued` meanwhile, where another instance could claim it and send it again.
                raise
            if task is not None and task in self._handing_back and task in self._unsent:
                # Nothing of it went out: another instance sends it, no attempt used up. The
                # cancellation was ours, not a shutdown's: it ends here.
                task.uncancel()
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self.store.record_retry(
                            rec.queue_id,
                            "handed back: this instance stopped sending",
                            self.clock(),
                            self.clock(),
                            count=False,
                        )
                    )
                log.info("queue_id=%s handed back to the sending instances", rec.queue_id)
                return
            # Stopping mid-submit: the outcome is unknown; give it back so the next start
            # sends it (a possible duplicate beats a lost notice).
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.store.record_retry(
                        rec.queue_id, "interrupted by shutdown", self.clock(), self.clock()
                    )
                )
            raise
        except Exception as exc:
            log.exception("queue_id=%s processing error", rec.queue_id)
            with contextlib.suppress(Exception):
                await self._retry(rec, f"internal error: {exc!r}")

    def _answers_due(self) -> bool:
        """Whether a text holding a slot has a submit_sm on the wire, its answer still to come
        (the record batcher's company)."""
        return any(task not in self._unsent for task in self._in_slot)

    def _free_slot(self, task: asyncio.Task[None] | None, *, recording: bool = False) -> None:
        """Give back the task's slot (once); with recording, the task only waits for its
        record's commit from now on, and the step loop may claim a text in its place."""
        if task is None or task not in self._in_slot:
            return
        self._in_slot.discard(task)
        self._slots.release()
        if recording:
            self._recording.add(task)
            self.wake()

    # --- one message ---------------------------------------------------------------------------

    async def process(self, rec: SmsRecord) -> None:
        if self.hold is None:
            await self._process(rec)
            return
        async with self.hold(rec.msisdn):
            await self._process(rec)

    async def _process(self, rec: SmsRecord) -> None:
        cfg = self.cfg
        now = self.clock()
        if now - rec.created_at > cfg.smpp.max_age:
            hours = cfg.smpp.max_age / 3600
            await self._fail(
                rec,
                Failure(
                    SmsState.EXPIRED,
                    f"the text could not be sent within {hours:g} hours (smpp.max_age)",
                    "4.4.7",
                    "X-SMPP; expired in queue",
                ),
            )
            return
        if rec.body is None:
            await self._fail(
                rec, Failure(SmsState.FAILED, "the text was purged", "5.3.0", "X-SMPP; no text")
            )
            return
        if self.policy is not None:
            decision = await self.policy.check(rec, now)
            if decision.action == "defer":
                await self.store.record_retry(
                    rec.queue_id, decision.reason, decision.until, now, count=False
                )
                log.info("queue_id=%s deferred: %s", rec.queue_id, decision.reason)
                return
            if decision.action == "drop":
                await self._fail(
                    rec, Failure(SmsState.FAILED, decision.reason, "5.7.1", "X-SMPP; policy")
                )
                return
        # Whether the number had its first contact from this sending number: read once per
        # text, though the welcome and the footer both ask (the number's lock is held).
        contacted: bool | None = None
        comp = self.cfg.compliance
        if comp.welcome_on_first_contact and rec.kind == "notice":
            contacted = await self.store.had_first_contact(rec.msisdn, rec.source_addr)
            if not contacted:
                await self._welcome_first(rec, now)
                return
        text, shaped = await self._shape(rec, contacted)
        try:
            encoded = await self._encode(rec, text, shaped.segments if shaped else None)
        except TooManySegments as exc:
            await self._fail(
                rec, Failure(SmsState.FAILED, exc.reason, "5.3.4", "X-SMPP; message too long")
            )
            return
        await self._submit(rec, encoded, shaped)

    async def _welcome_first(self, rec: SmsRecord, now: float) -> None:
        """compliance.welcome_on_first_contact: before a library's first notice to a number,
        the welcome text (program, frequency, rates, HELP, STOP) goes out on its own; the
        notice follows a moment later, so the welcome arrives first."""
        comp = self.cfg.compliance
        welcome = (
            comp.welcome_text
            or comp.optin_text
            or optin_confirmation(comp.program_name, frequency=comp.frequency_text)
        )
        await self.store.enqueue_sms(
            [
                NewSms(
                    tenant_id=rec.tenant_id,
                    msisdn=rec.msisdn,
                    rcpt_addr=rec.rcpt_addr,
                    source_addr=rec.source_addr,
                    envelope_from="",
                    message_id=None,
                    subject="",
                    body=welcome,
                    kind="confirmation",
                )
            ],
            now,
            0.0,
        )
        await self.store.mark_first_contact(rec.msisdn, rec.source_addr, rec.queue_id, now)
        await self.store.record_retry(
            rec.queue_id, "after the welcome text", now + 2.0, now, count=False
        )
        self.wake()

    async def _shape(
        self, rec: SmsRecord, contacted: bool | None = None
    ) -> tuple[str, Shaped | None]:
        """Prefix and first-contact footer for a library's notices (bridge/shaping.py).
        `contacted`: had_first_contact when already read for this text."""
        assert rec.body is not None
        tenant = self.cfg.tenant_or_none(rec.tenant_id)
        if tenant is None or rec.kind != "notice":
            return rec.body, None
        footer = tenant.footer
        if footer and not tenant.footer_every_time:
            if contacted is None:
                contacted = await self.store.had_first_contact(rec.msisdn, rec.source_addr)
            if contacted:
                footer = None
        shaped = shape(
            rec.body,
            prefix=tenant.prefix,
            footer=footer,
            extra_segment=tenant.extra_segment,
            concat=self.cfg.smpp.concat,
        )
        return shaped.text, shaped

    async def _encode(self, rec: SmsRecord, text: str, segments: int | None = None) -> EncodedSms:
        """`segments`: the text's count when shaping has already made it."""
        tenant = self.cfg.tenant_or_none(rec.tenant_id)
        concat = self.cfg.smpp.concat
        ref = 0
        if segments is None:
            segments = segment_count(text, concat=concat)
        if segments > 1:
            ref = await self.store.next_concat_ref()
        return encode_sms(
            text,
            ref=ref,
            concat=concat,
            max_segments=tenant.max_segments if tenant else None,
            overflow=tenant.on_too_long if tenant else "truncate",
        )

    async def _submit(self, rec: SmsRecord, encoded: EncodedSms, shaped: Shaped | None) -> None:
        """Send the planned PDUs in order, then record the text (or give it back, or fail it
        at the first segment that was not accepted)."""
        plan = plan_submit(rec, encoded, self.cfg.smpp)
        task = asyncio.current_task()

        def sent() -> None:
            if task is not None:
                self._unsent.pop(task, None)

        ids: list[str] = []
        for pdu in plan.pdus:
            outcome = await self._send(pdu, sent, plan.validity)
            if isinstance(outcome, Accepted):
                ids.append(outcome.message_id)
            elif isinstance(outcome, Retry):
                await self._retry(rec, outcome.reason, count=outcome.count)
                return
            else:
                await self._fail(rec, outcome.failure)
                return
        item = submitted(rec, ids, encoded, shaped, self.cfg.smpp, self.clock())
        self._free_slot(task, recording=True)
        await self._record(item)
        log.info(
            "submitted queue_id=%s to=%s segments=%d coding=%s smsc_ids=%s",
            rec.queue_id,
            mask_msisdn(rec.msisdn),
            encoded.segments,
            encoded.coding,
            ",".join(ids),
        )
        if self.on_submitted is not None:
            # receipts that overtook this submit_sm_resp's commit are waiting for these ids
            await self.on_submitted(rec, ids)

    async def _send(
        self, pdu: SubmitSm, on_sent: Callable[[], None], validity: str | None
    ) -> Outcome:
        try:
            result = await self.session.submit(
                pdu, timeout=self.cfg.smpp.response_timeout_s, on_sent=on_sent
            )
        except NotBound:
            if self.metrics is not None:
                self.metrics.submit_unanswered("not_bound")
            return NOT_BOUND
        except ResponseTimeout as exc:
            if self.metrics is not None:
                self.metrics.submit_unanswered("timeout")
            return no_answer(exc)
        if self.metrics is not None:
            self.metrics.submit_result(result.status)
        return resp_outcome(result.status, result.message_id, validity)

    async def _record_many(self, items: Sequence[SubmittedSms | None]) -> list[None]:
        await self.store.record_submitted_many([it for it in items if it is not None])
        return [None] * len(items)

    async def _retry(self, rec: SmsRecord, reason: str, *, count: bool = True) -> None:
        cfg = self.cfg.smpp
        now = self.clock()
        if count and rec.attempts >= cfg.max_attempts:
            await self._fail(
                rec,
                Failure(
                    SmsState.FAILED,
                    f"gave up after {rec.attempts} attempts; last error: {reason}",
                    "4.4.1",
                    f"X-SMPP; {reason}",
                ),
            )
            return
        # A counted failure waits its backoff (full jitter: many texts failing together do not
        # come back together); an uncounted one (not bound yet) is due again at once.
        delay = backoff_delay(rec.attempts - 1, cfg.retry_min_s, cfg.retry_max_s) if count else 0.0
        await self.store.record_retry(rec.queue_id, reason, now + delay, now, count=count)
        log.info("queue_id=%s retry in %.1f s: %s", rec.queue_id, delay, reason)

    async def _fail(self, rec: SmsRecord, failure: Failure) -> None:
        now = self.clock()
        mails: Sequence[Outgoing] = ()
        if self.bounces is not None:
            mails = self.bounces(rec, failure, now)
        await self.store.record_final(rec.queue_id, failure.state, failure.reason, now, mails)
        log.warning(
            "%s queue_id=%s tenant=%s to=%s reason=%s bounces=%d",
            failure.state.value,
            rec.queue_id,
            rec.tenant_id,
            mask_msisdn(rec.msisdn),
            failure.reason,
            len(mails),
        )


def _dsn_status(status: int) -> str:
    """RFC 3463 code for a permanent SMPP error: bad number → 5.1.1, else a policy/content one."""
    if status in (errors.ESME_RINVDSTADR, errors.ESME_RINVDSTTON, errors.ESME_RINVDSTNPI):
        return "5.1.1"
    if status in (errors.ESME_RINVSRCADR, errors.ESME_RINVSRCTON, errors.ESME_RINVSRCNPI):
        return "5.1.7"
    return "5.3.0"
