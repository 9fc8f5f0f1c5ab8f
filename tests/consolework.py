"""Agents of the console for tests: an agent who accepted their invitation and enrolled an
authenticator app, and the console sign-in a browser (the test client) goes through."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyotp

from tests.conftest import FrozenClock
from tests.webpages import form_token

AGENT_PASSWORD = "console password for tests 42"


def console_frozen_clock() -> FrozenClock:
    return FrozenClock((int(time.time()) // 30) * 30 + 15.0)


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



def console_sign_in(client: Any, who: ConsoleAgent, clock: FrozenClock) -> Any:
    """Sign `who` in through the console pages with their authenticator app."""
    page = client.get(f"/console/signin?tenant={who.tenant.slug}")
    answer = client.post("/console/signin", data={"csrf_token": form_token(page), "tenant": who.tenant.slug,
                                                  "email": who.agent.email, "password": AGENT_PASSWORD})
    assert answer.status_code == 303, answer.get_data(as_text=True)[:300]
    page = client.get("/console/signin/factor")
    answer = client.post("/console/signin/factor", data={"csrf_token": form_token(page), "code": who.code(clock)})
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/queue"
    clock.advance()
    return answer
