"""A whole bridge on port 0 between real peers: the SMSC simulator (SMPP over TCP) on one side,
a recording SMTP sink as the libraries' mail relay on the other, smtplib as the ILS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.app import Bridge
from bridge.config import load_config_text
from bridge.model import SmsState
from bridge.testing.smsc_sim import SmscSimulator
from bridge.testing.smtp_sink import SmtpSink
from tests.conftest import BASE, merge
from tests.waiting import eventually


@dataclass
class Env:
    bridge: Bridge
    sim: SmscSimulator
    sink: SmtpSink
    tmp: Path

    @property
    def smtp_port(self) -> int:
        return self.bridge.smtp.port

    async def wait_state(self, queue_id: str, *states: SmsState, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        last: Any = None

        async def reached() -> Any:
            nonlocal last
            last = await self.bridge.store.get_sms(queue_id)
            return last if last is not None and last.state in states else None

        return await eventually(
            reached, timeout, lambda: f"{queue_id} in {states} (it stayed {last and last.state})"
        )

    async def restart_sim(self, **kwargs: Any) -> SmscSimulator:
        port = self.sim.port
        await self.sim.stop()
        self.sim = SmscSimulator(port=port, **kwargs)
        await self.sim.start()
        return self.sim


StartEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
async def env_factory(tmp_path: Path) -> AsyncIterator[StartEnv]:
    envs: list[Env] = []

    async def start(
        over: dict[str, Any] | None = None,
        *,
        sim_kwargs: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Env:
        sim = SmscSimulator(**(sim_kwargs or {}))
        await sim.start()
        sink = SmtpSink()
        await sink.start()
        data = merge(
            BASE,
            {
                "smpp": {"port": sim.port},
                "mail": {"relay": f"127.0.0.1:{sink.port}", "starttls": "never"},
            },
        )
        data = merge(data, over or {})
        cfg = load_config_text(yaml.safe_dump(data), tmp_path)
        bridge = Bridge(cfg, clock=clock)
        await bridge.start()
        assert bridge.session is not None
        await bridge.session.wait_bound(timeout=5)
        env = Env(bridge, sim, sink, tmp_path)
        envs.append(env)
        return env

    yield start
    for env in envs:
        await env.bridge.stop()
        await env.sim.stop()
        await env.sink.stop()


@pytest.fixture
async def env(env_factory: StartEnv) -> Env:
    return await env_factory()
