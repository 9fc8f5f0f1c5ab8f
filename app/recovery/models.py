from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, new_id, utcnow

# The runbook's states (DESIGN.md, "The recovery case").
RECEIVED = "received"
AWAITING_VERIFICATION = "awaiting_verification"
VERIFIED = "verified"
AWAITING_ENROLMENT = "awaiting_enrolment"
RECOVERED = "recovered"
CLOSED = "closed"
ESCALATED = "escalated"
REFUSED = "refused"
SUSPECTED_ATTACK = "suspected_attack"
EXPIRED = "expired"

STATES = (RECEIVED, AWAITING_VERIFICATION, VERIFIED, AWAITING_ENROLMENT, RECOVERED, CLOSED,
          ESCALATED, REFUSED, SUSPECTED_ATTACK, EXPIRED)
# A user has at most one case in these states; a second request joins it.
OPEN_STATES = (RECEIVED, AWAITING_VERIFICATION, VERIFIED, AWAITING_ENROLMENT, RECOVERED, ESCALATED,
               SUSPECTED_ATTACK)
_OPEN_SQL = "state IN (" + ", ".join(f"'{s}'" for s in OPEN_STATES) + ")"


class RecoveryCase(db.Model):  # type: ignore[name-defined]
    """One request for one user to regain access."""

    __tablename__ = "recovery_cases"
    __table_args__ = (
        # The database itself keeps "one open case per user", also under concurrent intake.
        Index("uq_recovery_cases_open_user", "user_id", unique=True,
              postgresql_where=text(_OPEN_SQL), sqlite_where=text(_OPEN_SQL)),
        Index("ix_recovery_cases_tenant_state", "tenant_id", "state"),
        Index("ix_recovery_cases_tenant_email", "tenant_id", "requested_email"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    # None when the request named no account we know: the case exists (so the caller learns
    # nothing) and is refused as unverifiable by the screen.
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    requested_email: Mapped[str | None] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(32), default=RECEIVED)
    state_before_escalation: Mapped[str | None] = mapped_column(String(32))
    flags: Mapped[list[str]] = mapped_column(JSONType, default=list)
    refusal_trigger: Mapped[str | None] = mapped_column(String(32))
    integration_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("integrations.id"))
    ticket_id: Mapped[str | None] = mapped_column(String(200))
    requester_email: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(500))
    # Ticket text is kept only to screen it for pressure language and to show the agent.
    text: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verification_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    requests: Mapped[int] = mapped_column(Integer, default=1)
    # A suspension, a refusal or a reopening ends a round (state.end_round): evidence, verified
    # phones, an agent's video call and decided actions count only in the round stamped on them.
    round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # An escalated case nobody resumes or refuses expires (tenant `escalation_ttl_hours`).
    escalation_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Evidence(db.Model):  # type: ignore[name-defined]
    """One verification record on a case: what was checked, by whom, with which reference.
    Rejected attempts are kept too, so a reviewer sees what was tried."""

    __tablename__ = "evidence"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    type: Mapped[str] = mapped_column(String(40))
    accepted: Mapped[bool] = mapped_column()
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    rejection_reason: Mapped[str | None] = mapped_column(Text)
    recorded_by_type: Mapped[str] = mapped_column(String(16))
    recorded_by_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class VerificationCall(db.Model):  # type: ignore[name-defined]
    """A one-time code Rekey sends to a phone that predates the case (never a number from the
    ticket). The code is kept encrypted only until it is sent, and as a keyed digest to check."""

    __tablename__ = "verification_calls"
    __table_args__ = (
        # The hourly limits count calls per tenant and per agent (app/recovery/limits.py).
        Index("ix_verification_calls_tenant_created", "tenant_id", "created_at"),
        Index("ix_verification_calls_tenant_placed_by", "tenant_id", "placed_by", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    channel_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("channels.id"))
    method: Mapped[str] = mapped_column(String(8))  # voice | sms
    # pending -> sent -> verified | locked | expired; pending -> failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    code_digest: Mapped[str] = mapped_column(String(64))
    code_encrypted: Mapped[str | None] = mapped_column(String(300))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    placed_by: Mapped[str] = mapped_column(String(64))
    provider_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class CaseAction(db.Model):  # type: ignore[name-defined]
    """A destructive action decided on a case, carried out by a task: the state-machine row
    keyed by (case, action). `awaiting_approval` (two-person rule) and `scheduled` (cooldown)
    wait; `queued` runs; `done`, `cancelled` and `failed` are final."""

    __tablename__ = "case_actions"
    __table_args__ = (
        Index("ix_case_actions_due", "status", "execute_after"),
        # The stalled-work sweep reads exactly these, oldest first (closing.requeue_stalled).
        Index("ix_case_actions_queued", "status", "queued_at"),
        Index("ix_case_actions_delivery_state", "delivery_state", "done_at"),
        Index("ix_case_actions_sealed_until", "sealed_until"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    action: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(24))
    requested_by: Mapped[str] = mapped_column(String(64))
    requested_role: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    approved_by: Mapped[str | None] = mapped_column(String(64))
    approval_reason: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    execute_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When it last became `queued` (at once, after its approval, or when its cooldown ended).
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The secret it generated (codes, a temporary password): `pending` while sealed for its
    # delivery task, `sent`, or `failed` when the channel refused it for good.
    delivery_state: Mapped[str | None] = mapped_column(String(16))
    round: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # While the secret this action generated waits, sealed in `options`, for its delivery; it
    # is erased at this time if still undelivered (app/recovery/delivery.py).
    sealed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RecoveryLink(db.Model):  # type: ignore[name-defined]
    """A single-use link in a notification: `report` ("this wasn't me") or `cancel` (a
    scheduled reset). Only the SHA-256 of its random token is kept; the token itself is sealed
    (encrypted) until its notice is sent, then erased."""

    __tablename__ = "recovery_links"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    case_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    # The notice that carried it (`mfa.factor_admin_reset`, `reset.scheduled`, ...): its page
    # tells the user what happened. None on links issued before the pages existed.
    event: Mapped[str | None] = mapped_column(String(40))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    token_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CaseRequest(db.Model):  # type: ignore[name-defined]
    """One request (ticket) that opened or joined a case. A ticket, named by its integration and
    its id, opens at most one case ever (the unique index): a replayed ticket body under a new
    delivery id answers with that case instead of opening another. A joining request's text is
    kept to screen it like a new one; the follow-up comment goes to every ticket of the case."""

    __tablename__ = "case_requests"
    __table_args__ = (UniqueConstraint("integration_id", "ticket_id", name="uq_case_requests_ticket"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    case_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    integration_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("integrations.id"))
    ticket_id: Mapped[str | None] = mapped_column(String(200))
    joined: Mapped[bool] = mapped_column(default=False)
    requester_email: Mapped[str | None] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(500))
    text: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
