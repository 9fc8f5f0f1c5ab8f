"""The signed webhook intake over HTTP: each vendor's request opens a case; anything forged,
stale, oversized or unmappable is refused in the error shape and leaves no row behind."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.extensions import db
from app.intake.models import Integration
from tests.casework import (
    LOST_PHONE,
    attest,
    case_events,
    case_row,
    counts,
    error_of,
    jira_body,
    outbox_rows,
    post,
    signed_request,
    standard_body,
    zendesk_body,
)
from tests.signing import body_of, jira_headers, standard_headers, zendesk_headers

# The published Standard Webhooks vector (shared/reference/WEBHOOKS-AND-CELERY.md, section 1).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_SIG_WRONG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="


class TestSignedRequestsOpenCases:
    @pytest.mark.parametrize("kind", ["standard", "zendesk", "jira"])
    def test_signed_request_of_each_kind_opens_case(self, app, client, factory, kind):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant, kind=kind)
        user = factory.settled_user(tenant, password=None)
        body, headers = signed_request(kind, secret, user.email, text="Lost my phone on the train.")

        r = post(client, integration, body, headers)

        assert r.status_code == 202, r.json
        assert set(r.json) == {"case_id", "status"} and r.json["status"] == "received"
        case = case_row(app, r.json["case_id"])
        assert (case.tenant_id, case.user_id, case.state) == (tenant.id, user.id, "received")
        assert case.integration_id == integration.id
        assert case.text == "Lost my phone on the train."
        assert case.ticket_id == {"standard": case.ticket_id, "zendesk": "35436", "jira": "HELP-12"}[kind]
        [requested] = case_events(app, r.json["case_id"], "recovery.requested")
        assert requested.actor_type == "integration" and requested.actor_id == str(integration.id)
        assert requested.details["joined"] is False
        # The screen is queued through the outbox, with ids only.
        [screen] = outbox_rows(app, case_id=r.json["case_id"])
        assert screen.task == "rekey.recovery.screen_case" and screen.kwargs == {"case_id": r.json["case_id"]}

    def test_repeat_of_a_delivery_returns_first_answer_and_creates_nothing(self, app, client, factory):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant)
        user = factory.settled_user(tenant, password=None)
        body = standard_body(user.email)
        first = post(client, integration, body, standard_headers(secret, body, msg_id="msg_repeat_1"))
        before = counts(app, tenant, integration)

        # A sender's retry: same webhook-id, a new attempt timestamp and signature.
        again = post(client, integration, body, standard_headers(secret, body, msg_id="msg_repeat_1",
                                                                 timestamp=int(time.time()) + 1))

        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json == first.json
        assert counts(app, tenant, integration) == before

    def test_zendesk_retry_without_invocation_id_is_the_same_delivery(self, app, client, factory):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant, kind="zendesk")
        user = factory.settled_user(tenant, password=None)
        body = zendesk_body(user.email)
        headers = zendesk_headers(secret, body)
        del headers["X-Zendesk-Webhook-Invocation-Id"]
        first = post(client, integration, body, headers)
        before = counts(app, tenant, integration)

        later = zendesk_headers(secret, body, when=datetime.now(UTC) + timedelta(seconds=30))
        del later["X-Zendesk-Webhook-Invocation-Id"]
        again = post(client, integration, body, later)

        assert (first.status_code, again.status_code) == (202, 200)
        assert again.json == first.json
        assert counts(app, tenant, integration) == before


class TestStandardWebhooksVector:
    def test_published_vector_passes_the_signature_check(self, app, client, factory, monkeypatch):
        tenant = factory.tenant()
        integration, _ = factory.integration(tenant, secret=VECTOR_SECRET)
        # The vector was signed in 2021: hold the intake's clock at its timestamp.
        import app.intake.services as intake

        monkeypatch.setattr(intake, "utcnow", lambda: datetime.fromtimestamp(VECTOR_TS, UTC))
        headers = {"webhook-id": VECTOR_ID, "webhook-timestamp": str(VECTOR_TS),
                   "content-type": "application/json"}
        before = counts(app, tenant, integration)

        good = post(client, integration, VECTOR_BODY, {**headers, "webhook-signature": VECTOR_SIG})
        bad = post(client, integration, VECTOR_BODY, {**headers, "webhook-signature": VECTOR_SIG_WRONG})

        # Past the signature, the vector's payload is not one of our events: 422, not 401.
        assert good.status_code == 422, good.json
        assert error_of(good)["code"] == "invalid_payload"
        assert bad.status_code == 401, bad.json
        assert error_of(bad)["code"] == "invalid_signature"
        assert counts(app, tenant, integration) == before

    def test_vector_secret_signs_a_real_request(self, app, client, factory):
        tenant = factory.tenant()
        integration, _ = factory.integration(tenant, secret=VECTOR_SECRET)
        user = factory.settled_user(tenant, password=None)
        body = standard_body(user.email)

        r = post(client, integration, body, standard_headers(VECTOR_SECRET, body))

        assert r.status_code == 202, r.json


def _forgeries(secret: str, other_secret: str, body: bytes) -> dict[str, tuple[bytes, dict[str, str]]]:
    now = int(time.time())
    tampered = body.replace(b"Lost phone", b"Lost phonE")
    assert tampered != body and len(tampered) == len(body)
    good = standard_headers(secret, body)
    return {
        "one_byte_changed": (tampered, good),
        "other_integration_secret": (body, standard_headers(other_secret, body)),
        "six_minutes_old": (body, standard_headers(secret, body, timestamp=now - 360)),
        "six_minutes_ahead": (body, standard_headers(secret, body, timestamp=now + 360)),
        "no_webhook_id": (body, {k: v for k, v in good.items() if k != "webhook-id"}),
        "no_webhook_timestamp": (body, {k: v for k, v in good.items() if k != "webhook-timestamp"}),
        "no_webhook_signature": (body, {k: v for k, v in good.items() if k != "webhook-signature"}),
    }


FORGERIES = ["one_byte_changed", "other_integration_secret", "six_minutes_old", "six_minutes_ahead",
             "no_webhook_id", "no_webhook_timestamp", "no_webhook_signature"]


class TestRefusedDeliveries:
    @pytest.mark.parametrize("forgery", FORGERIES)
    def test_forged_or_stale_standard_delivery_is_401_and_creates_nothing(self, app, client, factory, forgery):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant)
        other, other_secret = factory.integration(tenant)
        user = factory.settled_user(tenant, password=None)
        body, headers = _forgeries(secret, other_secret, standard_body(user.email))[forgery]
        before = counts(app, tenant, integration, other)

        r = post(client, integration, body, headers)

        assert r.status_code == 401, r.json
        assert error_of(r)["code"] == "invalid_signature"
        assert counts(app, tenant, integration, other) == before

    @pytest.mark.parametrize("kind,forgery", [
        ("zendesk", "wrong_secret"), ("zendesk", "six_minutes_old"), ("zendesk", "body_order"),
        ("jira", "wrong_secret"), ("jira", "no_signature"),
    ])
    def test_forged_vendor_delivery_is_401_and_creates_nothing(self, app, client, factory, kind, forgery):
        import base64
        import hashlib
        import hmac

        tenant = factory.tenant()
        integration, secret = factory.integration(tenant, kind=kind)
        user = factory.settled_user(tenant, password=None)
        body = zendesk_body(user.email) if kind == "zendesk" else jira_body(user.email)
        wrong = "x" * 43
        if kind == "zendesk":
            headers = {
                "wrong_secret": zendesk_headers(wrong, body),
                "six_minutes_old": zendesk_headers(secret, body, when=datetime.now(UTC) - timedelta(minutes=6)),
                "body_order": zendesk_headers(secret, body),
            }[forgery]
            if forgery == "body_order":  # the superseded body+timestamp order must not verify
                ts = headers["X-Zendesk-Webhook-Signature-Timestamp"]
                digest = hmac.new(secret.encode(), body + ts.encode(), hashlib.sha256).digest()
                headers["X-Zendesk-Webhook-Signature"] = base64.b64encode(digest).decode()
        else:
            headers = jira_headers(wrong if forgery == "wrong_secret" else secret, body)
            if forgery == "no_signature":
                del headers["X-Hub-Signature"]
        before = counts(app, tenant, integration)

        r = post(client, integration, body, headers)

        assert r.status_code == 401, r.json
        assert error_of(r)["code"] == "invalid_signature"
        assert counts(app, tenant, integration) == before

    def test_body_over_the_limit_is_413_and_creates_nothing(self, app, client, factory):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant)
        user = factory.settled_user(tenant, password=None)
        limit = app.extensions["rekey.settings"].max_body_bytes
        body = standard_body(user.email, text="x" * (limit + 1))
        before = counts(app, tenant, integration)

        r = post(client, integration, body, standard_headers(secret, body))

        assert r.status_code == 413, r.json
        assert error_of(r)["code"] == "payload_too_large"
        assert counts(app, tenant, integration) == before

    def test_malformed_json_after_a_valid_signature_is_400(self, app, client, factory):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant)
        body = b'{"type": "recovery.requested", "data": {"user_email": '
        before = counts(app, tenant, integration)

        r = post(client, integration, body, standard_headers(secret, body))

        assert r.status_code == 400, r.json
        assert error_of(r)["code"] == "malformed_request"
        assert counts(app, tenant, integration) == before

    @pytest.mark.parametrize("kind,payload", [
        ("standard", {"type": "recovery.requested", "data": {"ticket_id": "T-1", "text": "help"}}),
        ("standard", {"type": "user.deleted", "data": {}}),
        ("standard", {"type": "recovery.requested", "data": {"user_email": "a@example.com", "usr": "x"}}),
        ("zendesk", {"type": "zen:event-type:ticket.created", "detail": {"id": "35436"}}),
        ("jira", {"webhookEvent": "jira:issue_updated", "issue": {"key": "HELP-1", "fields": {}}}),
        ("hr", {"type": "recovery.requested", "data": {"user_email": "a@example.com"}}),
    ])
    def test_unmappable_payload_is_422_and_creates_nothing(self, app, client, factory, kind, payload):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant, kind=kind)
        body = body_of(payload)
        headers = {"zendesk": zendesk_headers, "jira": jira_headers}.get(kind, standard_headers)(secret, body)
        before = counts(app, tenant, integration)

        r = post(client, integration, body, headers)

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "invalid_payload"
        assert counts(app, tenant, integration) == before

    @pytest.mark.parametrize("integration_id", [lambda: str(uuid.uuid4()), lambda: "not-a-uuid"])
    def test_unknown_integration_is_404(self, client, integration_id):
        body = standard_body("someone@example.com")
        r = client.post(f"/v1/webhooks/{integration_id()}", data=body,
                        headers=standard_headers("whsec_" + "A" * 32, body))

        assert r.status_code == 404, r.json
        assert error_of(r)["code"] == "not_found"

    def test_deactivated_integration_is_404(self, app, client, factory):
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant)
        with app.app_context():
            db.session.get(Integration, integration.id).active = False
            db.session.commit()
        body = standard_body("someone@example.com")

        r = post(client, integration, body, standard_headers(secret, body))

        assert r.status_code == 404, r.json


class TestSecretRotation:
    def test_previous_secret_passes_within_the_overlap_then_stops(self, app, client, factory):
        from app.actor import Actor
        from app.intake.services import rotate_secret

        tenant = factory.tenant()
        integration, old_secret = factory.integration(tenant)
        users = [factory.settled_user(tenant, password=None) for _ in range(3)]
        with app.app_context():
            row = db.session.get(Integration, integration.id)
            new_secret = rotate_secret(row, actor=Actor.system(tenant.id))
            db.session.commit()
        assert new_secret != old_secret

        def send(secret: str, email: str):
            body = standard_body(email)
            return post(client, integration, body, standard_headers(secret, body))

        assert send(old_secret, users[0].email).status_code == 202
        assert send(new_secret, users[1].email).status_code == 202
        with app.app_context():  # the overlap ends
            db.session.get(Integration, integration.id).previous_secret_expires_at = (
                datetime.now(UTC) - timedelta(seconds=1))
            db.session.commit()
        before = counts(app, tenant, integration)
        late = send(old_secret, users[2].email)
        assert late.status_code == 401, late.json
        assert counts(app, tenant, integration) == before
        assert send(new_secret, users[2].email).status_code == 202


class TestRefusedAttestationRepeats:
    def test_repeat_of_a_refused_attestation_gets_the_same_refusal(self, app, client, factory):
        """A ticketing integration may not attest. Its refusal is kept (audited), so the
        delivery is remembered; the sender's retry must get the refusal again, not a 200."""
        from tests.casework import open_case

        opened = open_case(factory, client)
        ticketing, secret = factory.integration(opened.tenant, kind="standard")
        body_kw = {"voucher": "manager@example.com", "user_email": opened.user.email}
        from tests.casework import attestation_body

        body = attestation_body(**body_kw)
        first = post(client, ticketing, body, standard_headers(secret, body, msg_id="msg_attest_1"))
        again = post(client, ticketing, body, standard_headers(secret, body, msg_id="msg_attest_1"))

        assert first.status_code == 422, first.json
        assert again.status_code == first.status_code, again.json
        assert again.json == first.json
        assert case_row(app, opened.case_id).state == "awaiting_verification"


def test_hr_integration_attests_but_cannot_open(app, client, factory):
    from tests.casework import open_case

    opened = open_case(factory, client)
    hr, hr_secret = factory.integration(opened.tenant, kind="hr")
    body, headers = signed_request("standard", hr_secret, opened.user.email, text=LOST_PHONE)

    opening = post(client, hr, body, headers)
    attesting = attest(client, hr, hr_secret, voucher="manager@example.com", user_email=opened.user.email)

    assert opening.status_code == 422
    assert attesting.status_code == 202, attesting.json
    assert attesting.json == {"case_id": opened.case_id, "status": "verified"}
