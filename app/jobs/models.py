"""The jobs every domain uses: the transactional outbox, effect keys and dead letters."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, new_id, utcnow


class OutboxMessage(db.Model):  # type: ignore[name-defined]
    """A task to publish, written in the same transaction as the change that needs it, so no
    commit can lose its task and no rollback can leave a task behind."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unpublished", "published_at", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    task: Mapped[str] = mapped_column(String(128))
    # Ids and names only: a secret never travels through the broker.
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    publish_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class Effect(db.Model):  # type: ignore[name-defined]
    """A side effect that has happened, keyed by (case or object, step). A task claims its key
    in the transaction of its effect, so a second run, a redelivery or a concurrent copy of the
    task changes nothing and sends nothing twice."""

    __tablename__ = "effects"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeadLetter(db.Model):  # type: ignore[name-defined]
    """A task that failed for good (retries exhausted, or a permanent error). `rekey dlq list`
    shows them; `rekey dlq retry ID` queues the task again through the outbox."""

    __tablename__ = "dead_letters"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    task: Mapped[str] = mapped_column(String(128))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    task_id: Mapped[str | None] = mapped_column(String(64))
    error_type: Mapped[str] = mapped_column(String(128))
    # The exception's message, cut short; adapters never put a secret in one.
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    retried_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retry_outbox_id: Mapped[uuid.UUID | None] = mapped_column()
