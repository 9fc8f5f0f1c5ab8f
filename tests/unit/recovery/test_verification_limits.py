"""Issue 8, item 10: SMS pumping. Verification calls are limited per case (3 an hour), per agent
(20 an hour) and per tenant (200 verification texts an hour), tenant settings; each refusal is
a 429 with `Retry-After`, audited, and changes nothing else. Over HTTP on PostgreSQL; the
code-sending task runs in this process (tests/e2e/test_limits.py runs it on a real worker)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select, update

from app.extensions import db, utcnow
from app.recovery.models import VerificationCall
from tests.casework import case_events, case_row, code_in, error_of, messages_for, open_case

LIMITED = "recovery.verification_call_limited"


def _phone(app, user_id) -> str:
    from app.accounts.models import Channel

    with app.app_context():
        return str(db.session.scalars(select(Channel.id).where(Channel.user_id == user_id,
                                                               Channel.kind == "phone")).one())


def _place(client, agent, opened, method="sms"):
    return client.post(f"/v1/admin/cases/{opened.case_id}/verification-calls", headers=agent.headers,
                       json={"channel_id": _phone(client.application, opened.user.id), "method": method})


def _calls(app, tenant_id) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(VerificationCall)
                                 .where(VerificationCall.tenant_id == tenant_id)) or 0


def _refused(r, scope: str, limit: int) -> dict:
    assert r.status_code == 429, r.json
    error = error_of(r)
    assert error["code"] == "verification_limit"
    assert error["details"]["scope"] == scope and error["details"]["limit"] == limit
    assert 0 < int(r.headers["Retry-After"]) <= 3600
    assert int(r.headers["Retry-After"]) == error["details"]["retry_after_seconds"]
    return error


def test_thirty_calls_on_one_case_send_three_codes(app, client, factory, dev_outbox):
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)

    answers = []
    for _ in range(30):  # one after the other, each code sent before the next call
        answers.append(_place(client, agent, opened))
        factory.drain_tasks()

    assert [a.status_code for a in answers] == [202] * 3 + [429] * 27
    for r in answers[3:]:
        _refused(r, "case", 3)
    placed = {a.json["id"] for a in answers[:3]}
    sent = [m for m in messages_for(dev_outbox, "verification-call:")
            if m["idempotency_key"].split(":", 1)[1] in placed]
    assert len(sent) == 3
    assert _calls(app, opened.tenant.id) == 3
    refusals = case_events(app, opened.case_id, LIMITED)
    assert len(refusals) == 27
    assert {(e.actor_id, e.details["scope"], e.details["limit"]) for e in refusals} == {
        (str(agent.agent.id), "case", 3)}
    assert len(case_events(app, opened.case_id, "recovery.verification_call_placed")) == 3


def test_a_refused_call_leaves_the_live_code_working(app, client, factory, dev_outbox):
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)
    for _ in range(3):
        last = _place(client, agent, opened)
    factory.drain_tasks()

    assert _place(client, agent, opened).status_code == 429  # must not supersede the live call

    [message] = messages_for(dev_outbox, last.json["id"])
    r = client.post(f"/v1/admin/cases/{opened.case_id}/verification-calls/{last.json['id']}/confirm",
                    headers=agent.headers, json={"code": code_in(message)})
    assert r.status_code == 200 and r.json["status"] == "verified", r.json
    assert case_row(app, opened.case_id).state == "verified"


def test_an_agent_is_limited_across_cases(app, client, factory):
    tenant = factory.tenant(verification_calls_per_agent_per_hour=2)
    cases = [open_case(factory, client, tenant=tenant) for _ in range(3)]
    pumping, colleague = factory.agent(tenant), factory.agent(tenant)

    answers = [_place(client, pumping, opened) for opened in cases]

    assert [a.status_code for a in answers] == [202, 202, 429]
    _refused(answers[2], "agent", 2)
    assert _place(client, colleague, cases[2]).status_code == 202
    [refusal] = case_events(app, cases[2].case_id, LIMITED)
    assert refusal.actor_id == str(pumping.agent.id)


def test_a_tenant_is_limited_across_agents_and_cases(app, client, factory):
    tenant = factory.tenant(verification_texts_per_tenant_per_hour=2)
    cases = [open_case(factory, client, tenant=tenant) for _ in range(3)]
    agents = [factory.agent(tenant) for _ in range(3)]
    other_tenant = open_case(factory, client)

    answers = [_place(client, agent, opened) for agent, opened in zip(agents, cases, strict=True)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    _refused(answers[2], "tenant", 2)
    assert _place(client, factory.agent(other_tenant.tenant), other_tenant).status_code == 202  # per tenant
    assert _calls(app, tenant.id) == 2


def test_voice_calls_count_like_texts(app, client, factory):
    tenant = factory.tenant(verification_texts_per_tenant_per_hour=1)
    cases = [open_case(factory, client, tenant=tenant) for _ in range(2)]
    agent = factory.agent(tenant)

    assert _place(client, agent, cases[0], "voice").status_code == 202
    _refused(_place(client, agent, cases[1], "sms"), "tenant", 1)


def test_the_limit_is_an_hour_sliding_and_retry_after_says_when(app, client, factory):
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)
    first = [_place(client, agent, opened) for _ in range(3)]
    with app.app_context():
        # The first call was placed 50 minutes ago, the others just now.
        db.session.execute(update(VerificationCall).where(VerificationCall.id == uuid.UUID(first[0].json["id"]))
                           .values(created_at=utcnow() - timedelta(minutes=50)))
        db.session.commit()

    error = _refused(_place(client, agent, opened), "case", 3)
    assert 9 * 60 <= error["details"]["retry_after_seconds"] <= 10 * 60 + 1

    with app.app_context():
        db.session.execute(update(VerificationCall).where(VerificationCall.id == uuid.UUID(first[0].json["id"]))
                           .values(created_at=utcnow() - timedelta(minutes=61)))
        db.session.commit()
    assert _place(client, agent, opened).status_code == 202


def test_the_tightest_exceeded_limit_decides_retry_after(app, client, factory):
    tenant = factory.tenant(verification_calls_per_agent_per_hour=1)
    opened = open_case(factory, client, tenant=tenant)
    agent = factory.agent(tenant)
    placed = [_place(client, factory.agent(tenant), opened) for _ in range(2)] + [_place(client, agent, opened)]
    assert [p.status_code for p in placed] == [202, 202, 202]
    with app.app_context():
        db.session.execute(update(VerificationCall).where(VerificationCall.id == uuid.UUID(placed[0].json["id"]))
                           .values(created_at=utcnow() - timedelta(minutes=55)))
        db.session.commit()

    # Both the case (3) and the agent (1) are at their limit: the agent's frees up last.
    error = _refused(_place(client, agent, opened), "agent", 1)
    assert error["details"]["retry_after_seconds"] > 55 * 60
