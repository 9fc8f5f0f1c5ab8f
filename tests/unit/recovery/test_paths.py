"""The runbook's paths through the service layer, tasks run in-process (tests/factories.py
`drain_tasks`); tests/e2e runs them over HTTP with a real worker."""

from __future__ import annotations

import pyotp

from tests.factories import PASSWORD, PHONE


def _verified_case(client, factory, tenant, user, agent):
    from integrations.channels.dev import read_messages

    integration, secret = factory.integration(tenant)
    case_id = factory.request_recovery(client, integration, secret, user.email).json["case_id"]
    factory.drain_tasks()
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).json
    assert detail["state"] == "awaiting_verification", detail
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                    json={"channel_id": detail["callable_channels"][0]["id"], "method": "sms"},
                    headers=agent.headers)
    call_id = r.json["id"]
    factory.drain_tasks()
    sent = [m for m in read_messages(factory.app.extensions["rekey.settings"].dev_outbox, to=PHONE)
            if call_id in m["idempotency_key"]]
    code = sent[0]["body"].split("code is ")[1].split(".")[0]
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm", json={"code": code},
                    headers=agent.headers)
    assert r.json["status"] == "verified", r.json
    return case_id


def test_force_reset_then_enrolment_recovers_and_closes(client, factory):
    from integrations.channels.dev import read_messages

    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    agent = factory.agent(tenant)
    case_id = _verified_case(client, factory, tenant, user, agent)
    r = client.post(f"/v1/admin/cases/{case_id}/actions/force_mfa_reset",
                    json={"reason": "Lost device; verified by callback"}, headers=agent.headers)
    assert r.status_code == 200, r.json
    assert r.json["action"]["status"] == "queued"
    factory.drain_tasks()
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).json
    assert detail["state"] == "awaiting_enrolment"
    hdr = {"X-Rekey-Tenant": tenant.slug}
    r = client.post("/v1/auth/signin", json={"email": user.email, "password": PASSWORD}, headers=hdr)
    assert r.json["status"] == "enrolment_required"
    auth = {"Authorization": f"Bearer {r.json['token']}"}
    secret = client.post("/v1/auth/enrol/totp", headers=auth).json["secret"]
    r = client.post("/v1/auth/enrol/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=auth)
    assert r.status_code == 200, r.json
    factory.drain_tasks()
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).json
    assert detail["state"] == "closed", detail["state"]
    actions = [t["action"] for t in detail["timeline"]]
    assert "mfa.factor_admin_reset" in actions and "recovery.follow_up_sent" in actions
    outbox = factory.app.extensions["rekey.settings"].dev_outbox
    notices = [m for m in read_messages(outbox) if case_id in m["idempotency_key"] and "notice" in m["idempotency_key"]]
    assert {m["to"] for m in notices} == {user.email, PHONE}


def test_a_vanished_reset_task_is_queued_again_by_the_sweep(client, factory):
    """A worker's main process killed mid-task leaves its message invisible for the visibility
    timeout; the beat sweep queues the stalled action again, and it runs once."""
    from datetime import timedelta

    from sqlalchemy import func, select, update

    from app.audit.models import AuditEvent
    from app.extensions import db, utcnow
    from app.jobs.models import OutboxMessage
    from app.recovery.closing import requeue_stalled
    from app.recovery.models import CaseAction

    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    agent = factory.agent(tenant)
    case_id = _verified_case(client, factory, tenant, user, agent)
    r = client.post(f"/v1/admin/cases/{case_id}/actions/force_mfa_reset",
                    json={"reason": "Lost device; verified by callback"}, headers=agent.headers)
    assert r.json["action"]["status"] == "queued"
    with factory.app.app_context():
        # The message is lost: nothing runs it; and it has waited longer than the sweep's patience.
        factory._drained.update(db.session.scalars(select(OutboxMessage.id)).all())
        db.session.execute(update(CaseAction).where(CaseAction.id == r.json["action"]["id"])
                           .values(queued_at=utcnow() - timedelta(minutes=10)))
        db.session.commit()
        assert requeue_stalled() >= 1
        db.session.commit()
    factory.drain_tasks()
    assert client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).json["state"] == "awaiting_enrolment"
    with factory.app.app_context():
        resets = db.session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.tenant_id == tenant.id, AuditEvent.action == "mfa.factor_admin_reset"))
        db.session.rollback()
    assert resets == 1
