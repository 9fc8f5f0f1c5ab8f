"""Console fixtures: an agent with a console password (through a real invitation) and an
authenticator app, and the clock TOTP checks read."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyotp
import pytest

from tests.conftest import FrozenClock

AGENT_PASSWORD = "console password for tests 42"


@pytest.fixture
def console_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    from app.console import credentials

    clock = FrozenClock((int(time.time()) // 30) * 30 + 15.0)
    monkeypatch.setattr(credentials, "time", clock)
    return clock


@dataclass
class ConsoleAgent:
    agent: Any
    tenant: Any
    token: str  # the API token
    totp_secret: str | None = None

    def code(self, clock: FrozenClock) -> str:
        assert self.totp_secret
        return pyotp.TOTP(self.totp_secret).at(clock.now)


def make_console_agent(app: Any, factory: Any, tenant: Any, clock: FrozenClock, *, role: str = "support_agent",
                       enrol_totp: bool = True, **links: Any) -> ConsoleAgent:
    """An agent who accepted their invitation and (by default) enrolled an authenticator app."""
    from app.actor import Actor
    from app.console import credentials, signin
    from app.extensions import db
    from app.tenants.models import Agent

    login = factory.agent(tenant, role, **links)
    with app.test_request_context():
        agent = db.session.get(Agent, login.agent.id)
        link = credentials.invite_agent(Actor.system(tenant.id), agent)
        credentials.accept_invitation(link.split("/invitation/")[1].split("?")[0], password=AGENT_PASSWORD,
                                      ip="10.0.0.1")
        secret = None
        if enrol_totp:
            started = signin.begin_console_sign_in(tenant_slug=tenant.slug, email=agent.email,
                                                   password=AGENT_PASSWORD, ip="10.0.0.1")
            session, _ = signin.authenticate_console_session(started.token, stages=("enrol",))
            secret, _uri = credentials.start_totp(session, agent)
            factor = credentials.confirm_totp(agent, pyotp.TOTP(secret).at(clock.now))
            signin.finish_enrolment(session, agent, "totp", str(factor.id), ip="10.0.0.1")
            clock.advance()
        db.session.commit()
        return ConsoleAgent(agent=login.agent, tenant=tenant, token=login.token, totp_secret=secret)


@pytest.fixture
def console_agent(app: Any, factory: Any, console_clock: FrozenClock) -> ConsoleAgent:
    return make_console_agent(app, factory, factory.tenant(), console_clock)
