"""The step-up rule in the services (issue 10): a console actor needs a second factor passed in the
last five minutes for a destructive action; an API token keeps working unless the tenant forbids
it. Played against the recovery services and the admin API, which both go through it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from app.actor import Actor
from app.extensions import db, utcnow
from app.recovery.commands import perform_action
from app.tenants.step_up import StepUpRequired
from tests.casework import case_row, error_of, open_case


def _console(agent: Any, tenant: Any, at: Any) -> Actor:
    return Actor(type="agent", id=str(agent.id), tenant_id=tenant.id, role=agent.role, via="console",
                 second_factor_at=at)


def test_console_actor_without_recent_second_factor_cannot_suspend(app: Any, factory: Any, client: Any) -> None:
    opened = open_case(factory, client)
    senior = factory.agent(opened.tenant, "senior_admin")
    with app.test_request_context():
        for stale in (None, utcnow() - timedelta(minutes=5, seconds=5)):
            with pytest.raises(StepUpRequired):
                perform_action(_console(senior.agent, opened.tenant, stale), opened.case_id, "suspend_user",
                               {"reason": "caller could not answer"})
        db.session.rollback()
    assert case_row(app, opened.case_id).state == "awaiting_verification"
    with app.test_request_context():
        perform_action(_console(senior.agent, opened.tenant, utcnow() - timedelta(minutes=4)), opened.case_id,
                       "suspend_user", {"reason": "caller could not answer"})
        db.session.commit()
    assert case_row(app, opened.case_id).state == "suspected_attack"


def test_step_up_window_is_a_setting(app: Any, factory: Any, client: Any, tune: Any) -> None:
    tune(console_step_up_seconds=10)
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)
    with app.test_request_context():
        with pytest.raises(StepUpRequired) as refused:
            perform_action(_console(agent.agent, opened.tenant, utcnow() - timedelta(seconds=11)), opened.case_id,
                           "suspend_user", {"reason": "r"})
        assert refused.value.status == 403 and refused.value.details["window_seconds"] == 10


def test_non_destructive_actions_need_no_step_up(app: Any, factory: Any, client: Any) -> None:
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)
    with app.test_request_context():
        perform_action(_console(agent.agent, opened.tenant, None), opened.case_id, "escalate",
                       {"reason": "needs a senior admin"})
        db.session.commit()
    assert case_row(app, opened.case_id).state == "escalated"


def test_api_token_keeps_working_unless_the_tenant_forbids_it(app: Any, factory: Any, client: Any) -> None:
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)
    answer = client.post(f"/v1/admin/cases/{opened.case_id}/actions/suspend_user", json={"reason": "odd call"},
                         headers=agent.headers)
    assert answer.status_code == 200, answer.json
    strict = factory.tenant(destructive_actions_by_token=False)
    opened = open_case(factory, client, tenant=strict)
    agent = factory.agent(strict)
    answer = client.post(f"/v1/admin/cases/{opened.case_id}/actions/suspend_user", json={"reason": "odd call"},
                         headers=agent.headers)
    assert answer.status_code == 403
    assert error_of(answer)["code"] == "destructive_action_by_token_forbidden"
    assert case_row(app, opened.case_id).state == "awaiting_verification"
    # A non-destructive action by token still works there.
    answer = client.post(f"/v1/admin/cases/{opened.case_id}/actions/escalate", json={"reason": "check"},
                         headers=agent.headers)
    assert answer.status_code == 200, answer.json


def test_actor_carries_no_step_up_by_default() -> None:
    actor = Actor(type="agent", id=str(uuid.uuid4()), tenant_id=uuid.uuid4(), role="support_agent")
    assert actor.via is None and actor.second_factor_at is None
    assert replace(actor, via="console").via == "console"
