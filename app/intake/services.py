"""Integrations (who may post webhooks for a tenant) and the webhook intake itself.

Order matters: the signature is checked over the raw bytes before anything is parsed or
stored; a forged or stale request leaves no row behind.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from flask import current_app
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import decrypt, encrypt
from app.errors import (
    Conflict,
    NotFound,
    RateLimited,
    RekeyError,
    RuleRefused,
    Unauthenticated,
    ValidationFailed,
)
from app.extensions import db, rows_changed, utcnow
from app.intake.models import Integration, WebhookDelivery
from app.recovery.cases import RecoveryRequest, take_request
from app.recovery.evidence import record_callback_result, record_hr_attestation
from app.tenants.models import Tenant
from app.web import loads_strict
from integrations import base
from integrations.registry import WEBHOOK_KINDS, webhook_adapter
from integrations.webhooks import standard_key

log = structlog.get_logger(__name__)
DELIVERY_RETENTION = timedelta(days=30)
ROTATION_OVERLAP = timedelta(hours=24)


class SignatureRejected(Unauthenticated):
    code = "invalid_signature"


class PayloadRejected(RuleRefused):
    code = "invalid_payload"


def _new_secret(kind: str) -> str:
    raw = secrets.token_bytes(32)
    if kind in ("standard", "hr"):
        return "whsec_" + base64.b64encode(raw).decode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def create_integration(tenant: Tenant, *, kind: str, name: str, callback_url: str | None = None,
                       secret: str | None = None, outbound: dict[str, str] | None = None,
                       actor: Actor | None = None) -> tuple[Integration, str]:
    """Register a ticketing/HR sender; returns it and its signing secret (shown once).

    `secret` is for vendors that issue their own (Zendesk shows the webhook's secret to the
    admin); otherwise Rekey generates 256 random bits.
    """
    if kind not in WEBHOOK_KINDS:
        raise ValidationFailed("Unknown integration kind.", details={"allowed": sorted(WEBHOOK_KINDS)})
    signing_secret = secret or _new_secret(kind)
    _check_secret(kind, signing_secret)
    integration = Integration(id=uuid.uuid4(), tenant_id=tenant.id, kind=kind, name=name,
                              secret_encrypted=encrypt(signing_secret), callback_url=callback_url,
                              outbound_encrypted=encrypt(_json(outbound)) if outbound else None)
    db.session.add(integration)
    db.session.flush()
    record_event(actor or Actor.system(tenant.id), AuditAction.INTEGRATION_CREATED, tenant_id=tenant.id,
                 details={"integration_id": str(integration.id), "kind": kind, "name": name,
                          "callback_url": callback_url})
    return integration, signing_secret


def rotate_secret(integration: Integration, *, actor: Actor, secret: str | None = None) -> str:
    """Replace the signing secret; the previous one keeps working for ROTATION_OVERLAP."""
    new_secret = secret or _new_secret(integration.kind)
    _check_secret(integration.kind, new_secret)
    integration.previous_secret_encrypted = integration.secret_encrypted
    integration.previous_secret_expires_at = utcnow() + ROTATION_OVERLAP
    integration.secret_encrypted = encrypt(new_secret)
    record_event(actor, AuditAction.INTEGRATION_SECRET_ROTATED, tenant_id=integration.tenant_id,
                 details={"integration_id": str(integration.id),
                          "previous_valid_until": integration.previous_secret_expires_at.isoformat()})
    return new_secret


def _check_secret(kind: str, secret: str) -> None:
    if len(secret) < 24:
        raise ValidationFailed("A signing secret needs at least 24 characters.")
    if kind in ("standard", "hr"):
        try:
            key = standard_key(secret)
        except ValueError as exc:
            raise ValidationFailed("A Standard Webhooks secret is whsec_ followed by base64.") from exc
        if len(key) < 24:
            raise ValidationFailed("A Standard Webhooks secret needs at least 24 random bytes.")


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


def _active_secrets(integration: Integration) -> list[str]:
    found = [decrypt(integration.secret_encrypted)]
    if (integration.previous_secret_encrypted and integration.previous_secret_expires_at
            and integration.previous_secret_expires_at > utcnow()):
        found.append(decrypt(integration.previous_secret_encrypted))
    return found


def get_integration(integration_id: str) -> Integration:
    try:
        found = db.session.get(Integration, uuid.UUID(integration_id))
    except ValueError:
        found = None
    if found is None or not found.active:
        raise NotFound("No such integration.")
    return found


@dataclass(frozen=True)
class IntakeAnswer:
    status_code: int
    body: dict[str, Any]


def verify_delivery(integration: Integration, headers: Mapping[str, str], body: bytes) -> str:
    """The delivery id, if some active secret signed this body; else SignatureRejected."""
    adapter = webhook_adapter(integration.kind)
    last: base.SignatureError | None = None
    for secret in _active_secrets(integration):
        try:
            return adapter.verify(headers, body, secret, now=utcnow())
        except base.SignatureError as exc:
            last = exc
    log.warning("webhook_signature_rejected", integration_id=str(integration.id), reason=str(last))
    raise SignatureRejected("The webhook signature is missing, invalid or stale.")


def receive_delivery(integration: Integration, headers: Mapping[str, str], body: bytes, *,
                     request_id: str | None = None, ip: str | None = None) -> IntakeAnswer:
    """Verify, dedupe, and act on one webhook delivery (the caller commits). `request_id` and
    `ip` name the HTTP request in the audit events it causes, as for every other caller."""
    delivery_id = verify_delivery(integration, headers, body)
    _throttle(integration)
    payload = loads_strict(body)
    try:
        event = webhook_adapter(integration.kind).parse(headers, payload)
    except base.PayloadError as exc:
        raise PayloadRejected(str(exc)) from exc
    delivery = WebhookDelivery(integration_id=integration.id, delivery_id=delivery_id[:200],
                               event_type=event.type, received_at=utcnow())
    db.session.add(delivery)
    try:
        # Claims the delivery id; a concurrent copy waits on the unique index, then fails here.
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return _repeat_answer(integration, delivery_id)
    tenant = db.session.get(Tenant, integration.tenant_id)
    assert tenant is not None
    actor = Actor(type="integration", id=str(integration.id), tenant_id=tenant.id, ip=ip,
                  request_id=request_id)
    try:
        answer = _act(tenant, integration, actor, event)
    except RekeyError as exc:
        if exc.keep_changes:
            # The refusal is committed (its audit row), and this delivery with it: remember the
            # refusal, so the sender's retry gets it again and not an empty 200 it reads as done.
            delivery.status_code, delivery.response = exc.status, exc.to_body()
        raise
    delivery.status_code, delivery.response = answer.status_code, answer.body
    return answer


# A sliding minute per integration in a Redis sorted set, checked and counted in one atomic
# step: every signed delivery counts (issue 8, item 13), whatever is later made of its body, so a
# trigger looping on a body Rekey refuses (422) is throttled like any flood. Returns the count
# and, when over the limit, the score of the oldest delivery still in the window.
_RATE_SCRIPT = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local n = redis.call('ZCARD', key)
if n >= limit then
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return {n, oldest[2]}
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('PEXPIRE', key, math.ceil(window * 1000))
return {n + 1, '0'}
"""
RATE_WINDOW_SECONDS = 60


def _rate_redis() -> Any:
    """The Redis client of the rate counter (REDIS_URL), one per application."""
    import redis

    client = current_app.extensions.get("rekey.rate_redis")
    if client is None:
        settings = current_app.extensions["rekey.settings"]
        # Short timeouts: a dead Redis must not hold a sender's request (the counter falls back).
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        current_app.extensions["rekey.rate_redis"] = client
    return client


def _throttle(integration: Integration) -> None:
    """Refuse a flood from one integration (a looping trigger, or a stolen secret). Called right
    after the signature check: a forged delivery is never counted against the integration."""
    import redis

    limit = current_app.extensions["rekey.settings"].webhook_rate_per_minute
    now = utcnow().timestamp()
    try:
        count, oldest = _rate_redis().eval(_RATE_SCRIPT, 1, f"rekey:webhook-rate:{integration.id}", now,
                                           RATE_WINDOW_SECONDS, limit, uuid.uuid4().hex)
        over = int(count) >= limit and float(oldest) > 0
        retry_after = max(1, int(float(oldest) + RATE_WINDOW_SECONDS - now + 0.999)) if over else 0
    except (redis.RedisError, OSError) as exc:
        # Redis unreachable: count what PostgreSQL holds (the deliveries stored in the window)
        # rather than lose intake while the broker is down.
        log.warning("webhook_rate_counter_unavailable", error=type(exc).__name__)
        recent = db.session.scalar(select(func.count()).select_from(WebhookDelivery).where(
            WebhookDelivery.integration_id == integration.id,
            WebhookDelivery.received_at >= utcnow() - timedelta(seconds=RATE_WINDOW_SECONDS))) or 0
        over, count, retry_after = recent >= limit, recent, RATE_WINDOW_SECONDS
    if over:
        log.warning("webhook_rate_limited", integration_id=str(integration.id), recent=int(count))
        raise RateLimited("Too many deliveries from this integration; slow down.", retry_after=retry_after,
                          details={"limit_per_minute": limit})


def _repeat_answer(integration: Integration, delivery_id: str) -> IntakeAnswer:
    first = db.session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.integration_id == integration.id,
        WebhookDelivery.delivery_id == delivery_id[:200])).first()
    if first is None:  # the first copy rolled back; the sender's retry will be processed
        raise Conflict("This delivery is being processed; retry later.")
    # A repeat of an accepted delivery is a 200 with the first body; a repeat of a refusal
    # that was kept is the same refusal.
    return IntakeAnswer(200 if first.status_code < 300 else first.status_code, dict(first.response))


def _act(tenant: Tenant, integration: Integration, actor: Actor, event: base.InboundEvent) -> IntakeAnswer:
    data = event.data
    if event.type == base.RECOVERY_REQUESTED:
        if integration.kind == "hr":
            raise PayloadRejected("An HR integration may attest a request, not open one.")
        request = RecoveryRequest(
            user_email=data.get("user_email"), external_user_id=data.get("external_user_id"),
            ticket_id=data.get("ticket_id"), requester_email=data.get("requester_email"),
            subject=data.get("subject"), text=data.get("text"))
        opening = take_request(tenant, actor, request, integration_id=integration.id)
        # The same answer for a new case, a joined case and an unknown account; a ticket that
        # already has its case is a repeat (200 with the first answer), whatever its delivery id.
        return IntakeAnswer(200 if opening.repeat else 202, {"case_id": str(opening.case.id), "status": "received"})
    if event.type == base.RECOVERY_ATTESTED:
        case = record_hr_attestation(tenant, integration, actor, data)
        return IntakeAnswer(202, {"case_id": str(case.id), "status": case.state})
    if event.type == base.CALLBACK_RESULT:
        call = record_callback_result(tenant, actor, data)
        return IntakeAnswer(202, {"call_id": str(call.id), "status": call.status})
    raise PayloadRejected(f"Unsupported event type {event.type!r}.")


def purge_old_deliveries() -> int:
    """Forget deliveries past retention (far beyond any sender's retry window)."""
    return rows_changed(delete(WebhookDelivery).where(
        WebhookDelivery.received_at < utcnow() - DELIVERY_RETENTION)) or 0
