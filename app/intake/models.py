from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, new_id, utcnow


class Integration(db.Model):  # type: ignore[name-defined]
    """A ticketing or HR system allowed to post webhooks for one tenant. Its signing secrets are
    encrypted at rest; during a rotation the previous secret stays valid until it expires."""

    __tablename__ = "integrations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # standard | zendesk | jira | hr
    name: Mapped[str] = mapped_column(String(200))
    secret_encrypted: Mapped[str] = mapped_column(String(500))
    previous_secret_encrypted: Mapped[str | None] = mapped_column(String(500))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    callback_url: Mapped[str | None] = mapped_column(String(2000))
    # Outbound credentials for status comments (Fernet-encrypted JSON), if any.
    outbound_encrypted: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(db.Model):  # type: ignore[name-defined]
    """A delivery we accepted. The unique (integration, delivery id) makes a repeat return the
    first answer and create nothing; rows are kept 30 days (senders retry for up to ~4)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("integration_id", "delivery_id"),
                      Index("ix_webhook_deliveries_integration_time", "integration_id", "received_at"))

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    integration_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("integrations.id"))
    delivery_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    status_code: Mapped[int] = mapped_column(Integer, default=202)
    response: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)

