"""Writing, exporting and verifying the audit chain.

`hash = SHA-256(prev_hash || canonical JSON of the event)`: altering, removing or reordering
any row changes every hash after it, and `verify_chain` names the first `seq` that breaks.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from app.actor import Actor
from app.audit.chain import EXPORT_FIELDS, compute_hash, event_as_dict
from app.audit.forwarding import schedule_forward
from app.audit.models import GENESIS_HASH, AuditAction, AuditEvent, AuditHead
from app.extensions import db, utcnow

# Keys that must never appear in `details`: a second line of defence behind the services,
# which never pass secrets in the first place.
_SECRET_KEYS = {"password", "code", "codes", "otp", "secret", "seed", "token", "backup_code",
                "temporary_password", "phone", "signing_secret", "api_token"}


def _check_no_secrets(details: Any) -> None:
    if isinstance(details, dict):
        for key, value in details.items():
            if key.lower() in _SECRET_KEYS:
                raise ValueError(f"audit details may not carry {key!r}")
            _check_no_secrets(value)
    elif isinstance(details, list):
        for item in details:
            _check_no_secrets(item)


def _lock_head(tenant_id: uuid.UUID) -> AuditHead:
    stmt = select(AuditHead).where(AuditHead.tenant_id == tenant_id).with_for_update()
    head = db.session.scalars(stmt).one_or_none()
    if head is None:
        # Only a tenant's first event gets here, in the transaction that creates the tenant, so
        # no other writer can race to create the head.
        head = AuditHead(tenant_id=tenant_id, seq=0, hash=GENESIS_HASH)
        db.session.add(head)
    return head


def record_event(
    actor: Actor,
    action: AuditAction,
    *,
    tenant_id: uuid.UUID | None = None,
    target_user_id: uuid.UUID | None = None,
    case_id: uuid.UUID | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the tenant's chain in the caller's transaction (flushes, no commit)."""
    tenant = tenant_id or actor.tenant_id
    if tenant is None:
        raise ValueError("an audit event needs a tenant")
    details = details or {}
    _check_no_secrets(details)
    head = _lock_head(tenant)
    event = AuditEvent(
        id=uuid.uuid4(),
        tenant_id=tenant,
        seq=head.seq + 1,
        occurred_at=utcnow(),
        actor_type=actor.type,
        actor_id=actor.id,
        action=str(action),
        target_user_id=target_user_id,
        case_id=case_id,
        reason=reason,
        details=details,
        request_id=actor.request_id,
        source_ip=actor.ip,
        prev_hash=head.hash,
    )
    event.hash = compute_hash(head.hash, event)
    head.seq, head.hash = event.seq, event.hash
    db.session.add(event)
    db.session.flush()
    schedule_forward(event)
    return event


@dataclass(frozen=True)
class AuditFilter:
    tenant_id: uuid.UUID
    action: str | None = None
    actor: str | None = None
    user: uuid.UUID | None = None
    case: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None


def iter_events(flt: AuditFilter, *, batch: int = 500) -> Iterator[AuditEvent]:
    """Events matching the filter in `seq` order, read in batches so an export streams."""
    stmt = select(AuditEvent).where(AuditEvent.tenant_id == flt.tenant_id)
    if flt.action:
        stmt = stmt.where(AuditEvent.action == flt.action)
    if flt.actor:
        stmt = stmt.where(AuditEvent.actor_id == flt.actor)
    if flt.user:
        stmt = stmt.where(AuditEvent.target_user_id == flt.user)
    if flt.case:
        stmt = stmt.where(AuditEvent.case_id == flt.case)
    if flt.since:
        stmt = stmt.where(AuditEvent.occurred_at >= flt.since)
    if flt.until:
        stmt = stmt.where(AuditEvent.occurred_at < flt.until)
    last_seq = 0
    while True:
        rows = db.session.scalars(
            stmt.where(AuditEvent.seq > last_seq).order_by(AuditEvent.seq).limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        last_seq = rows[-1].seq


def _csv_cell(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else ("" if value is None else str(value))
    # A cell a spreadsheet would evaluate as a formula is prefixed (CSV injection).
    if text and text[0] in "=+-@\t\r\x00":
        text = "'" + text
    return text


def export_lines(flt: AuditFilter, fmt: str) -> Iterator[str]:
    """Stream the filtered events as JSON lines or CSV (with a header row)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_FIELDS)
        yield buffer.getvalue()
        for event in iter_events(flt):
            buffer.seek(0)
            buffer.truncate()
            row = event_as_dict(event)
            writer.writerow([_csv_cell(row[name]) for name in EXPORT_FIELDS])
            yield buffer.getvalue()
    else:
        for event in iter_events(flt):
            yield json.dumps(event_as_dict(event), sort_keys=True) + "\n"


@dataclass(frozen=True)
class ChainReport:
    tenant_id: uuid.UUID
    events: int
    ok: bool
    first_broken_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": str(self.tenant_id), "events": self.events, "ok": self.ok,
                "first_broken_seq": self.first_broken_seq, "problem": self.problem}


def verify_chain(tenant_id: uuid.UUID) -> ChainReport:
    """Recompute the tenant's chain from the genesis hash and name the first broken `seq`."""
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    for event in iter_events(AuditFilter(tenant_id=tenant_id)):
        count += 1
        if event.seq != expected_seq:
            return ChainReport(tenant_id, count, False, expected_seq,
                               f"seq {expected_seq} is missing (found {event.seq})")
        if event.prev_hash != prev_hash:
            return ChainReport(tenant_id, count, False, event.seq, "prev_hash does not link")
        if compute_hash(prev_hash, event) != event.hash:
            return ChainReport(tenant_id, count, False, event.seq, "content does not match its hash")
        prev_hash, expected_seq = event.hash, expected_seq + 1
    head = db.session.get(AuditHead, tenant_id)
    if head is not None and (head.seq != expected_seq - 1 or head.hash != prev_hash):
        return ChainReport(tenant_id, count, False, expected_seq,
                           f"chain ends at seq {expected_seq - 1} but its head says {head.seq}")
    return ChainReport(tenant_id, count, True)
