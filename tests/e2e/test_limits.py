"""Issue 8, item 10 with a real worker on PostgreSQL and Redis: thirty verification calls in a
row on one case send three codes; and the tenant's limit counts verification codes only, not
the notices and secret deliveries the worker texts to the same phones."""

from __future__ import annotations

from typing import Any

import pytest

from tests.factories import PHONE
from tests.recovery_paths import RESET_REASON, TEMP_PASSWORD
from tests.recovery_steps import (
    Cast,
    act,
    audit,
    case,
    cast,
    messages,
    notices,
    open_case,
    state,
    verified_case,
)

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]


def _place(world: Any, case_id: str, agent: Any) -> Any:
    phone = case(world, case_id, agent)["callable_channels"][0]["id"]
    return world.client.post(f"/v1/admin/cases/{case_id}/verification-calls", headers=agent.headers,
                             json={"channel_id": phone, "method": "sms"})


def _codes_sent(world: Any, call_ids: list[str]) -> list[dict[str, Any]]:
    return [m for call_id in call_ids for m in messages(world, f"verification-call:{call_id}", to=PHONE)]


def test_thirty_calls_in_a_row_send_three_codes(world, worker):
    c = cast(world)
    case_id = open_case(world, c)
    statuses, placed = [], []
    for _ in range(30):
        r = _place(world, case_id, c.agent)
        statuses.append(r.status_code)
        if r.status_code == 202:
            placed.append(r.json["id"])
            world.settle(lambda: len(_codes_sent(world, placed)) == len(placed), "the code texted")
        else:
            assert r.status_code == 429 and r.json["error"]["code"] == "verification_limit", r.json
            assert 0 < int(r.headers["Retry-After"]) <= 3600
    world.quiesce()

    assert statuses == [202] * 3 + [429] * 27
    assert len(_codes_sent(world, placed)) == 3
    assert len(messages(world, "verification-call:", to=PHONE)) >= 3  # (other tests' too)
    assert len(audit(world, c.tenant, "recovery.verification_call_limited", case_id)) == 27


def test_notices_and_secret_texts_do_not_count_against_the_tenant(world, worker):
    c = cast(world, tenant_settings={"verification_texts_per_tenant_per_hour": 2})
    case_id = verified_case(world, c)  # verification code 1 of 2
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    r = act(world, case_id, "set_temporary_password", c.agent, reason="Password over the verified phone")
    assert r.status_code == 200, r.json
    secret = world.settle(lambda: messages(world, f"action:{r.json['action']['id']}", to=PHONE), "the password")
    world.handed_out.append(TEMP_PASSWORD.search(secret[0]["body"]).group(1))  # type: ignore[union-attr]
    world.settle(lambda: len([m for m in notices(world, case_id, "user.password_set_by_admin")
                              if m["to"] == PHONE]) == 1, "the password notice to the phone")
    world.quiesce()
    phone_notices = [m for m in messages(world, f"notice:{case_id}:", to=PHONE) if m["channel"] == "sms"]
    assert len(phone_notices) == 2 and len(secret) == 1  # three texts besides the code

    others = [Cast(c.tenant, world.factory.settled_user(c.tenant), c.agent, c.senior, None) for _ in range(2)]
    second, third = (open_case(world, other) for other in others)
    ok = _place(world, second, c.agent)
    refused = _place(world, third, c.senior)

    assert ok.status_code == 202, ok.json  # verification code 2 of 2
    assert refused.status_code == 429, refused.json
    assert refused.json["error"]["details"]["scope"] == "tenant"
    world.settle(lambda: _codes_sent(world, [ok.json["id"]]), "the second code texted")
