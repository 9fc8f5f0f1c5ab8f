"""Twilio's signed status callback updates the verification call it names."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from integrations.channels.twilio import twilio_signature

TOKEN = "twilio-test-auth-token-0123456789"


@pytest.fixture
def twilio_app(settings):
    from app import create_app
    from app.extensions import db

    application = create_app(replace(settings, twilio_auth_token=TOKEN, public_url="https://rekey.example"),
                             TESTING=True)
    yield application
    with application.app_context():
        db.engine.dispose()


def _call_with_provider_id(app, factory, client_app_client):
    from app.extensions import db
    from app.recovery.models import VerificationCall

    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant)
    agent = factory.agent(tenant)
    case_id = factory.request_recovery(client_app_client, integration, secret, user.email).json["case_id"]
    factory.drain_tasks()
    detail = client_app_client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).json
    call_id = client_app_client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                                     json={"channel_id": detail["callable_channels"][0]["id"], "method": "sms"},
                                     headers=agent.headers).json["id"]
    sid = "SM" + uuid.uuid4().hex
    with app.app_context():
        call = db.session.get(VerificationCall, uuid.UUID(call_id))
        call.provider_id = sid
        db.session.commit()
    return call_id, sid


def _status(app, call_id):
    from app.extensions import db
    from app.recovery.models import VerificationCall

    with app.app_context():
        return db.session.get(VerificationCall, uuid.UUID(call_id)).status


def test_signed_failure_marks_call_failed(twilio_app, factory):
    client = twilio_app.test_client()
    factory.app = twilio_app
    call_id, sid = _call_with_provider_id(twilio_app, factory, client)
    params = {"MessageSid": sid, "MessageStatus": "undelivered", "AccountSid": "AC1"}
    sig = twilio_signature("https://rekey.example/v1/webhooks/twilio/status", params, TOKEN)
    r = client.post("/v1/webhooks/twilio/status", data=params, headers={"X-Twilio-Signature": sig})
    assert r.status_code == 204
    assert _status(twilio_app, call_id) == "failed"


def test_forged_callback_is_refused_and_changes_nothing(twilio_app, factory):
    client = twilio_app.test_client()
    factory.app = twilio_app
    call_id, sid = _call_with_provider_id(twilio_app, factory, client)
    before = _status(twilio_app, call_id)
    params = {"MessageSid": sid, "MessageStatus": "undelivered"}
    forged = twilio_signature("https://rekey.example/v1/webhooks/twilio/status", params, "another-token-xyz")
    r = client.post("/v1/webhooks/twilio/status", data=params, headers={"X-Twilio-Signature": forged})
    assert r.status_code == 401
    assert r.json["error"]["code"] == "invalid_signature"
    assert _status(twilio_app, call_id) == before
