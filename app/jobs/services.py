"""The jobs below every domain: the transactional outbox (`enqueue` in the service's
transaction; a relay publishes right after commit and a beat sweep republishes anything the
broker missed), effect keys that make a task's effect happen once, and dead letters."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog
from flask import current_app
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from app.extensions import db, utcnow
from app.jobs.models import DeadLetter, Effect, OutboxMessage

log = structlog.get_logger(__name__)
_PENDING = "rekey.outbox_pending"
# Rows younger than this belong to the after-commit publisher; the sweep leaves them alone.
SWEEP_GRACE = timedelta(seconds=5)


def enqueue(task: str, **kwargs: Any) -> OutboxMessage:
    """Schedule `task(**kwargs)` to run once this transaction commits."""
    message = OutboxMessage(id=uuid.uuid4(), task=task, kwargs=kwargs, created_at=utcnow())
    db.session.add(message)
    db.session.info.setdefault(_PENDING, []).append(message.id)
    return message


def _publish(message_id: uuid.UUID, task: str, kwargs: dict[str, Any],
             execute: Callable[[Any], Any] | None = None) -> bool:
    """Send one row to the broker and record the attempt, through `execute` when the caller
    holds the row's lock (the sweep), else in a short transaction of its own."""
    celery = current_app.extensions["celery"]
    error = None
    try:
        # No publisher retries: a broker outage must not hold a web request; the sweep retries.
        # `retry=False` alone is not enough: kombu still retries the connect itself until
        # broker_connection_timeout, twice (~6 s per row on Redis), so try it once first.
        with celery.producer_or_acquire() as producer:
            producer.connection.ensure_connection(max_retries=0)
            celery.send_task(task, kwargs=kwargs, task_id=str(message_id), retry=False,
                             producer=producer)
    except Exception as exc:  # the broker's errors vary by transport
        error = type(exc).__name__
        log.warning("outbox_publish_failed", task=task, outbox_id=str(message_id), error=error)
    outcome = {"last_error": error} if error else {"published_at": utcnow()}
    mark = (update(OutboxMessage).where(OutboxMessage.id == message_id)
            .values(publish_attempts=OutboxMessage.publish_attempts + 1, **outcome))
    if execute is not None:
        execute(mark)
    else:
        with db.engine.begin() as conn:
            conn.execute(mark)
    return error is None


def publish_committed(ids: list[uuid.UUID]) -> int:
    """Publish these committed rows now (called right after commit); returns how many went."""
    if not ids:
        return 0
    # One connection and one short transaction for the read and the marks (each pool checkout
    # is a pre-ping round trip, each transaction a BEGIN and a COMMIT: on the intake's path).
    with db.engine.begin() as conn:
        rows = conn.execute(select(OutboxMessage.id, OutboxMessage.task, OutboxMessage.kwargs)
                            .where(OutboxMessage.id.in_(ids), OutboxMessage.published_at.is_(None))).all()
        return sum(_publish(row.id, row.task, row.kwargs, execute=conn.execute) for row in rows)


def relay_pending(limit: int = 500) -> int:
    """Publish rows the after-commit publisher missed (broker down, process died)."""
    stmt = (select(OutboxMessage.id, OutboxMessage.task, OutboxMessage.kwargs)
            .where(OutboxMessage.published_at.is_(None), OutboxMessage.created_at < utcnow() - SWEEP_GRACE)
            .order_by(OutboxMessage.created_at).limit(limit))
    if db.engine.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = db.session.execute(stmt).all()
    # Marked through the sweep's own session: it holds these rows' locks, so a second
    # connection's UPDATE would wait on them forever.
    sent = sum(_publish(row.id, row.task, row.kwargs, execute=db.session.execute) for row in rows)
    db.session.commit()  # release the row locks taken for the sweep
    return sent


def _after_commit(session: Session) -> None:
    ids = session.info.pop(_PENDING, None)
    if ids:
        publish_committed(ids)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def install(session_class: type[Session]) -> None:
    """Hook the publisher onto commits of the application's sessions (once per process)."""
    if not event.contains(session_class, "after_commit", _after_commit):
        event.listen(session_class, "after_commit", _after_commit)
        # A rolled-back row is never published anyway (the publisher reads committed rows).
        event.listen(session_class, "after_rollback", _after_rollback)


def claim_effect(key: str) -> bool:
    """Claim the effect `key` for this transaction; False if it already happened.

    Call it before the effect. A concurrent claimant blocks on the primary key until this
    transaction ends, then sees the claim (or takes it, if this one rolled back).
    """
    from sqlalchemy.exc import IntegrityError

    if db.session.get(Effect, key) is not None:
        return False
    db.session.add(Effect(key=key, created_at=utcnow()))
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        return False
    return True


def record_dead_letter(task: str, kwargs: dict[str, Any], task_id: str | None, exc: BaseException,
                       retries: int) -> None:
    """Park a task that failed for good, for `rekey dlq list|retry`."""
    log.error("task_dead_lettered", task=task, task_id=task_id, error=type(exc).__name__, retries=retries)
    db.session.add(DeadLetter(task=task, kwargs=kwargs, task_id=task_id, error_type=type(exc).__name__,
                              error=str(exc)[:500], attempts=retries + 1, created_at=utcnow()))


def retry_dead_letter(dead_letter_id: uuid.UUID) -> OutboxMessage:
    """Queue a dead-lettered task again (through the outbox, so the retry itself is durable)."""
    from app.errors import Conflict, NotFound
    row = db.session.get(DeadLetter, dead_letter_id, with_for_update=True)
    if row is None:
        raise NotFound("No such dead letter.")
    if row.retried_at is not None:
        raise Conflict("This dead letter was already retried.", details={"outbox_id": str(row.retry_outbox_id)})
    message = enqueue(row.task, **row.kwargs)
    row.retried_at, row.retry_outbox_id = utcnow(), message.id
    return message
