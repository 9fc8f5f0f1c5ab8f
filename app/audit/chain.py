"""The form of an audit event that its hash covers and that exports and sinks carry.

`hash = SHA-256(prev_hash || canonical JSON of the event)`: pure functions over a row, shared by
the writer, the verifier and the forwarder (which therefore need not import each other)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from app.audit.models import AuditEvent


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_payload(event: AuditEvent) -> dict[str, Any]:
    """The fields the hash covers, in a form that reads back identically from any database."""
    return {
        "id": str(event.id),
        "tenant_id": str(event.tenant_id),
        "seq": event.seq,
        "occurred_at": _iso(event.occurred_at),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "action": event.action,
        "target_user_id": str(event.target_user_id) if event.target_user_id else None,
        "case_id": str(event.case_id) if event.case_id else None,
        "reason": event.reason,
        "details": event.details or {},
        "request_id": event.request_id,
        "source_ip": event.source_ip,
    }


def compute_hash(prev_hash: str, event: AuditEvent) -> str:
    body = json.dumps(canonical_payload(event), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()
    return hashlib.sha256(bytes.fromhex(prev_hash) + body).hexdigest()


EXPORT_FIELDS = ["seq", "id", "occurred_at", "action", "actor_type", "actor_id",
                 "target_user_id", "case_id", "reason", "details", "request_id", "source_ip",
                 "prev_hash", "hash"]


def event_as_dict(event: AuditEvent) -> dict[str, Any]:
    payload = canonical_payload(event)
    payload["prev_hash"] = event.prev_hash
    payload["hash"] = event.hash
    return {name: payload[name] for name in ["tenant_id", *EXPORT_FIELDS]}


# The same canonical form over plain values (a row read without the ORM, or a line of an
# export): `canonical_body(values)` is byte-identical to what `compute_hash` encodes for the event
# those values came from, so chains written by either path verify by either path.
CANONICAL_FIELDS = ("id", "tenant_id", "seq", "occurred_at", "actor_type", "actor_id", "action",
                    "target_user_id", "case_id", "reason", "details", "request_id", "source_ip")


def canonical_body(values: dict[str, Any]) -> bytes:
    """The bytes the hash covers, from an export dict or a row already in canonical form."""
    payload = {name: values[name] for name in CANONICAL_FIELDS}
    if payload["details"] is None:
        payload["details"] = {}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hash_values(prev_hash: str, values: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_body(values)).hexdigest()


def iso_time(moment: datetime) -> str:
    """The canonical text of an event time (UTC, microseconds, `Z`)."""
    return _iso(moment)
