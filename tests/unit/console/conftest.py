"""Console fixtures: the clock TOTP checks read, and an agent of the console (tests/consolework.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FrozenClock
from tests.consolework import AGENT_PASSWORD, ConsoleAgent, console_frozen_clock, make_console_agent

__all__ = ["AGENT_PASSWORD", "ConsoleAgent", "make_console_agent"]


@pytest.fixture
def console_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    from app.console import credentials

    clock = console_frozen_clock()
    monkeypatch.setattr(credentials, "time", clock)
    return clock


@pytest.fixture
def console_agent(app: Any, factory: Any, console_clock: FrozenClock) -> ConsoleAgent:
    return make_console_agent(app, factory, factory.tenant(), console_clock)
