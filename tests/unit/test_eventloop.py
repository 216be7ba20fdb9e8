"""run.event_loop: which loop `sms-bridge run` makes, and the config errors around it."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from bridge import config as config_module
from bridge import eventloop
from bridge.config import ConfigError, load_config_text
from tests.conftest import BASE, merge


def _cfg(event_loop: object) -> str:
    return yaml.safe_dump(merge(BASE, {"run": {"event_loop": event_loop}}))


def test_default_is_the_standard_library_loop() -> None:
    cfg = load_config_text(yaml.safe_dump(BASE))
    assert cfg.run.event_loop == "asyncio"
    assert eventloop.loop_factory(cfg.run.event_loop) == (None, "asyncio")


def test_empty_run_section_means_defaults() -> None:
    cfg = load_config_text(yaml.safe_dump({**BASE, "run": None}))
    assert cfg.run.event_loop == "asyncio"


def test_auto_without_uvloop_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert eventloop.loop_factory("auto") == (None, "asyncio")


@pytest.mark.parametrize("choice", ["uvloop", "auto"])
def test_uvloop_when_installed(choice: eventloop.EventLoopChoice) -> None:
    uvloop = pytest.importorskip("uvloop")
    factory, name = eventloop.loop_factory(choice)
    assert factory is not None and name.startswith("uvloop ")
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
        assert loop.run_until_complete(asyncio.sleep(0, result=42)) == 42
    finally:
        loop.close()


def test_uvloop_asked_for_but_missing_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "uvloop_available", lambda: False)
    with pytest.raises(ConfigError) as err:
        load_config_text(_cfg("uvloop"))
    (problem,) = err.value.problems
    assert problem.startswith("run.event_loop")
    assert "pip install 'sms-bridge[uvloop]'" in problem


def test_unknown_loop_refused() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text(_cfg("trio"))
    assert err.value.problems[0].startswith("run.event_loop")
