"""Helpers for the intake and recovery-case tests: signed deliveries of each kind, the rows a
user would look at (cases, deliveries, audit, outbox, evidence), and the dev channel."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from app.audit.models import AuditEvent
from app.extensions import db
from app.intake.models import WebhookDelivery
from app.jobs.models import OutboxMessage
from app.recovery.models import Evidence, RecoveryCase, VerificationCall
from tests.signing import body_of, jira_headers, standard_headers, zendesk_headers

LOST_PHONE = "I lost my phone and cannot sign in."


# --- signed deliveries ------------------------------------------------------------------------


def post(client: Any, integration: Any, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(f"/v1/webhooks/{integration.id}", data=body, headers=headers)


def standard_body(email: str, *, text: str = LOST_PHONE, ticket_id: str | None = None,
                  subject: str = "Lost phone") -> bytes:
    return body_of({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                    "data": {"user_email": email, "ticket_id": ticket_id or f"T-{uuid.uuid4().hex[:6]}",
                             "requester_email": email, "subject": subject, "text": text}})


def zendesk_body(email: str, *, text: str = LOST_PHONE, ticket_id: str = "35436") -> bytes:
    """The trigger body documented in integrations/ticketing/zendesk.py."""
    return body_of({"ticket": {"id": ticket_id, "subject": "Cannot sign in", "description": text,
                               "requester": {"email": email, "external_id": ""}}})


def jira_body(email: str, *, text: str = LOST_PHONE, key: str = "HELP-12") -> bytes:
    """`jira:issue_created` with an Atlassian Document Format description (REST v3)."""
    adf = {"type": "doc", "version": 1, "content": [
        {"type": "paragraph", "content": [{"type": "text", "text": text}]}]}
    return body_of({"timestamp": 1714555800000, "webhookEvent": "jira:issue_created",
                    "issue": {"id": "10001", "key": key,
                              "fields": {"summary": "Lost phone", "description": adf,
                                         "reporter": {"emailAddress": email,
                                                      "accountId": "5b10ac8d82e05b22cc7d4ef5"}}}})


def signed_request(kind: str, secret: str, email: str, *, text: str = LOST_PHONE) -> tuple[bytes, dict[str, str]]:
    """A recovery request as the vendor of `kind` would sign and send it."""
    if kind == "zendesk":
        body = zendesk_body(email, text=text)
        return body, zendesk_headers(secret, body)
    if kind == "jira":
        body = jira_body(email, text=text)
        return body, jira_headers(secret, body)
    body = standard_body(email, text=text)
    return body, standard_headers(secret, body)


def attestation_body(*, voucher: str, user_email: str | None = None, case_id: str | None = None,
                     relation: str = "manager", reference: str = "HR-4711") -> bytes:
    data: dict[str, Any] = {"voucher_email": voucher, "relation": relation, "reference": reference}
    if user_email:
        data["user_email"] = user_email
    if case_id:
        data["case_id"] = case_id
    return body_of({"type": "recovery.attested", "timestamp": datetime.now(UTC).isoformat(), "data": data})


def attest(client: Any, integration: Any, secret: str, **kw: Any) -> Any:
    body = attestation_body(**kw)
    return post(client, integration, body, standard_headers(secret, body))


# --- a case ready for step 1 ------------------------------------------------------------------


@dataclass
class Opened:
    tenant: Any
    integration: Any
    secret: str
    user: Any
    case_id: str
    answer: Any


def open_case(factory: Any, client: Any, *, tenant: Any = None, user: Any = None, text: str = LOST_PHONE,
              screen: bool = True, **user_kw: Any) -> Opened:
    """A signed Standard Webhooks request for a settled user, screened in-process."""
    tenant = tenant or factory.tenant()
    integration, secret = factory.integration(tenant)
    user_kw.setdefault("password", None)  # no argon2 work unless the test signs in
    user = user or factory.settled_user(tenant, **user_kw)
    answer = factory.request_recovery(client, integration, secret, user.email, text=text)
    assert answer.status_code == 202, answer.json
    case_id = answer.json["case_id"]
    if screen:
        factory.run_screen(case_id)
    return Opened(tenant, integration, secret, user, case_id, answer)


# --- what a user would look at ----------------------------------------------------------------


def case_row(app: Any, case_id: str) -> RecoveryCase:
    with app.app_context():
        case = db.session.get(RecoveryCase, uuid.UUID(case_id))
        assert case is not None
        db.session.expunge(case)
        return case


def cases_of(app: Any, tenant_id: uuid.UUID) -> list[RecoveryCase]:
    with app.app_context():
        rows = db.session.scalars(select(RecoveryCase).where(RecoveryCase.tenant_id == tenant_id)).all()
        db.session.expunge_all()
        return list(rows)


def case_events(app: Any, case_id: str, action: str | None = None) -> list[AuditEvent]:
    with app.app_context():
        stmt = select(AuditEvent).where(AuditEvent.case_id == uuid.UUID(case_id)).order_by(AuditEvent.seq)
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        rows = db.session.scalars(stmt).all()
        db.session.expunge_all()
        return list(rows)


def case_actions(app: Any, case_id: str) -> list[str]:
    return [e.action for e in case_events(app, case_id)]


def evidence_of(app: Any, case_id: str) -> list[Evidence]:
    with app.app_context():
        rows = db.session.scalars(select(Evidence).where(Evidence.case_id == uuid.UUID(case_id))
                                  .order_by(Evidence.recorded_at)).all()
        db.session.expunge_all()
        return list(rows)


def call_row(app: Any, call_id: str) -> VerificationCall:
    with app.app_context():
        call = db.session.get(VerificationCall, uuid.UUID(call_id))
        assert call is not None
        db.session.expunge(call)
        return call


def counts(app: Any, tenant: Any, *integrations: Any) -> dict[str, int]:
    """Rows a delivery could leave behind for this tenant."""
    with app.app_context():
        def count(stmt: Any) -> int:
            return int(db.session.scalar(stmt) or 0)

        ids = [i.id for i in integrations]
        return {
            "deliveries": count(select(func.count()).select_from(WebhookDelivery)
                                .where(WebhookDelivery.integration_id.in_(ids))),
            "cases": count(select(func.count()).select_from(RecoveryCase)
                           .where(RecoveryCase.tenant_id == tenant.id)),
            "audit": count(select(func.count()).select_from(AuditEvent)
                           .where(AuditEvent.tenant_id == tenant.id)),
        }


def outbox_rows(app: Any, **kwargs_match: str) -> list[OutboxMessage]:
    """Outbox rows whose kwargs include every given key/value."""
    with app.app_context():
        rows = [r for r in db.session.scalars(select(OutboxMessage)).all()
                if all(r.kwargs.get(k) == v for k, v in kwargs_match.items())]
        db.session.expunge_all()
        return rows


def tenant_text(app: Any, tenant_id: uuid.UUID) -> str:
    """Every audit row of the tenant as text (to prove a secret never reached it)."""
    with app.app_context():
        rows = db.session.scalars(select(AuditEvent).where(AuditEvent.tenant_id == tenant_id)).all()
        return "\n".join(json.dumps({"reason": r.reason, "details": r.details}, default=str) for r in rows)


# --- the development channel --------------------------------------------------------------------


def messages_for(dev_outbox: Any, key_part: str) -> list[dict[str, Any]]:
    from integrations.channels.dev import read_messages

    return [m for m in read_messages(dev_outbox) if key_part in m["idempotency_key"]]


def code_in(message: dict[str, Any]) -> str:
    """The one-time code in a verification message (voice messages space the digits)."""
    spoken = message["body"].split("code is ", 1)[1].split(".", 1)[0]
    return spoken.replace(" ", "")


def deliver_code(app: Any, call_id: str) -> None:
    """What the send_verification_code task does, run in-process."""
    from app.recovery.evidence import deliver_verification_code

    with app.app_context():
        deliver_verification_code(uuid.UUID(call_id))
        db.session.commit()


def error_of(response: Any) -> dict[str, Any]:
    """The error object of a response, checking the contract's shape on the way."""
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]
