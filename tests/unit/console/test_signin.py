"""Agents' console credentials and sign-in (issue 10, item 1): the invitation, the password, the
mandatory second factor, sessions (idle, absolute, revoked), throttles and the audit trail."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.actor import Actor
from app.audit.models import AuditEvent
from app.console import credentials, signin
from app.console.models import AgentSession
from app.extensions import db, utcnow
from app.tenants.models import Agent
from tests.unit.console.conftest import AGENT_PASSWORD, ConsoleAgent


def _events(tenant_id: Any, action: str) -> list[AuditEvent]:
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant_id,
                                                             AuditEvent.action == action)).all())


def _begin(who: ConsoleAgent, password: str = AGENT_PASSWORD, ip: str = "10.0.0.9") -> signin.ConsoleSignin:
    return signin.begin_console_sign_in(tenant_slug=who.tenant.slug, email=who.agent.email, password=password, ip=ip)


def test_invitation_is_one_time_and_hashed(app: Any, factory: Any) -> None:
    tenant = factory.tenant()
    login = factory.agent(tenant)
    with app.test_request_context():
        agent = db.session.get(Agent, login.agent.id)
        link = credentials.invite_agent(Actor.system(tenant.id), agent)
        assert link.endswith(f"?tenant={tenant.slug}") and "/console/invitation/rk_inv_" in link
        token = link.split("/invitation/")[1].split("?")[0]
        from app.console.models import AgentInvitation

        stored = db.session.scalars(select(AgentInvitation).where(AgentInvitation.agent_id == agent.id)).one()
        assert token not in stored.digest
        assert credentials.describe_invitation(token).id == agent.id
        credentials.accept_invitation(token, password=AGENT_PASSWORD, ip="10.0.0.1")
        with pytest.raises(credentials.InvitationInvalid):
            credentials.accept_invitation(token, password=AGENT_PASSWORD, ip="10.0.0.1")
        assert _events(tenant.id, "agent.invited") and _events(tenant.id, "agent.password_set")
        # A new invitation voids the previous unused one.
        first = credentials.invite_agent(Actor.system(tenant.id), agent).split("/invitation/")[1].split("?")[0]
        credentials.invite_agent(Actor.system(tenant.id), agent)
        with pytest.raises(credentials.InvitationInvalid):
            credentials.describe_invitation(first)


def test_invitation_expires_after_24_hours(app: Any, factory: Any) -> None:
    tenant = factory.tenant()
    login = factory.agent(tenant)
    with app.test_request_context():
        agent = db.session.get(Agent, login.agent.id)
        token = credentials.invite_agent(Actor.system(tenant.id), agent).split("/invitation/")[1].split("?")[0]
        from app.console.models import AgentInvitation

        row = db.session.scalars(select(AgentInvitation).where(AgentInvitation.agent_id == agent.id)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        with pytest.raises(credentials.InvitationInvalid):
            credentials.accept_invitation(token, password=AGENT_PASSWORD, ip=None)


def test_first_sign_in_only_enrols_then_second_factor_is_required(app: Any, factory: Any, console_clock: Any) -> None:
    from tests.unit.console.conftest import make_console_agent

    who = make_console_agent(app, factory, factory.tenant(), console_clock, enrol_totp=False)
    with app.test_request_context():
        started = _begin(who)
        assert started.stage == "enrol"
        # An enrolling session is no console session.
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(started.token)
    enrolled = make_console_agent(app, factory, factory.tenant(), console_clock)
    with app.test_request_context():
        started = _begin(enrolled)
        assert started.stage == "password" and started.methods == ("totp",)
        session, agent = signin.authenticate_console_session(started.token, stages=("password",))
        done = signin.complete_with_totp(session, agent, enrolled.code(console_clock), ip="10.0.0.9")
        assert done.stage == "full" and done.token != started.token  # rotated
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(started.token, stages=("password", "full"))
        session, _ = signin.authenticate_console_session(done.token)
        assert session.second_factor_at is not None
        succeeded = _events(enrolled.tenant.id, "auth.signin_succeeded")
        assert succeeded[-1].actor_type == "agent" and succeeded[-1].actor_id == str(enrolled.agent.id)
        assert succeeded[-1].details["door"] == "console"


def test_wrong_password_audited_unknown_agent_not(app: Any, console_agent: ConsoleAgent) -> None:
    with app.test_request_context():
        with pytest.raises(signin.ConsoleSigninFailed):
            _begin(console_agent, password="wrong password entirely")
        with pytest.raises(signin.ConsoleSigninFailed) as unknown:
            signin.begin_console_sign_in(tenant_slug=console_agent.tenant.slug, email="nobody@staff.test",
                                         password="whatever it is", ip="10.0.0.9")
        with pytest.raises(signin.ConsoleSigninFailed) as no_tenant:
            signin.begin_console_sign_in(tenant_slug="no-such-tenant-here", email="nobody@staff.test",
                                         password="whatever it is", ip="10.0.0.9")
        assert unknown.value.message == no_tenant.value.message  # one answer
        failed = _events(console_agent.tenant.id, "auth.signin_failed")
        assert len(failed) == 1 and failed[0].actor_type == "agent"
        assert failed[0].actor_id == str(console_agent.agent.id) and failed[0].details["result"] == "bad_password"


def test_lockout_after_consecutive_failures(app: Any, console_agent: ConsoleAgent, tune: Any) -> None:
    tune(signin_max_failures=3)
    with app.test_request_context():
        for _ in range(3):
            with pytest.raises(signin.ConsoleSigninFailed):
                _begin(console_agent, password="not the password at all")
        with pytest.raises(signin.ConsoleLocked):
            _begin(console_agent)  # even the right password
        assert _events(console_agent.tenant.id, "agent.locked")


def test_unknown_agents_are_throttled_by_ip(app: Any, factory: Any, tune: Any) -> None:
    tune(ip_max_failures=3)
    with app.test_request_context():
        for i in range(3):
            with pytest.raises(signin.ConsoleSigninFailed):
                signin.begin_console_sign_in(tenant_slug="nope-nope", email=f"x{i}@y.test", password="p" * 12,
                                             ip="10.9.9.9")
        with pytest.raises(signin.RateLimited):
            signin.begin_console_sign_in(tenant_slug="nope-nope", email="x9@y.test", password="p" * 12,
                                         ip="10.9.9.9")


def test_wrong_codes_end_the_pending_sign_in(app: Any, console_agent: ConsoleAgent) -> None:
    with app.test_request_context():
        started = _begin(console_agent)
        session, agent = signin.authenticate_console_session(started.token, stages=("password",))
        for _ in range(3):
            with pytest.raises(signin.ConsoleSigninFailed):
                signin.complete_with_totp(session, agent, "000000", ip="10.0.0.9")
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(started.token, stages=("password",))


def _full(app: Any, who: ConsoleAgent, clock: Any) -> str:
    started = _begin(who)
    session, agent = signin.authenticate_console_session(started.token, stages=("password",))
    token = signin.complete_with_totp(session, agent, who.code(clock), ip="10.0.0.9").token
    clock.advance()
    return token


def test_idle_timeout_and_absolute_lifetime(app: Any, console_agent: ConsoleAgent, console_clock: Any) -> None:
    with app.test_request_context():
        token = _full(app, console_agent, console_clock)
        session, _ = signin.authenticate_console_session(token)
        session.last_seen_at = utcnow() - timedelta(minutes=15, seconds=1)
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(token)
        token = _full(app, console_agent, console_clock)
        session, _ = signin.authenticate_console_session(token)
        assert session.expires_at - session.created_at == timedelta(hours=8)
        session.expires_at = utcnow()
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(token)


def test_revoke_sessions_and_reset_mfa(app: Any, console_agent: ConsoleAgent, console_clock: Any,
                                       factory: Any) -> None:
    support = factory.agent(console_agent.tenant)  # before this test's transaction holds the audit head
    with app.test_request_context():
        token = _full(app, console_agent, console_clock)
        agent = db.session.get(Agent, console_agent.agent.id)
        assert credentials.revoke_agent_sessions(Actor.system(agent.tenant_id), agent, reason="laptop stolen") >= 1
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(token)
        token = _full(app, console_agent, console_clock)
        as_support = Actor(type="agent", id=str(support.agent.id), tenant_id=agent.tenant_id, role="support_agent")
        with pytest.raises(credentials.RuleRefused):
            credentials.reset_agent_mfa(as_support, agent, reason="lost phone")
        assert credentials.reset_agent_mfa(Actor.system(agent.tenant_id), agent, reason="lost phone") == 1
        with pytest.raises(signin.ConsoleSessionInvalid):
            signin.authenticate_console_session(token)
        assert _begin(console_agent).stage == "enrol"  # enrols again
        reset = _events(console_agent.tenant.id, "agent.mfa_reset")
        assert reset[-1].reason == "lost phone"
        assert db.session.scalars(select(AgentSession).where(AgentSession.agent_id == agent.id)).first()
