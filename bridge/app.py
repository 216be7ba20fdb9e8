"""Composition root: builds every component from one Config, starts them in order, stops them in
reverse. Signals only flip events here (uvicorn's shape): SIGTERM/SIGINT ask for a graceful stop,
a second one forces exit; SIGHUP reloads the configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from bridge import sdnotify
from bridge.bounces import build_bounces
from bridge.compliance import Compliance, NumberLocks
from bridge.config import Config, ConfigError, load_config
from bridge.dispatcher import Dispatcher
from bridge.imap_intake import ImapIntake
from bridge.inbound import Inbound
from bridge.intake import Intake
from bridge.mailer import Mailer, make_transport
from bridge.metrics import Metrics
from bridge.model import MoOutcome, SmsRecord, Wake
from bridge.ratebudget import PAUSED_TPS, RateBudget
from bridge.reports import Maintenance
from bridge.smpp.pdu import DeliverSm
from bridge.smpp.session import SessionSettings, SmppSession
from bridge.smtp_intake import SmtpIntake
from bridge.statuspage import LibraryInput
from bridge.store import PostgresStore, make_store
from bridge.web import AdminServer

log = logging.getLogger(__name__)

DeliverHandler = Callable[[DeliverSm], Awaitable[int]]


def session_settings(cfg: Config, *, port: int | None = None) -> SessionSettings:
    s = cfg.smpp
    return SessionSettings(
        host=s.host,
        port=s.port if port is None else port,
        system_id=s.system_id,
        password=s.password,
        system_type=s.system_type,
        bind_mode=s.bind_mode,
        tls=s.tls,
        tls_verify=s.tls_verify,
        tls_ca_file=str(s.tls_ca_file) if s.tls_ca_file else None,
        window=s.window,
        inbound_window=s.inbound_window,
        response_timeout_s=s.response_timeout_s,
        enquire_link_s=s.enquire_link_s,
        enquire_link_timeout_s=s.enquire_link_timeout_s,
        reconnect_min_s=s.reconnect_min_s,
        reconnect_max_s=s.reconnect_max_s,
        max_tps=s.max_tps,
        throttle_recovery_s=s.throttle_recovery_s,
    )


class Bridge:
    """The whole daemon. `await start()` then `await stop()`; or `await serve()` for the CLI."""

    def __init__(
        self,
        cfg: Config,
        *,
        config_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock
        self.store = make_store(cfg.store, region=cfg.tenants[0].region)
        self.budget: RateBudget | None = None
        self.simulator: object | None = None
        self.session: SmppSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.metrics = Metrics()
        self.admin: AdminServer | None = None
        self.mailer = Mailer(
            cfg, self.store, make_transport(cfg), clock=clock, metrics=self.metrics
        )
        # One wake-up for every producer: the mailer now, the dispatcher once start() built it.
        self.wake = Wake(mail=self.mailer.wake, sms=self._wake_dispatcher)
        self.intake = Intake(cfg, self.store, clock, wake=self.wake, metrics=self.metrics)
        self.smtp = SmtpIntake(cfg, self.intake, metrics=self.metrics)
        self.locks = NumberLocks()
        self.inbound = Inbound(
            cfg,
            self.store,
            clock=clock,
            wake=self.wake,
            keywords=self._keyword,
            hold=self.locks.hold,
            metrics=self.metrics,
        )
        self.metrics.watch_inbound(lambda: self.inbound.counters)
        self.maintenance = Maintenance(cfg, self.store, clock=clock, wake=self.wake)
        self.compliance = Compliance(cfg, self.store, self.inbound, self.locks)
        self.imap: list[ImapIntake] = []
        self._stack = AsyncExitStack()
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._first_signal_at: float | None = None
        self._started = False  # something to stop: the store at least was opened

    @property
    def smtp_port(self) -> int:
        return self.smtp.port

    def _wake_dispatcher(self) -> None:
        # Nothing to wake before start() built the dispatcher: it polls the queue when it starts.
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def _keyword(self, msisdn: str, dest: str, text: str, now: float) -> MoOutcome | None:
        # Compliance answers keywords through the inbound router it is built with, so the router
        # reaches it through this method rather than holding it (bridge.inbound.KeywordHook).
        return await self.compliance.keyword(msisdn, dest, text, now)

    async def _on_deliver(self, pdu: DeliverSm) -> int:
        return await self.inbound.handle(pdu)

    async def _submitted(self, rec: SmsRecord, smsc_ids: Sequence[str]) -> None:
        self.metrics.on_submitted(rec, self.clock())
        await self.inbound.submitted(rec, smsc_ids)

    @property
    def libraries(self) -> list[LibraryInput]:
        """The libraries as the status page shows them (read at each request: reload-safe)."""
        return [
            LibraryInput(t.id, t.name, self.cfg.source_addr_for(t), t.zone)
            for t in self.cfg.tenants
        ]

    async def start(self) -> None:
        cfg = self.cfg
        stack = self._stack
        # 1. the store: everything else hands work over through it
        await self.store.open()
        stack.push_async_callback(self.store.close)
        self._started = True
        # the admin listener next, stopped just before the store: /healthz says 503 while
        # everything else drains
        if cfg.admin.listen is not None:
            self.admin = AdminServer(
                cfg.admin.listen.host, cfg.admin.listen.port, self, metrics=self.metrics
            )
            await self.admin.start()
            stack.push_async_callback(self.admin.stop)
        # 2. the bundled SMSC simulator, when the config asks for it (embedded default)
        smpp_port = None
        if cfg.smpp.simulator:
            from bridge.testing.smsc_sim import SmscSimulator

            sim = SmscSimulator(
                system_id=cfg.smpp.system_id,
                password=cfg.smpp.password,
                host=cfg.smpp.host,
                port=cfg.smpp.port,
            )
            await sim.start()
            stack.push_async_callback(sim.stop)
            self.simulator = sim
            smpp_port = sim.port
            log.info("bundled SMSC simulator listening on %s:%d", cfg.smpp.host, sim.port)
        # 3. outbound mail (replies, bounces): before anything can produce some
        await self.mailer.start()
        stack.push_async_callback(self.mailer.stop)
        # 4. the SMPP session (binds in the background, reconnects by itself)
        self.session = SmppSession(
            session_settings(cfg, port=smpp_port),
            self._on_deliver,
            name="smsc",
            listener=self.metrics.session_listener("smsc"),
        )
        await self.session.start()
        stack.push_async_callback(self.session.stop, cfg.smpp.drain_timeout_s)
        # 4b. several instances on one PostgreSQL database share the carrier's max_tps: wait
        # until this one has settled in and knows its share before anything is sent
        self.metrics.send_rate_applied(
            0.0 if isinstance(self.store, PostgresStore) else cfg.smpp.max_tps
        )
        if isinstance(self.store, PostgresStore):
            self.budget = RateBudget(
                self.store.heartbeat,
                self._apply_share,
                instance_id=self.store.instance_id,
                max_tps=cfg.smpp.max_tps,
            )
            await self.budget.start()
            stack.push_async_callback(self.budget.stop)
        # 5. the dispatcher: drains the queue into the session
        self.dispatcher = Dispatcher(
            cfg,
            self.store,
            self.session,
            clock=self.clock,
            bounces=lambda rec, failure, now: build_bounces(self.cfg, rec, failure, now),
            policy=self.compliance,
            hold=self.locks.hold,
            on_submitted=self._submitted,
            metrics=self.metrics,
            may_send=None if self.budget is None else self.budget.sending,
        )
        await self.dispatcher.start()
        stack.push_async_callback(self.dispatcher.stop, cfg.smpp.drain_timeout_s)
        await self.inbound.start()
        stack.push_async_callback(self.inbound.stop)
        await self.maintenance.start()
        stack.push_async_callback(self.maintenance.stop)
        # 6. intake last: only take mail once everything behind it runs (IMAP, then SMTP)
        for box in cfg.imap:
            imap = ImapIntake(cfg, box, self.intake, self.store, clock=self.clock, wake=self.wake)
            await imap.start()
            stack.push_async_callback(imap.stop)
            self.imap.append(imap)
        await self.smtp.start()
        stack.push_async_callback(self.smtp.stop)

    def _apply_share(self, tps: float) -> None:
        """The rate budget's share for this instance: to the session, and to /metrics (where
        the budget's pause rate, one text per quarter hour, shows as 0)."""
        assert self.session is not None
        self.session.set_max_tps(tps)
        self.metrics.send_rate_applied(0.0 if tps <= PAUSED_TPS else tps)

    async def stop(self) -> None:
        if not self._started:
            return  # the store never opened: nothing ran, and its error says why
        log.info("stopping")
        await self._stack.aclose()
        log.info("stopped")

    def reload(self) -> None:
        """SIGHUP: re-read the config; a bad file is refused and the running one kept."""
        if self.config_path is None:
            return
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration:\n%s", exc)
            return
        changed = [n for n in ("smpp", "store", "run") if getattr(new, n) != getattr(self.cfg, n)]
        if new.smtp.listen != self.cfg.smtp.listen or new.smtp.tls != self.cfg.smtp.tls:
            changed.append("smtp.listen/smtp.tls")
        if [b.name for b in new.imap] != [i.box.name for i in self.imap]:
            changed.append("the list of imap mailboxes")
        if changed:
            log.warning("reload: %s settings need a restart to take effect", ", ".join(changed))
        self.cfg = new
        self.intake.reload(new)
        self.smtp.reload(new)
        self.inbound.reload(new)
        self.compliance.reload(new)
        self.maintenance.reload(new)
        for imap in self.imap:
            imap.reload(new)
        self.mailer.reload(new)
        if self.dispatcher is not None:
            self.dispatcher.reload(new)
        if self.budget is not None:
            self.budget.reload(new.smpp.max_tps)
        logging.getLogger().setLevel(new.log.level)
        log.info("configuration reloaded: %d tenant(s)", len(new.tenants))

    def _signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.reload_requested.set()
            return
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at = now
            log.info("stop signal: finishing open work (a second signal forces exit)")
            self.stop_requested.set()
            return
        # Ctrl-C under `make run` reaches the bridge twice (from the terminal and from make)
        # within a moment; only a signal sent later means "stop now".
        if now - self._first_signal_at < 1.0:
            return
        log.error("second stop signal: exiting now")
        os._exit(1)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signal, sig)
        dog: asyncio.Task[None] | None = None
        try:
            await self.start()
            self.ready()
            sdnotify.ready()
            interval = sdnotify.watchdog_interval()
            if interval:
                dog = asyncio.create_task(self._watchdog(interval), name="watchdog")
            while not self.stop_requested.is_set():
                reload_wait = asyncio.create_task(self.reload_requested.wait())
                stop_wait = asyncio.create_task(self.stop_requested.wait())
                await asyncio.wait({reload_wait, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                for t in (reload_wait, stop_wait):
                    t.cancel()
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    sdnotify.reloading()
                    self.reload()
                    sdnotify.ready()
        finally:
            sdnotify.stopping()
            if dog is not None:
                dog.cancel()
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    async def _watchdog(self, interval: float) -> None:
        """systemd WatchdogSec: ping while the event loop turns (a hung loop stops pinging)."""
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(interval)

    def ready(self) -> None:
        cfg = self.cfg
        domain = cfg.smtp.domains[0]
        mail = f"relay {cfg.mail.relay}" if cfg.mail.relay else f"Maildir {cfg.mail.maildir}"
        log.info(
            "ready: smtp %s:%d, smsc %s:%d%s, store %s, replies and bounces to %s%s",
            cfg.smtp.listen.host,
            self.smtp.port,
            cfg.smpp.host,
            cfg.smpp.port,
            " (bundled simulator)" if cfg.smpp.simulator else "",
            cfg.store.path,
            mail,
            f", status page http://{cfg.admin.listen}/" if cfg.admin.listen else "",
        )
        if cfg.smpp.simulator:
            # The first thing a new user wants: how to see it work. No sample number here:
            # log lines mask every number (bridge/privacy.py), so the README gives one.
            log.info(
                "try it (README, Quick start): sms-bridge -c %s send-test NUMBER, then"
                " sms-bridge -c %s simulate reply|stop|fail +NUMBER; mail from %s to"
                " <number>@%s on port %d is texted",
                self.config_path or "CONFIG",
                self.config_path or "CONFIG",
                _example_sender(cfg),
                domain,
                self.smtp.port,
            )


def _example_sender(cfg: Config) -> str:
    pattern = cfg.tenants[0].senders[0]
    return pattern.replace("*", "ils")
