"""What ops looks at: `rekey status` and the state gauges of `/metrics` read the same numbers.

Two marks are kept in `ops_marks` (one row per name, overwritten): `beat`, written by the
`rekey.ops.heartbeat` task beat schedules every 30 s (it proves beat, the broker and a worker
alive together), and `audit_verify`, written by `rekey audit verify` with its outcome (counts
only: no tenant, no event content).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, String, func, select
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, utcnow

BEAT = "beat"
AUDIT_VERIFY = "audit_verify"


class OpsMark(db.Model):  # type: ignore[name-defined]
    """The last time something periodic happened, and how it went."""

    __tablename__ = "ops_marks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


def set_mark(name: str, *, ok: bool | None = None, details: dict[str, Any] | None = None) -> None:
    """Overwrite the mark `name` (an upsert: two workers writing it at once both succeed)."""
    values = {"name": name, "at": utcnow(), "ok": ok, "details": details or {}}
    dialect = db.engine.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg_stmt = pg_insert(OpsMark).values(**values)
        db.session.execute(pg_stmt.on_conflict_do_update(
            index_elements=["name"], set_={"at": pg_stmt.excluded.at, "ok": pg_stmt.excluded.ok,
                                           "details": pg_stmt.excluded.details}))
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite_stmt = sqlite_insert(OpsMark).values(**values)
        db.session.execute(lite_stmt.on_conflict_do_update(
            index_elements=["name"], set_={"at": lite_stmt.excluded.at, "ok": lite_stmt.excluded.ok,
                                           "details": lite_stmt.excluded.details}))


def record_verification(reports: list[Any]) -> None:
    """Keep the outcome of a `rekey audit verify` run (how many chains, events, broken)."""
    broken = sum(1 for r in reports if not r.ok)
    set_mark(AUDIT_VERIFY, ok=broken == 0,
             details={"tenants": len(reports), "events": sum(r.events for r in reports), "broken": broken})


def queue_depth(timeout: float = 2.0) -> dict[str, Any]:
    """Messages waiting in the default queue and its consumers, asked of the broker itself."""
    from flask import current_app

    celery = current_app.extensions["celery"]
    queue = celery.conf.task_default_queue or "celery"
    try:
        with celery.connection_for_read() as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
            return {"queue": queue, "messages": int(declared.message_count),
                    "consumers": int(declared.consumer_count), "error": None}
    except Exception as exc:  # the broker's errors vary by transport
        return {"queue": queue, "messages": None, "consumers": None, "error": type(exc).__name__}


def read_status(*, with_queue: bool = False) -> dict[str, Any]:
    """Cases by state, the outbox backlog and lag, dead letters, the beat heartbeat and the last
    chain verification (and the broker's queue depth when `with_queue`)."""
    from app.jobs.models import DeadLetter, OutboxMessage
    from app.recovery.models import RecoveryCase

    now = utcnow()
    cases: dict[str, int] = {str(state): int(count) for state, count in db.session.execute(
        select(RecoveryCase.state, func.count()).group_by(RecoveryCase.state)).all()}
    backlog, oldest = db.session.execute(
        select(func.count(), func.min(OutboxMessage.created_at)).where(OutboxMessage.published_at.is_(None))).one()
    if oldest is not None and oldest.tzinfo is None:  # SQLite hands back naive UTC
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    dead_open, dead_total = db.session.execute(
        select(func.count().filter(DeadLetter.retried_at.is_(None)), func.count()).select_from(DeadLetter)).one()
    marks = {m.name: m for m in db.session.scalars(select(OpsMark))}
    beat, verify = marks.get(BEAT), marks.get(AUDIT_VERIFY)
    status: dict[str, Any] = {
        "cases_by_state": {str(k): int(v) for k, v in cases.items()},
        "outbox": {"backlog": int(backlog), "oldest_created_at": oldest,
                   "oldest_age_seconds": round((now - oldest).total_seconds(), 3) if oldest else None},
        "dead_letters": {"open": int(dead_open or 0), "total": int(dead_total or 0)},
        "beat": {"last_heartbeat_at": beat.at if beat else None,
                 "age_seconds": round((now - beat.at).total_seconds(), 3) if beat else None},
        "audit_verification": ({"at": verify.at, "ok": bool(verify.ok), **(verify.details or {})}
                               if verify else None),
    }
    if with_queue:
        status["queue"] = queue_depth()
    db.session.rollback()  # read only: end the snapshot
    return status
