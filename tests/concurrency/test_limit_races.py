"""Issue 8, item 10 under concurrency: verification calls placed at the same moment on
different cases, by different agents or by one, never exceed the tenant's or the agent's hourly
limit. Real threads against PostgreSQL, released together by a barrier (tests/concurrency/
test_races.py `race`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from app.extensions import db
from tests.concurrency.test_races import answer, chain_ok, events, open_case, race

pytestmark = pytest.mark.postgres
N = 8


def _cases(client: Any, factory: Any, tenant: Any) -> list[tuple[str, str]]:
    """N open cases of N users, each with its phone's channel id."""
    found = []
    for _ in range(N):
        user = factory.settled_user(tenant, password=None)
        case_id = open_case(client, factory, tenant, user)
        from app.accounts.models import Channel

        with factory.app.app_context():
            phone = db.session.scalars(select(Channel.id).where(Channel.user_id == user.id,
                                                                Channel.kind == "phone")).one()
        found.append((case_id, str(phone)))
    return found


def _placed(app: Any, tenant: Any) -> int:
    from app.recovery.models import VerificationCall

    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(VerificationCall)
                                 .where(VerificationCall.tenant_id == tenant.id)) or 0


@pytest.mark.parametrize("who", ["eight agents", "one agent"])
def test_simultaneous_calls_never_exceed_the_limit(app, client, factory, pg, who):
    setting = ("verification_texts_per_tenant_per_hour" if who == "eight agents"
               else "verification_calls_per_agent_per_hour")
    tenant = factory.tenant(**{setting: 3})
    cases = _cases(client, factory, tenant)
    agents = [factory.agent(tenant) for _ in range(N)] if who == "eight agents" else [factory.agent(tenant)] * N

    def place(i: int, c: Any) -> tuple[int, Any]:
        case_id, phone = cases[i]
        return answer(c.post(f"/v1/admin/cases/{case_id}/verification-calls", headers=agents[i].headers,
                             json={"channel_id": phone, "method": "sms"}))

    results = race(app, N, place)

    assert Counter(status for status, _ in results) == {202: 3, 429: N - 3}
    scope = "tenant" if who == "eight agents" else "agent"
    assert {body["error"]["details"]["scope"] for status, body in results if status == 429} == {scope}
    assert _placed(app, tenant) == 3
    assert len(events(app, tenant.id, "recovery.verification_call_placed")) == 3
    assert len(events(app, tenant.id, "recovery.verification_call_limited")) == N - 3
    chain_ok(app, tenant.id)
