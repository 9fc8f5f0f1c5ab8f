from __future__ import annotations

import uuid

from tests.factories import PHONE


def test_standard_webhook_opens_case_then_screen_awaits_verification(client, factory):
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant)
    r = factory.request_recovery(client, integration, secret, user.email)
    assert r.status_code == 202, r.json
    case_id = r.json["case_id"]
    assert r.json["status"] == "received"
    assert factory.run_screen(case_id) == "awaiting_verification"


def test_verification_call_to_known_number_verifies_case(client, factory, dev_outbox):
    from integrations.channels.dev import read_messages

    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant)
    agent = factory.agent(tenant)
    case_id = factory.request_recovery(client, integration, secret, user.email).json["case_id"]
    factory.run_screen(case_id)
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers)
    assert detail.status_code == 200, detail.json
    channel_id = detail.json["callable_channels"][0]["id"]
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                    json={"channel_id": channel_id, "method": "sms"}, headers=agent.headers)
    assert r.status_code == 202, r.json
    call_id = r.json["id"]
    from app.extensions import db
    from app.recovery.evidence import deliver_verification_code

    with factory.app.app_context():
        deliver_verification_code(uuid.UUID(call_id))
        db.session.commit()
    sent = [m for m in read_messages(dev_outbox, to=PHONE) if call_id in m["idempotency_key"]]
    assert len(sent) == 1
    code = sent[0]["body"].split("code is ")[1].split(".")[0]
    r = client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm",
                    json={"code": code}, headers=agent.headers)
    assert r.status_code == 200, r.json
    assert r.json["status"] == "verified"
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).json
    assert detail["state"] == "verified"
    assert [e["type"] for e in detail["evidence"]] == ["known_number_callback"]
    actions = [t["action"] for t in detail["timeline"]]
    assert actions[-3:] == ["recovery.verification_call_placed", "recovery.evidence_recorded", "recovery.verified"]
