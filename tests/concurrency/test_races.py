"""Races against PostgreSQL: real threads, each with its own test client (so its own session
and connection), released together by a barrier so the requests really overlap.

Each test builds its own tenant. A 5xx (including the 503 a detected deadlock becomes) or an
exception in a thread fails the test: under any interleaving the answer is a clean refusal.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyotp
import pytest
from sqlalchemy import func, select

from app.extensions import db
from tests.factories import PASSWORD, PHONE
from tests.signing import body_of, standard_headers

pytestmark = pytest.mark.postgres

TENANT_HEADER = "X-Rekey-Tenant"


def race(app: Any, n: int, work: Callable[[int, Any], Any], *, timeout: float = 120) -> list[Any]:
    """Run `work(i, client)` in `n` threads released at once; return their results in order.
    Each thread has its own test client; an exception in any thread fails the caller."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        client = app.test_client()
        try:
            barrier.wait(timeout=30)
            results[i] = work(i, client)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"race-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a racing thread hung (a lock never released?)"
    if errors:
        raise errors[0]
    return results


def answer(response: Any) -> tuple[int, Any]:
    body = response.get_json(silent=True)
    assert response.status_code < 500, (response.status_code, body)
    return response.status_code, body


def run_task(app: Any, name: str, **kwargs: Any) -> Any:
    return app.extensions["celery"].tasks[name](**kwargs)


def events(app: Any, tenant_id: uuid.UUID, action: str | None = None,
           case_id: str | None = None) -> list[Any]:
    from app.audit.models import AuditEvent

    with app.app_context():
        stmt = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        if case_id:
            stmt = stmt.where(AuditEvent.case_id == uuid.UUID(case_id))
        rows = db.session.scalars(stmt.order_by(AuditEvent.seq)).all()
        db.session.expunge_all()
        return list(rows)


def chain_ok(app: Any, tenant_id: uuid.UUID) -> None:
    from app.audit.services import verify_chain

    with app.app_context():
        report = verify_chain(tenant_id)
    assert report.ok, report.as_dict()


def enrol_totp(app: Any, user: Any) -> str:
    from app.accounts.mfa import confirm_totp_enrolment, start_totp_enrolment
    from app.accounts.models import User
    from app.actor import Actor

    with app.app_context():
        row = db.session.get(User, user.id)
        actor = Actor(type="user", id=str(row.id), tenant_id=row.tenant_id, ip="192.0.2.10")
        _, secret, _ = start_totp_enrolment(actor, row, issuer="Rekey (races)")
        confirm_totp_enrolment(actor, row, pyotp.TOTP(secret).now())
        db.session.commit()
    return secret


def open_case(client: Any, factory: Any, tenant: Any, user: Any) -> str:
    integration, secret = factory.integration(tenant)
    r = factory.request_recovery(client, integration, secret, user.email)
    assert r.status_code == 202, r.get_json()
    factory.drain_tasks()
    return r.get_json()["case_id"]


def sent_code(app: Any, call_id: str) -> str:
    from integrations.channels.dev import read_messages

    sent = [m for m in read_messages(app.extensions["rekey.settings"].dev_outbox, to=PHONE)
            if m["idempotency_key"] == f"verification-call:{call_id}"]
    assert len(sent) == 1, sent
    return sent[0]["body"].split("code is ")[1].split(".")[0]


def place_call(client: Any, factory: Any, case_id: str, agent: Any) -> tuple[str, str]:
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).get_json()
    assert detail["state"] == "awaiting_verification", detail
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls", headers=agent.headers,
                    json={"channel_id": detail["callable_channels"][0]["id"], "method": "sms"})
    assert r.status_code == 202, r.get_json()
    call_id = r.get_json()["id"]
    factory.drain_tasks()
    return call_id, sent_code(factory.app, call_id)


def verified_case(client: Any, factory: Any, tenant: Any, user: Any, agent: Any) -> str:
    case_id = open_case(client, factory, tenant, user)
    call_id, code = place_call(client, factory, case_id, agent)
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm", json={"code": code},
                    headers=agent.headers)
    assert r.status_code == 200 and r.get_json()["status"] == "verified", r.get_json()
    return case_id


def queued_reset(client: Any, factory: Any, tenant: Any, user: Any, agent: Any) -> tuple[str, str]:
    case_id = verified_case(client, factory, tenant, user, agent)
    r = client.post(f"/v1/admin/cases/{case_id}/actions/force_mfa_reset", headers=agent.headers,
                    json={"reason": "Lost device; identity verified by a callback to the number on file"})
    assert r.status_code == 200 and r.get_json()["action"]["status"] == "queued", r.get_json()
    return case_id, r.get_json()["action"]["id"]


def active_factors(app: Any, user: Any) -> int:
    from app.accounts.models import MfaFactor

    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(MfaFactor).where(
            MfaFactor.user_id == user.id, MfaFactor.status == "active")) or 0


# --- intake --------------------------------------------------------------------------------------


def test_fifty_copies_of_one_webhook_make_one_case_and_one_delivery(pg, app, factory):
    from app.intake.models import WebhookDelivery
    from app.recovery.models import RecoveryCase

    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant)
    body = body_of({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                    "data": {"user_email": user.email, "ticket_id": "T-50", "requester_email": user.email,
                             "subject": "Lost phone", "text": "I lost my phone and cannot sign in."}})
    headers = standard_headers(secret, body, msg_id=f"msg_{uuid.uuid4().hex}")

    answers = race(app, 50, lambda i, c: answer(c.post(f"/v1/webhooks/{integration.id}", data=body,
                                                       headers=headers)))

    assert Counter(status for status, _ in answers) == {202: 1, 200: 49}, answers
    case_ids = {body["case_id"] for _, body in answers}
    assert len(case_ids) == 1, case_ids
    with app.app_context():
        cases = db.session.scalars(select(RecoveryCase.id).where(RecoveryCase.user_id == user.id)).all()
        deliveries = db.session.scalar(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.integration_id == integration.id))
    assert [str(c) for c in cases] == list(case_ids)
    assert deliveries == 1
    assert len(events(app, tenant.id, "recovery.requested")) == 1
    chain_ok(app, tenant.id)


# --- sign-in ------------------------------------------------------------------------------------


def test_twenty_concurrent_sign_ins_with_one_backup_code_admit_exactly_one(pg, app, factory):
    from app.accounts.mfa import issue_backup_codes
    from app.accounts.models import BackupCode, User
    from app.actor import Actor

    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    with app.app_context():
        row = db.session.get(User, user.id)
        codes = issue_backup_codes(Actor(type="user", id=str(row.id), tenant_id=row.tenant_id), row)
        db.session.commit()
    body = {"email": user.email, "password": PASSWORD, "backup_code": codes[0]}

    answers = race(app, 20, lambda i, c: answer(c.post("/v1/auth/signin", json=body,
                                                       headers={TENANT_HEADER: tenant.slug})))

    statuses = Counter(status for status, _ in answers)
    assert statuses[200] == 1, answers
    assert set(statuses) <= {200, 401, 429}, answers
    assert len(events(app, tenant.id, "mfa.backup_code_used")) == 1
    assert len(events(app, tenant.id, "auth.signin_succeeded")) == 1
    with app.app_context():
        used = db.session.scalar(select(func.count()).select_from(BackupCode).where(
            BackupCode.user_id == user.id, BackupCode.used_at.is_not(None)))
    assert used == 1
    chain_ok(app, tenant.id)


# --- the destructive action ---------------------------------------------------------------------


def test_ten_agents_forcing_one_reset_decide_it_once_and_it_runs_once(pg, app, client, factory):
    from app.recovery.models import CaseAction

    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    enrol_totp(app, user)
    agents = [factory.agent(tenant) for _ in range(10)]
    case_id = verified_case(client, factory, tenant, user, agents[0])

    def force(i: int, c: Any) -> tuple[int, Any]:
        return answer(c.post(f"/v1/admin/cases/{case_id}/actions/force_mfa_reset", headers=agents[i].headers,
                             json={"reason": f"Lost device; verified by callback (agent {i})"}))

    answers = race(app, 10, force)
    factory.drain_tasks()

    statuses = Counter(status for status, _ in answers)
    assert statuses == {200: 1, 409: 9}, answers
    with app.app_context():
        rows = db.session.scalars(select(CaseAction).where(CaseAction.case_id == uuid.UUID(case_id))).all()
        assert [(r.action, r.status) for r in rows] == [("force_mfa_reset", "done")]
    assert len(events(app, tenant.id, "recovery.action_queued", case_id)) == 1
    resets = events(app, tenant.id, "mfa.factor_admin_reset", case_id)
    assert len(resets) == 1 and resets[0].details["factors_removed"] == 1
    assert active_factors(app, user) == 0
    assert client.get(f"/v1/admin/cases/{case_id}", headers=agents[0].headers).get_json()["state"] == \
        "awaiting_enrolment"
    chain_ok(app, tenant.id)


def test_concurrent_runs_of_one_queued_reset_reset_once_and_notify_each_channel_once(pg, app, client, factory):
    from app.jobs.models import OutboxMessage
    from app.recovery.models import CaseAction
    from integrations.channels.dev import read_messages

    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    enrol_totp(app, user)
    agent = factory.agent(tenant)
    case_id, action_id = queued_reset(client, factory, tenant, user, agent)

    race(app, 8, lambda i, c: run_task(app, "rekey.recovery.execute_action", action_id=action_id))
    # The notices it queued, each delivered by four workers at once.
    with app.app_context():
        notices = db.session.execute(select(OutboxMessage.kwargs).where(
            OutboxMessage.task == "rekey.recovery.notify_channel",
            OutboxMessage.created_at >= factory.started_at)).scalars().all()
    notices = [k for k in notices if k["case_id"] == case_id and k["event"] == "mfa.factor_admin_reset"]
    assert len(notices) == 2  # the email and the phone on file before the case
    race(app, 8, lambda i, c: run_task(app, "rekey.recovery.notify_channel", **notices[i % 2]))
    factory.drain_tasks()  # everything else, including the outbox's own copy of the action

    with app.app_context():
        assert db.session.get(CaseAction, uuid.UUID(action_id)).status == "done"
    resets = events(app, tenant.id, "mfa.factor_admin_reset", case_id)
    assert len(resets) == 1 and resets[0].details["factors_removed"] == 1
    assert active_factors(app, user) == 0
    sent = [m for m in read_messages(app.extensions["rekey.settings"].dev_outbox)
            if m["idempotency_key"].startswith(f"notice:{case_id}:mfa.factor_admin_reset:")]
    assert sorted(m["to"] for m in sent) == sorted([user.email, PHONE])
    notified = [e for e in events(app, tenant.id, "user.notified", case_id)
                if e.details["event"] == "mfa.factor_admin_reset"]
    assert len(notified) == 2
    chain_ok(app, tenant.id)


def test_a_refusal_racing_the_reset_task_neither_deadlocks_nor_half_happens(pg, app, client, factory):
    """The request path locks the case then its actions; the task must not lock them in the
    opposite order, or PostgreSQL kills one of them as a deadlock."""
    from app.recovery.models import CaseAction

    tenant = factory.tenant()
    agents = [factory.agent(tenant) for _ in range(2)]
    for round_ in range(6):
        user = factory.settled_user(tenant)
        enrol_totp(app, user)
        case_id, action_id = queued_reset(client, factory, tenant, user, agents[0])

        def work(i: int, c: Any, case_id: str = case_id, action_id: str = action_id) -> Any:
            if i % 2:
                return run_task(app, "rekey.recovery.execute_action", action_id=action_id)
            return answer(c.post(f"/v1/admin/cases/{case_id}/actions/refuse", headers=agents[1].headers,
                                 json={"reason": "Caller could not name their manager", "trigger": "agent_judgement"}))

        results = race(app, 4, work)
        factory.drain_tasks()

        refusals = Counter(r[0] for r in results[0::2])
        assert refusals[200] == 1 and set(refusals) <= {200, 409}, (round_, results)
        with app.app_context():
            status = db.session.get(CaseAction, uuid.UUID(action_id)).status
        resets = events(app, tenant.id, "mfa.factor_admin_reset", case_id)
        state = client.get(f"/v1/admin/cases/{case_id}", headers=agents[0].headers).get_json()["state"]
        assert state == "refused"
        # Either the reset ran and the case was refused after it, or the refusal cancelled it.
        assert (status, len(resets), active_factors(app, user)) in (("done", 1, 0), ("cancelled", 0, 1)), (
            round_, status, len(resets))
    chain_ok(app, tenant.id)


# --- audit ----------------------------------------------------------------------------------------


def test_eight_writers_in_one_tenant_keep_the_chain_gapless(pg, app, factory):
    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    agents = [factory.agent(tenant) for _ in range(8)]

    def notes(i: int, c: Any) -> list[int]:
        return [answer(c.post(f"/v1/admin/users/{user.id}/notes", headers=agents[i].headers,
                              json={"body": f"Called back on the number on file, attempt {i}-{n}"}))[0]
                for n in range(5)]

    results = race(app, 8, notes)

    assert all(status == 201 for statuses in results for status in statuses), results
    rows = events(app, tenant.id)
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
    assert len([e for e in rows if e.action == "note.added"]) == 40
    chain_ok(app, tenant.id)


# --- verification -------------------------------------------------------------------------------


def test_the_right_code_confirmed_eight_times_at_once_verifies_once(pg, app, client, factory):
    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    agent = factory.agent(tenant)
    case_id = open_case(client, factory, tenant, user)
    call_id, code = place_call(client, factory, case_id, agent)

    answers = race(app, 8, lambda i, c: answer(c.post(
        f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm", json={"code": code},
        headers=agent.headers)))

    statuses = Counter(status for status, _ in answers)
    assert statuses[200] == 1 and set(statuses) <= {200, 422}, answers
    assert len(events(app, tenant.id, "recovery.verified", case_id)) == 1
    assert len(events(app, tenant.id, "recovery.evidence_recorded", case_id)) == 1
    chain_ok(app, tenant.id)


def test_two_senior_admins_approving_one_privileged_reset_approve_it_once(pg, app, client, factory):
    tenant = factory.tenant(privileged_requires_two_evidence_types=False)
    user = factory.settled_user(tenant, privileged=True)
    enrol_totp(app, user)
    agent = factory.agent(tenant)
    seniors = [factory.agent(tenant, "senior_admin") for _ in range(4)]
    case_id = open_case(client, factory, tenant, user)  # a privileged user's case is escalated
    r = client.post(f"/v1/admin/cases/{case_id}/actions/resume", headers=seniors[0].headers,
                    json={"reason": "Privileged user; the two-person rule applies"})
    assert r.status_code == 200, r.get_json()
    call_id, code = place_call(client, factory, case_id, agent)
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm", json={"code": code},
                    headers=agent.headers)
    assert r.get_json()["status"] == "verified", r.get_json()
    r = client.post(f"/v1/admin/cases/{case_id}/actions/force_mfa_reset", headers=agent.headers,
                    json={"reason": "Lost device; verified by a callback"})
    assert r.status_code == 200 and r.get_json()["action"]["status"] == "awaiting_approval", r.get_json()
    action_id = r.get_json()["action"]["id"]

    answers = race(app, 4, lambda i, c: answer(c.post(
        f"/v1/admin/cases/{case_id}/actions/approve", headers=seniors[i].headers,
        json={"reason": f"Second person {i}: checked the callback record", "action_id": action_id})))
    factory.drain_tasks()

    statuses = Counter(status for status, _ in answers)
    assert statuses[200] == 1 and set(statuses) <= {200, 409}, answers
    assert len(events(app, tenant.id, "recovery.action_approved", case_id)) == 1
    assert len(events(app, tenant.id, "mfa.factor_admin_reset", case_id)) == 1
    chain_ok(app, tenant.id)


def test_a_this_wasnt_me_link_clicked_eight_times_at_once_is_used_once(pg, app, client, factory):
    import re

    from integrations.channels.dev import read_messages

    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    enrol_totp(app, user)
    agent = factory.agent(tenant)
    case_id, _ = queued_reset(client, factory, tenant, user, agent)
    factory.drain_tasks()
    mail = [m for m in read_messages(app.extensions["rekey.settings"].dev_outbox, to=user.email)
            if case_id in m["body"]]
    token = re.search(r"/links/report/(\S+)", mail[-1]["body"]).group(1)

    answers = race(app, 8, lambda i, c: answer(c.post(f"/v1/recovery/report/{token}")))

    statuses = Counter(status for status, _ in answers)
    assert statuses == {202: 1, 404: 7}, answers
    assert len(events(app, tenant.id, "recovery.reported_not_me", case_id)) == 1
    assert len(events(app, tenant.id, "user.suspended", case_id)) == 1
    assert len(events(app, tenant.id, "security.incident_opened", case_id)) == 1
    chain_ok(app, tenant.id)


def test_an_enrolment_racing_the_reset_task_neither_deadlocks_nor_half_happens(pg, app, client, factory):
    """The enrolment locks the new factor (its first code) and then the case it recovers; the
    reset locks the case and then every factor of the user."""
    from app.accounts.models import MfaFactor
    from app.recovery.models import CaseAction

    tenant = factory.tenant()
    agent = factory.agent(tenant)
    for round_ in range(8):
        user = factory.settled_user(tenant)
        secret = enrol_totp(app, user)
        case_id, action_id = queued_reset(client, factory, tenant, user, agent)
        r = client.post("/v1/auth/signin", headers={TENANT_HEADER: tenant.slug},
                        json={"email": user.email, "password": PASSWORD,
                              "otp": pyotp.TOTP(secret).at(datetime.now(UTC).timestamp() + 30)})
        assert r.status_code == 200, r.get_json()
        bearer = {"Authorization": f"Bearer {r.get_json()['token']}"}
        new_secret = client.post("/v1/auth/enrol/totp", headers=bearer).get_json()["secret"]

        def work(i: int, c: Any, action_id: str = action_id, bearer: dict = bearer, new: str = new_secret,
                 stagger: float = 0.008 * round_) -> Any:
            if i == 0:
                return answer(c.post("/v1/auth/enrol/totp/confirm", json={"code": pyotp.TOTP(new).now()},
                                     headers=bearer))
            time.sleep(stagger)  # staggered by round, so each side wins some rounds
            return run_task(app, "rekey.recovery.execute_action", action_id=action_id)

        results = race(app, 3, work)
        factory.drain_tasks()

        with app.app_context():
            status = db.session.get(CaseAction, uuid.UUID(action_id)).status
            factors = Counter(db.session.scalars(select(MfaFactor.status).where(MfaFactor.user_id == user.id)).all())
        resets = events(app, tenant.id, "mfa.factor_admin_reset", case_id)
        state = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).get_json()["state"]
        enrolled = results[0][0] == 200
        if status == "done":  # the reset won: every factor, the half-enrolled one too, is gone
            assert (len(resets), factors["active"], state) == (1, 0, "awaiting_enrolment"), (round_, results)
            assert not enrolled, (round_, results)
        else:  # the enrolment won: the case is recovered and the reset has nothing left to do
            assert (status, len(resets), state, enrolled) == ("cancelled", 0, "closed", True), (round_, results)
            assert factors["active"] == 2, factors
    chain_ok(app, tenant.id)


def recovered_and_closed(client: Any, factory: Any, tenant: Any, user: Any, agent: Any) -> str:
    case_id, _ = queued_reset(client, factory, tenant, user, agent)
    factory.drain_tasks()
    r = client.post("/v1/auth/signin", headers={TENANT_HEADER: tenant.slug},
                    json={"email": user.email, "password": PASSWORD})
    assert r.get_json()["status"] == "enrolment_required", r.get_json()
    bearer = {"Authorization": f"Bearer {r.get_json()['token']}"}
    secret = client.post("/v1/auth/enrol/totp", headers=bearer).get_json()["secret"]
    r = client.post("/v1/auth/enrol/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=bearer)
    assert r.status_code == 200, r.get_json()
    factory.drain_tasks()
    assert client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).get_json()["state"] == "closed"
    return case_id


def test_an_old_notices_report_racing_a_senior_admin_on_the_open_case_does_not_deadlock(pg, app, client, factory):
    """The link names an ended case, so the suspicion falls on the user's open one: that case
    must be locked before the audit chain's head, as every request on it does."""
    import re

    from integrations.channels.dev import read_messages

    tenant = factory.tenant()
    agent = factory.agent(tenant)
    senior = factory.agent(tenant, "senior_admin")
    integration, secret = factory.integration(tenant)
    for round_ in range(4):
        user = factory.settled_user(tenant)
        enrol_totp(app, user)
        old_case = recovered_and_closed(client, factory, tenant, user, agent)
        mail = [m for m in read_messages(app.extensions["rekey.settings"].dev_outbox, to=user.email)
                if old_case in m["body"] and "/links/report/" in m["body"]]
        token = re.search(r"/links/report/(\S+)", mail[-1]["body"]).group(1)
        r = factory.request_recovery(client, integration, secret, user.email)
        new_case = r.get_json()["case_id"]
        factory.drain_tasks()  # a second recovery within the month: escalated

        def work(i: int, c: Any, token: str = token, new_case: str = new_case) -> Any:
            if i == 0:
                return answer(c.post(f"/v1/recovery/report/{token}"))
            return answer(c.post(f"/v1/admin/cases/{new_case}/actions/resume", headers=senior.headers,
                                 json={"reason": "Checked with the user's manager"}))

        results = race(app, 2, work)

        assert results[0][0] == 202 and results[1][0] == 200, (round_, results)
        state = client.get(f"/v1/admin/cases/{new_case}", headers=senior.headers).get_json()["state"]
        assert state in ("suspected_attack", "awaiting_verification"), state
        assert len(events(app, tenant.id, "user.suspended", new_case)) == 1
        assert events(app, tenant.id, "user.suspended", old_case) == []
    chain_ok(app, tenant.id)
