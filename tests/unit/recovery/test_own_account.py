"""Issue 8, item 8: an agent cannot verify (or act on) their own account, however the two
addresses are spelt, and whatever links the agent's account to the user's: the same mailbox
(Unicode width and case, plus-aliases), the same external id (the HR employee id), the same
federated subject. Over HTTP on PostgreSQL: the agent records a video call "matching" the
user, who is themselves."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.casework import attest, case_events, case_row, error_of, evidence_of, open_case

VIDEO = {"result": "match", "matched_against": "hr_photo", "reference": "VC-1"}
ISSUER = "https://login.corp.example"
LONG_AGO = datetime(2024, 1, 2, tzinfo=UTC)


def _video(client, agent, case_id):
    return client.post(f"/v1/admin/cases/{case_id}/evidence", headers=agent.headers,
                       json={"type": "video_call", "details": VIDEO, "reason": "Video call, matched HR photo"})


def _refused_as_own_account(app, client, agent, opened) -> None:
    r = _video(client, agent, opened.case_id)

    assert r.status_code == 403, r.json
    assert error_of(r)["code"] == "own_account"
    assert case_row(app, opened.case_id).state == "awaiting_verification"
    assert evidence_of(app, opened.case_id) == []
    assert case_events(app, opened.case_id, "recovery.verified") == []


@pytest.mark.parametrize("agent_email, user_email", [
    # The agent's account spelt in full-width letters: NFKC folds it onto the user's address.
    ("\uff41\uff4e\uff41@corp.example", "ana@corp.example"),
    ("ANA@Corp.Example", "ana@corp.example"),
    ("ana+support@corp.example", "ana@corp.example"),
    ("ana@corp.example", "ana+recovery@corp.example"),
    ("\uff21\uff2e\uff21+helpdesk@CORP.example", "Ana+Home@corp.example"),
])
def test_agent_whose_address_is_the_users_mailbox_is_refused(app, client, factory, agent_email, user_email):
    tenant = factory.tenant()
    agent = factory.agent(tenant, email=agent_email)
    user = factory.settled_user(tenant, password=None, email=user_email)
    opened = open_case(factory, client, tenant=tenant, user=user)

    _refused_as_own_account(app, client, agent, opened)


def test_agent_with_the_users_external_id_is_refused(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant, email="ana.admin@staff.example", external_id="E-1001")
    user = factory.settled_user(tenant, password=None, email="ana@home.example", external_id="E-1001")
    opened = open_case(factory, client, tenant=tenant, user=user)

    _refused_as_own_account(app, client, agent, opened)


def test_agent_with_the_users_federated_subject_is_refused(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant, email="ana.admin@staff.example", federated=[(ISSUER, "00u1ana")])
    user = factory.settled_user(tenant, password=None, email="ana@home.example",
                                federated=[(ISSUER, "00u1ana", LONG_AGO)])
    opened = open_case(factory, client, tenant=tenant, user=user)

    _refused_as_own_account(app, client, agent, opened)


def test_agent_whose_address_is_another_email_on_the_users_account_is_refused(app, client, factory):
    from app.accounts.models import Channel
    from app.extensions import db

    tenant = factory.tenant()
    agent = factory.agent(tenant, email="ana.admin@staff.example")
    user = factory.settled_user(tenant, password=None, email="ana@home.example")
    with app.app_context():
        db.session.add(Channel(user_id=user.id, kind="email", value="ana.admin@staff.example",
                               added_at=LONG_AGO, verified_at=LONG_AGO))
        db.session.commit()
    opened = open_case(factory, client, tenant=tenant, user=user)

    _refused_as_own_account(app, client, agent, opened)


def test_a_different_person_with_a_similar_address_and_ids_may_verify(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant, email="anabel+support@corp.example", external_id="E-1002",
                          federated=[(ISSUER, "00u1anabel"), ("https://other.example", "00u1ana")])
    user = factory.settled_user(tenant, password=None, email="ana@corp.example", external_id="E-1001",
                                federated=[(ISSUER, "00u1ana", LONG_AGO)])
    opened = open_case(factory, client, tenant=tenant, user=user)

    r = _video(client, agent, opened.case_id)

    assert r.status_code == 201, r.json
    assert case_row(app, opened.case_id).state == "verified"


def test_the_user_cannot_vouch_for_themselves_through_a_plus_alias(app, client, factory):
    opened = open_case(factory, client, email="kim@corp.example")
    hr, hr_secret = factory.integration(opened.tenant, kind="hr")

    r = attest(client, hr, hr_secret, user_email=opened.user.email, voucher="Kim+manager@corp.example")

    assert r.status_code == 422, r.json
    assert error_of(r)["code"] == "unacceptable_evidence"
    assert case_row(app, opened.case_id).state == "awaiting_verification"
    assert [e.accepted for e in evidence_of(app, opened.case_id)] == [False]
