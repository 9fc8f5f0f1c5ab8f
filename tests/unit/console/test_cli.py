"""`rekey agent create` explains the console sign-in and prints a working invitation;
`rekey agent invite`, `revoke-sessions` and `reset-mfa` (audited)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from app import cli
from app.audit.models import AuditEvent
from app.console import credentials, signin
from app.extensions import db
from tests.unit.console.conftest import AGENT_PASSWORD, ConsoleAgent


@pytest.fixture
def rekey(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(cli, "_app", lambda: app)
    runner = CliRunner()
    return lambda *args: runner.invoke(cli.main, list(args), catch_exceptions=False)


def _token(link: str) -> str:
    return link.split("/console/invitation/", 1)[1].split("?", 1)[0]


def test_agent_create_prints_the_invitation_and_how_to_sign_in(app: Any, factory: Any, rekey: Any) -> None:
    tenant = factory.tenant()
    human = rekey("agent", "create", "--tenant", tenant.slug, "--email", "kai@staff.test", "--role", "support_agent")
    assert human.exit_code == 0 and "/console/invitation/" in human.output and "second factor" in human.output
    made = rekey("agent", "create", "--tenant", tenant.slug, "--email", "lee@staff.test", "--role",
                 "senior_admin", "--json")
    link = json.loads(made.output)["invitation"]
    assert link.endswith(f"?tenant={tenant.slug}")
    with app.test_request_context():
        assert credentials.describe_invitation(_token(link)).email == "lee@staff.test"
    again = json.loads(rekey("agent", "invite", "--tenant", tenant.slug, "--email", "lee@staff.test",
                             "--json").output)["invitation"]
    with app.test_request_context():
        with pytest.raises(credentials.InvitationInvalid):
            credentials.describe_invitation(_token(link))  # replaced
        credentials.accept_invitation(_token(again), password=AGENT_PASSWORD, ip=None)
        db.session.commit()
        assert signin.begin_console_sign_in(tenant_slug=tenant.slug, email="lee@staff.test",
                                            password=AGENT_PASSWORD, ip=None).stage == "enrol"
        db.session.commit()


def test_revoke_sessions_and_reset_mfa_commands(app: Any, console_agent: ConsoleAgent, rekey: Any) -> None:
    who = console_agent
    with app.test_request_context():
        started = signin.begin_console_sign_in(tenant_slug=who.tenant.slug, email=who.agent.email,
                                               password=AGENT_PASSWORD, ip=None)
        db.session.commit()
    ended = rekey("agent", "revoke-sessions", "--tenant", who.tenant.slug, "--email", who.agent.email,
                  "--reason", "laptop lost", "--json")
    assert json.loads(ended.output)["sessions_revoked"] >= 1
    with app.test_request_context(), pytest.raises(signin.ConsoleSessionInvalid):
        signin.authenticate_console_session(started.token, stages=("password",))
    reset = rekey("agent", "reset-mfa", "--tenant", who.tenant.slug, "--email", who.agent.email,
                  "--reason", "lost the phone with the app", "--json")
    assert json.loads(reset.output)["factors_removed"] == 1
    missing = CliRunner().invoke(cli.main, ["agent", "reset-mfa", "--tenant", who.tenant.slug, "--email",
                                            f"{uuid.uuid4().hex[:6]}@staff.test", "--reason", "x"])
    assert missing.exit_code == 2
    with app.app_context():
        actions = set(db.session.scalars(select(AuditEvent.action).where(AuditEvent.tenant_id == who.tenant.id)))
    assert {"agent.sessions_revoked", "agent.mfa_reset", "agent.password_set", "agent.factor_enrolled"} <= actions
