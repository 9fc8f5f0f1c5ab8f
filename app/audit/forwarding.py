"""Forwarding audit events to a SIEM webhook: one signed Standard Webhooks delivery per event,
with the event id as `webhook-id`, so a retry is recognisably the same delivery."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from flask import current_app

from app.audit.chain import event_as_dict
from app.audit.models import AuditEvent
from app.extensions import db
from app.jobs.services import claim_effect, enqueue
from integrations.http import OutboundPolicy, send
from integrations.ticketing.outbound import signed_headers


def siem_enabled() -> bool:
    return bool(current_app.extensions["rekey.settings"].siem_url)


def schedule_forward(event: AuditEvent) -> None:
    """Called by `record_event`: queue the event for the sink in the event's own transaction."""
    if siem_enabled():
        enqueue("rekey.audit.forward", event_id=str(event.id))


def forward_event(event_id: uuid.UUID) -> bool:
    """Deliver the event to the SIEM once (claimed by event id; transient failures retry)."""
    settings = current_app.extensions["rekey.settings"]
    event = db.session.get(AuditEvent, event_id)
    if event is None or not settings.siem_url or not claim_effect(f"siem:{event_id}"):
        return False
    payload = json.dumps({"type": "audit.event", "timestamp": datetime.now(UTC).isoformat(),
                          "data": event_as_dict(event)}, sort_keys=True, separators=(",", ":"))
    headers = {"Content-Type": "application/json",
               **signed_headers(settings.siem_secret, f"audit_{event.id.hex}", datetime.now(UTC), payload)}
    send("POST", settings.siem_url, policy=OutboundPolicy.from_env(), headers=headers, data=payload.encode())
    return True


def schedule_checkpoint_forward(record: dict[str, object]) -> None:
    """Queue a signed checkpoint for the SIEM sink (the witness of the newest checkpoint lines)."""
    if siem_enabled():
        enqueue("rekey.audit.forward_checkpoint", record=record)


def forward_checkpoint(record: dict[str, object]) -> bool:
    """Deliver one signed checkpoint to the SIEM once (claimed by its digest)."""
    settings = current_app.extensions["rekey.settings"]
    digest = str(record["digest"])
    if not settings.siem_url or not claim_effect(f"siem-checkpoint:{digest}"):
        return False
    payload = json.dumps({"type": "audit.checkpoint", "timestamp": datetime.now(UTC).isoformat(),
                          "data": record}, sort_keys=True, separators=(",", ":"))
    headers = {"Content-Type": "application/json",
               **signed_headers(settings.siem_secret, f"checkpoint_{digest[:32]}", datetime.now(UTC), payload)}
    send("POST", settings.siem_url, policy=OutboundPolicy.from_env(), headers=headers, data=payload.encode())
    return True
