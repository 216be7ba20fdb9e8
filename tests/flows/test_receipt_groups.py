"""Many delivery receipts at once (a carrier catching up after an outage): every one is
applied, each deliver_sm is answered ESME_ROK only after the transaction holding its receipt
committed, and the receipts that arrive together share a transaction (bridge/batcher.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from bridge.model import NewSms, SmsState
from bridge.smpp import errors
from bridge.smpp.pdu import DeliverSm
from bridge.store.base import ReceiptItem, ReceiptOutcome
from bridge.testing.sms_samples import sample_sms
from tests.flows.harness import StartEnv
from tests.waiting import eventually

TEXTS = 200


def _text(i: int) -> NewSms:
    return sample_sms(i, msisdn=f"+1202555{i:04d}")


async def test_many_receipts_at_once_share_transactions_and_wait_for_commit(
    env_factory: StartEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = await env_factory({"smpp": {"max_tps": 1000}}, sim_kwargs={"receipts": False})
    store, inbound = e.bridge.store, e.bridge.inbound
    results = await store.enqueue_sms([_text(i) for i in range(TEXTS)], time.time(), 0)
    queue_ids = [r.queue_id for r in results]
    e.bridge._wake_dispatcher()
    await e.sim.wait_for_messages(TEXTS, timeout=30)

    async def all_submitted() -> bool:
        return (await store.counts()).get("submitted") == TEXTS

    await eventually(all_submitted, 30, f"all {TEXTS} texts recorded as submitted")

    # Which receipts' transactions have committed, and what each handler answered when.
    committed: set[str] = set()
    early: list[str] = []
    apply_receipts = store.apply_receipts

    async def recording(items: Sequence[ReceiptItem], *args: object) -> list[ReceiptOutcome]:
        out = await apply_receipts(items, *args)  # type: ignore[arg-type]
        committed.update(item.smsc_id for item in items)
        return out

    handle = inbound.handle

    async def checking(pdu: DeliverSm) -> int:
        status = await handle(pdu)
        if status == errors.ESME_ROK and pdu.receipted_message_id not in committed:
            early.append(str(pdu.receipted_message_id))
        return status

    monkeypatch.setattr(store, "apply_receipts", recording)
    monkeypatch.setattr(inbound, "handle", checking)
    runs0 = inbound._receipts.runs

    smsc_ids = [m.message_ids[0] for m in e.sim.messages]
    statuses = await asyncio.wait_for(
        asyncio.gather(*(e.sim.send_receipt(i) for i in smsc_ids)), 30
    )

    assert statuses == [errors.ESME_ROK] * TEXTS
    assert early == [], "ESME_ROK before the receipt's commit"
    assert committed == set(smsc_ids)
    runs = inbound._receipts.runs - runs0
    # up to smpp.inbound_window (32) handlers at once: a few groups, not one per receipt
    assert runs <= TEXTS // 4, f"{runs} transactions for {TEXTS} receipts"
    for qid in queue_ids:
        rec = await store.get_sms(qid)
        assert rec is not None and rec.state is SmsState.DELIVERED, rec
    assert await store.held_receipts(time.time() + 1) == []
