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

from sqlalchemy import ColumnElement, Text, cast, func, literal_column, select

from app.actor import Actor
from app.audit.chain import EXPORT_FIELDS, compute_hash, hash_values, iso_time
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


_UUID_COLUMNS = ("id", "tenant_id", "target_user_id", "case_id")
_ROW_COLUMNS = ("id", "tenant_id", "seq", "occurred_at", "actor_type", "actor_id", "action",
                "target_user_id", "case_id", "reason", "details", "request_id", "source_ip",
                "prev_hash", "hash")


def _row_select(postgres: bool) -> Any:
    """The audit columns as plain values. On PostgreSQL the database renders ids and times in
    their canonical text, so no UUID or datetime object is built per row."""
    table = AuditEvent.__table__
    columns: list[ColumnElement[Any]] = []
    for name in _ROW_COLUMNS:
        column = table.c[name]
        if postgres and name in _UUID_COLUMNS:
            columns.append(cast(column, Text).label(name))
        elif postgres and name == "occurred_at":
            columns.append(func.to_char(column.op("AT TIME ZONE")(literal_column("'UTC'")),
                                        'YYYY-MM-DD"T"HH24:MI:SS.US"Z"').label(name))
        else:
            columns.append(column)
    return select(*columns)


def iter_rows(flt: AuditFilter, *, after_seq: int = 0, batch: int = 5000) -> Iterator[dict[str, Any]]:
    """The filtered events in `seq` order as export dicts (`event_as_dict`'s form), read as core
    rows through a server-side cursor: no ORM object per event, memory flat at any size."""
    table = AuditEvent.__table__
    connection = db.session.connection()
    postgres = connection.dialect.name == "postgresql"
    stmt = _row_select(postgres).where(table.c.tenant_id == flt.tenant_id, table.c.seq > after_seq)
    if flt.action:
        stmt = stmt.where(table.c.action == flt.action)
    if flt.actor:
        stmt = stmt.where(table.c.actor_id == flt.actor)
    if flt.user:
        stmt = stmt.where(table.c.target_user_id == flt.user)
    if flt.case:
        stmt = stmt.where(table.c.case_id == flt.case)
    if flt.since:
        stmt = stmt.where(table.c.occurred_at >= flt.since)
    if flt.until:
        stmt = stmt.where(table.c.occurred_at < flt.until)
    # Options on the statement, not the connection (which would keep them for the session's later
    # statements): a server-side cursor fetching `batch` rows at a time.
    result = connection.execute(stmt.order_by(table.c.seq).execution_options(stream_results=True,
                                                                            yield_per=batch))
    names = _ROW_COLUMNS
    try:
        for row in result:
            values = dict(zip(names, row, strict=True))
            if not postgres:
                for name in _UUID_COLUMNS:
                    if values[name] is not None:
                        values[name] = str(values[name])
                values["occurred_at"] = iso_time(values["occurred_at"])
            if values["details"] is None:
                values["details"] = {}
            yield values
    finally:
        result.close()  # a reader that stops early (a broken chain) closes the server-side cursor


def export_lines(flt: AuditFilter, fmt: str) -> Iterator[str]:
    """Stream the filtered events as JSON lines or CSV (with a header row)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_FIELDS)
        yield buffer.getvalue()
        for row in iter_rows(flt):
            buffer.seek(0)
            buffer.truncate()
            writer.writerow([_csv_cell(row[name]) for name in EXPORT_FIELDS])
            yield buffer.getvalue()
    else:
        dumps = json.dumps
        for row in iter_rows(flt):
            yield dumps(row, sort_keys=True) + "\n"


@dataclass(frozen=True)
class ChainReport:
    tenant_id: uuid.UUID
    events: int
    ok: bool
    first_broken_seq: int | None = None
    problem: str | None = None
    # How many signed checkpoints the rows were checked against (None: none were given).
    checkpoints: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"tenant_id": str(self.tenant_id), "events": self.events, "ok": self.ok,
                "first_broken_seq": self.first_broken_seq, "problem": self.problem,
                "checkpoints": self.checkpoints}


def verify_rows(tenant_id: uuid.UUID, rows: Iterator[dict[str, Any]], *,
                checkpoints: Any = None) -> tuple[ChainReport | None, int, str]:
    """Recompute a chain from its rows (export dicts in seq order) from the genesis hash, and
    compare every checkpointed `(seq, hash)`; the first failure, or None with (count, last hash).

    `checkpoints` is a `CheckpointLog` (app.audit.checkpoints) already checked on its own."""
    vouched = checkpoints.by_seq() if checkpoints is not None else {}
    checked = 0 if checkpoints is not None else None
    previous_vouched = 0
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    for row in rows:
        count += 1
        seq = row["seq"]
        if seq != expected_seq:
            return ChainReport(tenant_id, count, False, expected_seq,
                               f"seq {expected_seq} is missing (found {seq})", checked), count, prev_hash
        if row["prev_hash"] != prev_hash:
            return ChainReport(tenant_id, count, False, seq, "prev_hash does not link", checked), count, prev_hash
        if hash_values(prev_hash, row) != row["hash"]:
            return (ChainReport(tenant_id, count, False, seq, "content does not match its hash", checked),
                    count, prev_hash)
        prev_hash, expected_seq = row["hash"], expected_seq + 1
        point = vouched.get(seq)
        if point is not None:
            assert checked is not None
            checked += 1
            if point.hash != prev_hash:
                return (ChainReport(
                    tenant_id, count, False, seq,
                    f"rows rewritten: signed checkpoint #{point.number} says seq {seq} has hash "
                    f"{point.hash[:16]}..., the rows give {prev_hash[:16]}...; the first rewritten event "
                    f"is in seq {previous_vouched + 1}..{seq}", checked), count, prev_hash)
            previous_vouched = seq
    return None, count, prev_hash


def verify_chain(tenant_id: uuid.UUID, *, checkpoints: Any = None) -> ChainReport:
    """Recompute the tenant's chain from the genesis hash and name the first broken `seq`; with
    `checkpoints` (a verified `CheckpointLog`), also check every signed `(seq, hash)` and that
    the newest row is not older than the newest checkpoint (a cut-off tail)."""
    failure, count, prev_hash = verify_rows(tenant_id, iter_rows(AuditFilter(tenant_id=tenant_id)),
                                            checkpoints=checkpoints)
    if failure is not None:
        return failure
    last_seq = count
    checked = None
    if checkpoints is not None:
        checked = sum(1 for seq in checkpoints.by_seq() if seq <= last_seq)
        newest = checkpoints.newest
        if newest is not None and newest.seq > last_seq:
            return ChainReport(tenant_id, count, False, last_seq + 1,
                               f"chain ends at seq {last_seq} but signed checkpoint #{newest.number} vouches "
                               f"for seq {newest.seq} (events cut off the end)", checked)
    head = db.session.get(AuditHead, tenant_id)
    if head is not None and (head.seq != last_seq or head.hash != prev_hash):
        return ChainReport(tenant_id, count, False, last_seq + 1,
                           f"chain ends at seq {last_seq} but its head says {head.seq}", checked)
    return ChainReport(tenant_id, count, True, checkpoints=checked)
