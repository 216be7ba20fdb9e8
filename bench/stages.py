"""Benchmark 9: CPU per text, stage by stage, against the bridge process's whole.

Each stage is the real code (no mocks) called N times in this process with the configuration
of benchmark 8 (bench.kannel_bench.bridge_overrides over bench.common.BASE) and a SQLite store
in a temp dir; CPU is `time.thread_time()` around pure code and `time.process_time()` around
store calls (the store commits on its own writer thread, which process_time includes). The
texts flow through the stages in order: admitted, parsed, inserted, claimed, checked, shaped,
encoded, built as submit_sm, recorded (and checked for held receipts); their receipts parsed,
then matched and applied smpp.inbound_window at a time, as the session's handlers hand them to
one Store.apply_receipts (and once more one at a time, for comparison); a patron reply to each
parsed, routed to an email and committed.

The whole comes from the bridge as it runs (`python -m bridge run`, benchmark 8's runner):
its CPU from /proc over the intake of N_E2E notices by SMTP with the SMSC away, then over
their drain with receipts on, on asyncio and on uvloop. A stage's share is its CPU over the
whole of its phase (intake stages over intake, dispatch and receipt stages over the drain);
what no row covers is the protocol edges (aiosmtpd, the SMPP session's reads and writes),
the event loop itself, logging and metrics.

Then one drain runs under pyinstrument (bench.profile_child): the HTML report goes to
bench/results/profile-drain.html and the functions with the most self time into the notes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.common import FAKE_NUMBERS, SENDER, SMS_DOMAIN, Row, bench_config, notice
from bench.kannel_bench import _Bridge, _cpu_s, _free_port, _wait_finished, bridge_overrides
from bridge import addressing
from bridge.compliance import Compliance, NumberLocks
from bridge.config import Config
from bridge.dispatcher import Dispatcher
from bridge.emailparse import ParseLimits, parse_notice
from bridge.eventloop import uvloop_available
from bridge.inbound import Inbound, mo_addresses
from bridge.intake import Intake, Recipient, text_options
from bridge.model import NewSms, SmsRecord
from bridge.policy import duplicate_key
from bridge.smpp import pdu as p
from bridge.smpp.encoding import decode_payload, encode_sms, split_udh
from bridge.smpp.receipts import parse_receipt
from bridge.store import SqliteStore
from bridge.store.base import ReceiptItem, SubmittedSms

BENCH = "9. CPU per stage"
N = 1000  # texts per stage (each store stage is N commits)
PURE_RUNS = 3  # pure stages: best of this many passes (store stages change state: one pass)
WARMUP = 20  # texts through every stage first: imports, compiled regexes, SQLite caches
N_E2E = 1000
E2E_RUNS = 2
PROFILE_TEXTS = 2000
RESULTS = procs.REPO / "bench" / "results"
PROFILE_HTML = RESULTS / "profile-drain.html"
LIBRARY = "+12025550100"  # BASE smpp.source_addr, canonical
# Why a phase's rows have no whole to be a share of.
NO_WHOLE = {
    "replies": "no whole measured for replies (no MO load)",
    "alone": "a comparison row: a drain groups receipts as the row above",
}
# Texts per claim and per record write in the grouped rows: a drain claims a window's worth at
# a time and records together the texts answered within 10 ms of each other.
GROUP = 10


@dataclass
class Stage:
    phase: str  # "intake", "drain" (dispatch + receipts) or "replies"
    name: str
    cpu_us: float  # per text
    wall_us: float
    # False for a stage measured a second way (one text per call, where a drain groups
    # them): the sums count each stage once, as a drain runs it
    summed: bool = True


@dataclass
class Whole:
    loop: str
    intake_us: float  # bridge process CPU per notice over the SMTP intake
    drain_us: float  # ... per text over the drain, receipts on
    texts: int
    done: bool


# --- the stages -------------------------------------------------------------------------------


class _Texts:
    """What one text carries from stage to stage."""

    def __init__(self, n: int, seq0: int) -> None:
        self.seqs = list(range(seq0, seq0 + n))
        self.numbers = [FAKE_NUMBERS[s % len(FAKE_NUMBERS)] for s in self.seqs]
        self.raws = [notice(num, s) for num, s in zip(self.numbers, self.seqs, strict=True)]
        self.rcpts: list[Recipient] = []
        self.items: list[NewSms] = []
        self.records: list[SmsRecord] = []
        self.texts: list[str] = []
        self.encoded: list[Any] = [None] * n
        self.smsc_ids: list[str] = []
        self.receipt_pdus: list[bytes] = []
        self.receipt_texts: list[str] = []
        self.mo_pdus: list[bytes] = []


def _pure(n: int, fn: Callable[[int], object]) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of a pure function, on this thread: the best of PURE_RUNS
    passes over the same n inputs (a pass that a garbage collection or a neighbour's burst on
    the shared cores lands in reads high)."""
    best = (float("inf"), float("inf"))
    for _ in range(PURE_RUNS):
        c0, w0 = time.thread_time(), time.perf_counter()
        for i in range(n):
            fn(i)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        best = min(best, (1e6 * cpu / n, 1e6 * wall / n))
    return best


async def _awaited(n: int, fn: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    """(CPU µs, wall µs) per awaited call, every thread of the process (the store's too)."""
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        await fn(i)
    return 1e6 * (time.process_time() - c0) / n, 1e6 * (time.perf_counter() - w0) / n


def _per_text(group: int, measured: tuple[float, float]) -> tuple[float, float]:
    """A per-call measurement of calls that each handle `group` texts, per text."""
    return measured[0] / group, measured[1] / group


def _receipt_pdu(sm_dest: str, smsc_id: str, excerpt: str) -> bytes:
    """A delivery receipt as bridge.testing.smsc_sim writes it (SMPP 3.4 Appendix B text and
    the receipted_message_id / message_state TLVs)."""
    stamp = time.strftime("%y%m%d%H%M", time.gmtime())
    body = (
        f"id:{smsc_id} sub:001 dlvrd:001 submit date:{stamp} done date:{stamp} "
        f"stat:DELIVRD err:000 text:{excerpt[:20]}"
    )
    return p.build_deliver_sm(
        7,
        source_addr=sm_dest,
        source_addr_ton=1,
        source_addr_npi=1,
        destination_addr=LIBRARY.lstrip("+"),
        dest_addr_ton=1,
        dest_addr_npi=1,
        esm_class=0x04,
        data_coding=0x00,
        short_message=body.encode("ascii", errors="replace")[: p.SHORT_MESSAGE_MAX],
        receipted_message_id=smsc_id,
        message_state=2,  # DELIVERED (§5.2.28)
    )


def _mo_pdu(patron: str, text: str) -> bytes:
    encoded = encode_sms(text, ref=0)
    return p.build_deliver_sm(
        9,
        source_addr=patron.lstrip("+"),
        source_addr_ton=1,
        source_addr_npi=1,
        destination_addr=LIBRARY.lstrip("+"),
        dest_addr_ton=1,
        dest_addr_npi=1,
        esm_class=encoded.esm_class,
        data_coding=encoded.data_coding,
        short_message=encoded.parts[0].short_message,
    )


async def _round(cfg: Config, store: SqliteStore, n: int, seq0: int) -> list[Stage]:
    """Every stage over n new texts, in the order a text meets them."""
    tenant = cfg.tenants[0]
    source = cfg.source_addr_for(tenant)
    intake = Intake(cfg, store)
    inbound = Inbound(cfg, store)
    compliance = Compliance(cfg, store, inbound, NumberLocks())
    inbound.keywords = compliance.keyword
    # The session is not used by the stages measured (_shape, _encode); submit is its own row.
    dispatcher = Dispatcher(cfg, store, None, policy=compliance)
    t = _Texts(n, seq0)
    stages: list[Stage] = []

    def add(phase: str, name: str, measured: tuple[float, float], summed: bool = True) -> None:
        stages.append(Stage(phase, name, *measured, summed=summed))

    # intake -----------------------------------------------------------------------------------
    async def admit(i: int) -> None:
        # The bench has only 100 fake numbers; a night's patrons are mostly distinct, so each
        # recipient's number is read as for one not seen since the last reload.
        addressing.clear_number_cache()
        who = intake.tenant_for_sender("127.0.0.1", None, SENDER)
        await intake.check_backlog()
        rcpt = intake.recipient(who, f"{t.numbers[i]}@{SMS_DOMAIN}")
        await intake.check_optout(who, rcpt)
        t.rcpts.append(rcpt)

    add(
        "intake",
        "admission: tenant, recipient (number read uncached), backlog and opt-out checks",
        await _awaited(n, admit),
    )
    parsed: list[Any] = [None] * n

    options = text_options(tenant)
    limits = ParseLimits(max_bytes=cfg.smtp.max_message_bytes)

    def parse(i: int) -> None:
        # The pure parse Intake.parse runs (inline for a notice this small, in a worker for
        # larger ones): the stage is the parse, not the hand-off.
        parsed[i] = parse_notice(t.raws[i], options, limits)

    add("intake", "parse: emailparse.parse_notice of bench/common.notice()", _pure(n, parse))
    for i, rcpt in enumerate(t.rcpts):
        text = parsed[i].text
        t.items.append(
            NewSms(
                tenant_id=tenant.id,
                msisdn=rcpt.msisdn,
                rcpt_addr=rcpt.address,
                source_addr=source,
                envelope_from=SENDER,
                message_id=parsed[i].message_id,
                subject=parsed[i].subject,
                body=text,
                dup_key=duplicate_key(tenant.id, rcpt.msisdn, text),
            )
        )

    async def insert(i: int) -> None:
        await store.enqueue_sms(
            [t.items[i]], time.time(), cfg.smtp.dedup_window_s, tenant.duplicate_window_s
        )

    add("intake", "insert: Store.enqueue_sms, one text, committed", await _awaited(n, insert))

    # dispatch ---------------------------------------------------------------------------------
    async def claim(i: int) -> None:
        t.records.extend(await store.claim_sms(time.time(), 1))

    async def claim_group(i: int) -> None:
        t.records.extend(await store.claim_sms(time.time(), GROUP))

    # half the texts one per call, the other half GROUP per call
    half = n // 2
    add(
        "drain",
        "claim: Store.claim_sms, one text per claim",
        await _awaited(half, claim),
        summed=False,
    )
    add(
        "drain",
        f"claim: Store.claim_sms, {GROUP} texts per claim (per text)",
        _per_text(GROUP, await _awaited((n - half) // GROUP, claim_group)),
    )
    t.records.extend(await store.claim_sms(time.time(), n - len(t.records)))

    async def check(i: int) -> None:
        await compliance.check(t.records[i], time.time())

    add("drain", "policy: Compliance.check (opt-out, quiet hours, caps)", await _awaited(n, check))

    async def shape(i: int) -> None:
        text, _ = await dispatcher._shape(t.records[i])
        t.texts.append(text)

    add("drain", "shape: Dispatcher._shape (bridge/shaping.py)", await _awaited(n, shape))

    def encode(i: int) -> None:
        t.encoded[i] = encode_sms(
            t.texts[i],
            ref=0,
            concat=cfg.smpp.concat,
            max_segments=tenant.max_segments,
            overflow=tenant.on_too_long,
        )

    add("drain", "encode: smpp.encoding.encode_sms", _pure(n, encode))
    source_addr, ton, npi = p.source_address(source)

    def build(i: int) -> None:
        rec, enc = t.records[i], t.encoded[i]
        sm = p.SubmitSm(
            source_addr=source_addr,
            source_addr_ton=ton,
            source_addr_npi=npi,
            destination_addr=rec.msisdn.lstrip("+"),
            short_message=enc.parts[0].short_message,
            data_coding=enc.data_coding,
            esm_class=enc.esm_class,
        )
        p.build_submit_sm(sm, i + 1)

    add("drain", "submit_sm: smpp.pdu.build_submit_sm", _pure(n, build))
    t.smsc_ids = [f"{seq0 + i:08x}" for i in range(n)]

    def submitted(i: int) -> SubmittedSms:
        rec, enc = t.records[i], t.encoded[i]
        return SubmittedSms(
            rec.queue_id,
            (t.smsc_ids[i],),
            enc.segments,
            enc.coding,
            time.time(),
            first_contact=(rec.msisdn, rec.source_addr),
        )

    async def record(i: int) -> None:
        await store.record_submitted_many([submitted(i)])

    async def record_group(i: int) -> None:
        first = half + i * GROUP
        await store.record_submitted_many([submitted(j) for j in range(first, first + GROUP)])

    # The dispatcher records through a Batcher (bridge/dispatcher.py RECORD_LINGER_S): the
    # texts answered within 10 ms of each other share one write, about five at slow:20 and up
    # to a window's worth at `ok`. One text per call is what a text answered alone costs.
    add(
        "drain",
        "record: Store.record_submitted_many, one text per call (a text answered alone)",
        await _awaited(half, record),
        summed=False,
    )
    groups = (n - half) // GROUP
    add(
        "drain",
        f"record: Store.record_submitted_many, {GROUP} per call (per text)",
        _per_text(GROUP, await _awaited(groups, record_group)),
    )
    for i in range(half + groups * GROUP, n):
        await record(i)

    async def held_lookup(i: int) -> None:
        # the dispatcher's call after every record: receipts held for these ids (none here)
        await inbound.submitted(t.records[i], [t.smsc_ids[i]])

    add("drain", "held receipts: Inbound.submitted, nothing held", await _awaited(n, held_lookup))

    # receipts ---------------------------------------------------------------------------------
    t.receipt_pdus = [
        _receipt_pdu(rec.msisdn.lstrip("+"), t.smsc_ids[i], t.texts[i])
        for i, rec in enumerate(t.records)
    ]
    delivers: list[Any] = [None] * n

    def parse_pdu(i: int) -> None:
        delivers[i] = p.parse_deliver_sm(t.receipt_pdus[i])

    add("drain", "receipt PDU: smpp.pdu.parse_deliver_sm", _pure(n, parse_pdu))
    items: list[Any] = [None] * n

    def parse_text(i: int) -> None:
        d = delivers[i]
        text = decode_payload(d.data_coding, d.message_payload or d.short_message)
        r = parse_receipt(text, d.receipted_message_id, d.message_state, d.network_error_code)
        assert r is not None
        patron = addressing.canonical_address(
            d.source_addr, tenant.region, ton=d.source_addr_ton
        ).value
        items[i] = ReceiptItem(r.message_id, patron, r.state, r.error, r.raw_stat or r.state)

    add("drain", "receipt: smpp.receipts.parse_receipt, patron number", _pure(n, parse_text))

    # As a drain has them: up to smpp.inbound_window deliver_sm in hand at once, each handler
    # awaiting its own receipt, grouped by the Batcher into one Store.apply_receipts.
    window = cfg.smpp.inbound_window
    runs0 = inbound._receipts.runs

    async def apply(i: int) -> None:
        if i % window == 0:
            group = range(i, min(n, i + window))
            outs = await asyncio.gather(*(inbound._apply_receipt(items[k]) for k in group))
            for k, out in zip(group, outs, strict=True):
                assert out.segment is not None, "every receipt should match its text"
                inbound._done(items[k], out)

    add(
        "drain",
        f"receipt match + apply: Inbound via Store.apply_receipts, {window} at once",
        await _awaited(n, apply),
    )
    assert inbound._receipts.runs - runs0 <= n // window + 2, "receipts were not grouped"

    async def alone(i: int) -> None:
        # the same receipts again, one at a time (a lone receipt on a quiet link): one
        # transaction each; the texts are final, so only the segment write and roll-up run
        inbound._done(items[i], await inbound._apply_receipt(items[i]))

    add("alone", "receipt match + apply, one at a time (not in the sums)", await _awaited(n, alone))

    # replies ----------------------------------------------------------------------------------
    t.mo_pdus = [
        _mo_pdu(rec.msisdn, f"Can I pick up item {seq0 + i} Monday?")
        for i, rec in enumerate(t.records)
    ]
    mos: list[Any] = [None] * n

    def parse_mo(i: int) -> None:
        d = p.parse_deliver_sm(t.mo_pdus[i])
        payload = d.message_payload or d.short_message
        _, body = split_udh(payload, d.esm_class)
        sender, library = mo_addresses(cfg, d)
        mos[i] = (sender.value, library.value, decode_payload(d.data_coding, body))

    add("replies", "MO: parse_deliver_sm, decode, canonical numbers", _pure(n, parse_mo))
    outcomes: list[Any] = []
    now = time.time()

    async def route(i: int) -> None:
        msisdn, dest, text = mos[i]
        outcome = await compliance.keyword(msisdn, dest, text, now)
        if outcome is None:
            outcome = await inbound.reply_outcome(msisdn, dest, text, now)
        outcomes.append(outcome)

    add(
        "replies",
        "route: keywords, conversation lookup, mailbuild.build_patron_reply",
        await _awaited(n, route),
    )

    async def commit(i: int) -> None:
        o = outcomes[i]
        await store.commit_mo(
            f"bench-mo-{seq0 + i}",
            now,
            cfg.inbound.dedup_window_s,
            mails=o.mails,
            sms=o.sms,
            conversations=o.conversations,
        )

    add("replies", "commit: Store.commit_mo (reply email, thread)", await _awaited(n, commit))
    assert all(len(o.mails) == 1 for o in outcomes), "every MO should become one reply email"
    return stages


async def _measure_stages() -> list[Stage]:
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        cfg = bench_config(Path(tmp), bridge_overrides(_free_port(), 0, receipts=True))
        store = SqliteStore(cfg.store.path)
        await store.open()
        try:
            await _round(cfg, store, WARMUP, 0)
            return await _round(cfg, store, N, WARMUP)
        finally:
            await store.close()


# --- the whole --------------------------------------------------------------------------------


async def _whole(loop: str) -> Whole:
    """The bridge process (benchmark 8's runner): CPU over the SMTP intake of N_E2E notices
    with the SMSC away, then over their drain with receipts on ("ok": answers at once)."""
    with tempfile.TemporaryDirectory(prefix="bench-stages-e2e-") as name:
        tmp = Path(name)
        sim_port = _free_port()
        bridge = _Bridge(tmp, sim_port, True, event_loop=loop)
        await bridge.start()
        try:
            c0 = _cpu_s(bridge.pids())
            await bridge.inject(N_E2E)
            c1 = _cpu_s(bridge.pids())
            async with procs.simulator("ok", receipts=True, port=sim_port):
                done = await _wait_finished(bridge, N_E2E)
                c2 = _cpu_s(bridge.pids())
        finally:
            await bridge.stop()
    return Whole(loop, 1e6 * (c1 - c0) / N_E2E, 1e6 * (c2 - c1) / N_E2E, N_E2E, done)


# --- the profile ------------------------------------------------------------------------------


async def _profile() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        sim_port = _free_port()
        child = await procs.spawn(
            "bench.profile_child", tmp, str(sim_port), str(PROFILE_TEXTS), str(PROFILE_HTML)
        )
        assert child.stdout is not None
        try:
            async with asyncio.timeout(60):
                line = (await child.stdout.readline()).decode().strip()
            if line != "READY":
                raise RuntimeError(f"profile child did not start: {line!r}")
            async with procs.simulator("ok", receipts=True, port=sim_port):
                report = await procs.read_json_line(child, 120.0)
        finally:
            await procs.finish(child, 15.0)
    return report


# --- rows -------------------------------------------------------------------------------------


def _rows(stages: list[Stage], wholes: list[Whole], prof: dict[str, Any] | None) -> list[Row]:
    base = next((w for w in wholes if w.loop == "asyncio"), None)
    of_phase = {"intake": base.intake_us, "drain": base.drain_us} if base else {}
    label = {
        "intake": "bridge process per notice, SMTP intake (asyncio)",
        "drain": "bridge process per text, drain with receipts (asyncio)",
    }
    rows: list[Row] = []
    for s in stages:
        whole = of_phase.get(s.phase)
        share = s.cpu_us / whole if whole else None
        rows.append(
            Row(
                bench=BENCH,
                case=f"{s.phase}: {s.name}",
                value=round(s.cpu_us, 1),
                unit="µs CPU/text",
                baseline=round(whole, 0) if whole else None,
                baseline_label=label.get(s.phase, ""),
                ratio=round(share, 3) if share is not None else None,
                aim="(none: informs)",
                meets=None,
                notes=f"wall {s.wall_us:.0f} µs"
                + ("" if s.summed else "; not in the sum")
                + ("" if whole else f"; {NO_WHOLE.get(s.phase, 'no whole measured')}"),
            )
        )
    for phase in ("intake", "drain"):
        total = sum(s.cpu_us for s in stages if s.phase == phase and s.summed)
        whole = of_phase.get(phase)
        rows.append(
            Row(
                bench=BENCH,
                case=f"{phase}: sum of the stages above",
                value=round(total, 1),
                unit="µs CPU/text",
                baseline=round(whole, 0) if whole else None,
                baseline_label=label[phase],
                ratio=round(total / whole, 3) if whole else None,
                aim="(none: informs)",
                meets=None,
                notes="the rest: protocol edges (aiosmtpd, SMPP session I/O), the event loop, "
                "logging, metrics",
            )
        )
    for w in wholes:
        for phase, value in (("intake", w.intake_us), ("drain", w.drain_us)):
            # the asyncio rows are the baseline of every other row: no ratio to themselves
            ref = of_phase.get(phase) if w.loop != "asyncio" else None
            rows.append(
                Row(
                    bench=BENCH,
                    case=(
                        f"whole: bridge process, {phase}, {w.texts} texts, event loop {w.loop}"
                        f" (best of {E2E_RUNS})"
                    ),
                    value=round(value, 0),
                    unit="µs CPU/text",
                    baseline=round(ref, 0) if ref else None,
                    baseline_label="same on asyncio" if ref else "",
                    ratio=round(value / ref, 3) if ref else None,
                    aim="(none: informs)",
                    meets=None,
                    notes=("" if w.done else "not finished within the limit; ")
                    + "python -m bridge run, CPU from /proc (every thread)",
                )
            )
    if prof is not None:
        active = max(1e-9, prof["sampled_s"] - prof["idle_s"])
        top = "; ".join(
            f"{i}. {t['function']} ({t['file']}:{t['line']}) {100 * t['self_s'] / active:.1f} %"
            for i, t in enumerate(prof["top"], 1)
        )
        files = "; ".join(
            f"{f['file']} {100 * f['self_s'] / active:.1f} %" for f in prof["files"][:6]
        )
        rows.append(
            Row(
                bench=BENCH,
                case=f"pyinstrument: drain of {prof['texts']} texts, receipts on (asyncio)",
                value=round(1e6 * prof["cpu_s"] / max(1, prof["final"]), 0),
                unit="µs CPU/text",
                baseline=None,
                baseline_label="",
                ratio=None,
                aim="(none: informs)",
                meets=None,
                notes=(
                    f"bench/results/profile-drain.html; loop thread busy "
                    f"{active:.2f} s of {prof['sampled_s']:.2f} s; top self time (share of "
                    f"busy): {top}. By file: {files}"
                ),
            )
        )
    return rows


async def cpu_per_stage() -> list[Row]:
    stages = await _measure_stages()
    loops = ["asyncio"] + (["uvloop"] if uvloop_available() else [])
    # Interleaved, best of E2E_RUNS per loop and phase: the least disturbed run by the other
    # work on these shared cores.
    runs = [await _whole(loop) for _ in range(E2E_RUNS) for loop in loops]
    wholes = [
        Whole(
            loop,
            min(w.intake_us for w in runs if w.loop == loop),
            min(w.drain_us for w in runs if w.loop == loop),
            N_E2E,
            all(w.done for w in runs if w.loop == loop),
        )
        for loop in loops
    ]
    # pyinstrument comes with the `bench` extra (make bench installs it).
    prof = await _profile() if importlib.util.find_spec("pyinstrument") else None
    return _rows(stages, wholes, prof)
