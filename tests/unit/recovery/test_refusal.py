"""Issue 8, item 14: a senior admin may refuse a `suspected_attack` case, as DESIGN.md lets any
open case be refused; the user stays suspended, and only a senior admin may do it. Over HTTP
on PostgreSQL, tasks run in this process."""

from __future__ import annotations

from typing import Any

import pyotp
import pytest

from tests.recovery_steps import World, act, audit, case, cast, in_process, signin, user_row, verified_case

REFUSAL = "Investigated with security: the request was an attack; no recovery on this case"


@pytest.fixture
def world(client: Any, factory: Any) -> World:
    return in_process(client, factory)


def _suspected(world: World) -> tuple[Any, str]:
    c = cast(world)
    case_id = verified_case(world, c)
    r = act(world, case_id, "suspend_user", c.agent, reason="The number on file says they did not ask")
    assert r.status_code == 200 and r.json["case"]["state"] == "suspected_attack", r.json
    world.quiesce()
    return c, case_id


def test_senior_admin_refuses_a_suspected_attack_case_and_the_user_stays_suspended(world):
    c, case_id = _suspected(world)
    assert "refuse" in case(world, case_id, c.senior)["allowed_actions"]

    r = act(world, case_id, "refuse", c.senior, reason=REFUSAL, trigger="agent_judgement")

    assert r.status_code == 200, r.json
    assert r.json["case"]["state"] == "refused" and r.json["case"]["refusal_trigger"] == "agent_judgement"
    assert user_row(world, c.user)["status"] == "suspended"
    assert c.totp_secret is not None
    r = signin(world, c, otp=pyotp.TOTP(c.totp_secret).now())
    assert r.status_code == 403 and r.json["error"]["code"] == "account_suspended", r.json
    [refused] = audit(world, c.tenant, "recovery.refused", case_id)
    assert (refused.actor_id, refused.reason) == (str(c.senior.agent.id), REFUSAL)
    assert refused.details["from_state"] == "suspected_attack"
    assert audit(world, c.tenant, "user.reactivated") == []


def test_support_agent_cannot_refuse_a_suspected_attack_case(world):
    c, case_id = _suspected(world)
    assert "refuse" not in case(world, case_id, c.agent)["allowed_actions"]

    r = act(world, case_id, "refuse", c.agent, reason=REFUSAL)

    assert r.status_code == 403, r.json
    assert r.json["error"]["code"] == "forbidden" and r.json["error"]["details"]["action"] == "refuse"
    assert case(world, case_id, c.senior)["state"] == "suspected_attack"
    assert audit(world, c.tenant, "recovery.refused", case_id) == []


def test_a_refused_suspected_attack_case_reopens_only_for_verification_again(world):
    c, case_id = _suspected(world)
    assert act(world, case_id, "refuse", c.senior, reason=REFUSAL).status_code == 200

    assert act(world, case_id, "reopen", c.agent, reason="The user called again").status_code == 403
    r = act(world, case_id, "reopen", c.senior, reason="The real user reached through HR")

    assert r.status_code == 200 and r.json["case"]["state"] == "awaiting_verification", r.json
    assert user_row(world, c.user)["status"] == "suspended"  # a new verification, reset and password first
