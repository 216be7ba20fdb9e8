"""Property: once a STOP is committed (the SMSC got ESME_ROK for it), no submit_sm to that number
leaves the bridge until a START, except the single confirmation. Random interleavings of notices,
STOPs and STARTs, each example against a real bridge, simulator and sockets."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import policy
from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.conftest import BASE, merge
from tests.smtp_client import notice, send
from tests.waiting import eventually

PATRON = "+12025550143"
CONFIRMATIONS = {
    policy.optout_confirmation("Library text notices"),
    policy.optin_confirmation("Library text notices"),
}

Op = tuple[str, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("notice"), st.integers(0, 3)),
        st.tuples(st.just("stop"), st.just(0)),
        st.tuples(st.just("start"), st.just(0)),
        st.tuples(st.just("pause"), st.integers(0, 30)),
    ),
    min_size=3,
    max_size=12,
)


async def run(plan: list[Op], tmp: Path) -> None:
    sim = SmscSimulator(scenario="slow:5")
    await sim.start()
    sink = SmtpSink()
    await sink.start()
    data = merge(BASE, {"smpp": {"port": sim.port}, "mail": {"relay": f"127.0.0.1:{sink.port}"}})
    bridge = Bridge(load_config_text(yaml.safe_dump(data), tmp))
    await bridge.start()
    # (time the opt-out was committed, time the opt-in request was sent): no notice may arrive
    # at the SMSC inside such a window
    forbidden: list[tuple[float, float]] = []
    opted_out_since: float | None = None
    tasks: list[asyncio.Task[object]] = []
    try:
        assert bridge.session is not None and await bridge.session.wait_bound(5)
        for n, (op, arg) in enumerate(plan):
            if op == "notice":
                # concurrently, so notices race with the keywords
                tasks.append(
                    asyncio.create_task(
                        send(
                            bridge.smtp.port,
                            "ils@riverside.example.org",
                            ["2025550143@sms.example.org"],
                            notice(f"Notice {n} v{arg}", Message_ID=f"<p{n}@x>"),
                        )
                    )
                )
            elif op == "stop":
                assert await sim.inject_mo(PATRON, "12025550100", "STOP") == [0]
                if opted_out_since is None:
                    opted_out_since = time.monotonic()
            elif op == "start":
                sent_at = time.monotonic()
                assert await sim.inject_mo(PATRON, "12025550100", "START") == [0]
                if opted_out_since is not None:
                    forbidden.append((opted_out_since, sent_at))
                    opted_out_since = None
            else:  # a pause drawn by hypothesis: the interleaving itself is under test
                await asyncio.sleep(arg / 1000)
        await asyncio.gather(*tasks, return_exceptions=True)

        async def drained() -> bool:  # every accepted notice sent or failed: none left to send
            counts = await bridge.store.counts()
            return not counts.get("queued") and not counts.get("sending")

        await eventually(drained, 10, "the queue to drain")
        if opted_out_since is not None:
            forbidden.append((opted_out_since, float("inf")))
        for at, sm in sim.submits:
            text = sm.short_message.decode("latin-1")
            if text in CONFIRMATIONS:
                continue
            for lo, hi in forbidden:
                assert not (lo <= at <= hi), f"{text!r} submitted while opted out"
    finally:
        for t in tasks:
            t.cancel()
        await bridge.stop()
        await sim.stop()
        await sink.stop()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=ops)
def test_no_text_after_a_committed_stop(plan: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(asyncio.wait_for(run(plan, Path(tmp)), timeout=30))
