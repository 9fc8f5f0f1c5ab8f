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
