"""The inbound router's receipt path on both backends: receipts grouped into one
Store.apply_receipts, held receipts applied when their submit is recorded, and one bad receipt
failing alone rather than with its group."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import bridge.inbound
from bridge.inbound import Inbound
from bridge.model import NewSms, SmsRecord, SmsState
from bridge.store.base import ReceiptItem, Store
from bridge.store.postgres import PostgresStore
from bridge.testing.sms_samples import sample_sms
from tests.conftest import MakeConfig, Opener, record_submitted

PATRON = "+12025550143"


@pytest.fixture
async def store(open_store: Opener) -> Store:
    """The store on each backend (conftest's open_store)."""
    return await open_store()


def _text(n: int) -> NewSms:
    return sample_sms(n, msisdn=PATRON)


async def _claimed(store: Store, n: int) -> list[SmsRecord]:
    await store.enqueue_sms([_text(i) for i in range(n)], time.time(), 0)
    return await store.claim_sms(time.time(), n)


def _item(smsc_id: str, state: str = "delivered") -> ReceiptItem:
    raw = {"delivered": "DELIVRD", "undeliverable": "UNDELIV"}[state]
    return ReceiptItem(smsc_id, PATRON[1:], state, None if state == "delivered" else "001", raw)


async def test_receipts_that_overtook_their_submits_are_applied_when_recorded(
    store: Store, make_config: MakeConfig
) -> None:
    inbound = Inbound(make_config(), store)
    recs = await _claimed(store, 4)
    # receipts for ids no submit carries yet: held, one transaction for all of them
    outs = await asyncio.gather(
        *(
            inbound._apply_receipt(_item(f"id{i}", "undeliverable" if i == 0 else "delivered"))
            for i in range(3)
        )
    )
    assert [o.segment for o in outs] == [None, None, None]
    assert len(await store.held_for(["id0", "id1", "id2"])) == 3
    for i, rec in enumerate(recs):
        await record_submitted(store, rec.queue_id, [f"id{i}"], 1, "gsm7", time.time())
    # the dispatcher calls submitted() per text; at the same moment, their lookups may share
    # one read (on PostgreSQL) and their receipts one transaction
    await asyncio.gather(*(inbound.submitted(rec, [f"id{i}"]) for i, rec in enumerate(recs)))
    if isinstance(store, PostgresStore):
        # the first lookup went straight to the database; the three behind it shared one
        assert inbound._held.runs == 1
    assert await store.held_receipts(time.time() + 1) == []
    states = [(await store.get_sms(rec.queue_id)) for rec in recs]
    assert [s.state if s else None for s in states] == [
        SmsState.FAILED,
        SmsState.DELIVERED,
        SmsState.DELIVERED,
        SmsState.SUBMITTED,  # no receipt for it yet
    ]
    (dsn,) = await store.claim_mail(time.time(), 5)
    assert b"UNDELIV" in dsn.mail.data


async def test_held_lookups_give_a_row_to_one_text_only(
    store: Store, make_config: MakeConfig
) -> None:
    inbound = Inbound(make_config(), store)
    await inbound._apply_receipt(_item("same"))
    await inbound._apply_receipt(_item("other"))
    got = await inbound._held_group([("same",), ("same", "other"), ("nothing",)])
    assert [[row[1] for row in rows] for rows in got] == [["same"], ["other"], []]


async def test_one_bad_receipt_fails_alone(
    store: Store, make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbound = Inbound(make_config(), store)
    recs = await _claimed(store, 3)
    for i, rec in enumerate(recs):
        await record_submitted(store, rec.queue_id, [f"b{i}"], 1, "gsm7", time.time())
    build = bridge.inbound.build_bounces

    def broken(cfg: Any, rec: SmsRecord, *args: Any) -> Any:
        if rec.queue_id == recs[1].queue_id:
            raise RuntimeError("bounce builder bug")
        return build(cfg, rec, *args)

    monkeypatch.setattr(bridge.inbound, "build_bounces", broken)
    runs = inbound._receipts.runs
    outs = await asyncio.gather(
        *(inbound._apply_receipt(_item(f"b{i}", "undeliverable")) for i in range(3)),
        return_exceptions=True,
    )
    assert isinstance(outs[1], RuntimeError)
    assert [getattr(o, "new_state", None) for o in (outs[0], outs[2])] == [SmsState.FAILED] * 2
    assert inbound._receipts.runs == runs + 1  # one group, split in the same run
    got = await store.get_sms(recs[1].queue_id)
    assert got is not None and got.state is SmsState.SUBMITTED  # the SMSC will retry it
    assert len(await store.claim_mail(time.time(), 5)) == 2
