from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, new_id

GENESIS_HASH = "0" * 64


class AuditAction(StrEnum):
    """Every audit action. Grammar: `<domain>.<object>_<past-tense verb>` or
    `<domain>.<past-tense verb>`, lower snake case; names follow the runbook
    (`mfa.factor_admin_reset`, `user.password_set_by_admin`, `mfa.factor_enrolled`)."""

    SIGNIN_SUCCEEDED = "auth.signin_succeeded"
    SIGNIN_FAILED = "auth.signin_failed"
    ACCOUNT_LOCKED = "auth.account_locked"
    FACTOR_ENROLLED = "mfa.factor_enrolled"
    FACTOR_ADMIN_RESET = "mfa.factor_admin_reset"
    FACTOR_REMOVED = "mfa.factor_removed"
    FACTOR_RENAMED = "mfa.factor_renamed"
    # A security key's signature counter did not grow: two authenticators hold one key.
    KEY_CLONE_SUSPECTED = "mfa.key_clone_suspected"
    TOTP_REPLAY_REFUSED = "mfa.totp_replay_refused"
    BACKUP_CODES_GENERATED = "mfa.backup_codes_generated"
    BACKUP_CODE_USED = "mfa.backup_code_used"
    PASSWORD_CHANGED = "user.password_changed"
    PASSWORD_SET_BY_ADMIN = "user.password_set_by_admin"
    USER_CREATED = "user.created"
    USER_SUSPENDED = "user.suspended"
    USER_NOTIFIED = "user.notified"
    NOTE_ADDED = "note.added"
    TENANT_CREATED = "tenant.created"
    AGENT_CREATED = "agent.created"
    AUDIT_EXPORTED = "audit.exported"
    INTEGRATION_CREATED = "integration.created"
    INTEGRATION_SECRET_ROTATED = "integration.secret_rotated"
    SECURITY_INCIDENT_OPENED = "security.incident_opened"
    RECOVERY_REQUESTED = "recovery.requested"
    RECOVERY_SCREENED = "recovery.screened"
    RECOVERY_ESCALATED = "recovery.escalated"
    RECOVERY_REFUSED = "recovery.refused"
    RECOVERY_RESUMED = "recovery.resumed"
    RECOVERY_REOPENED = "recovery.reopened"
    RECOVERY_EXPIRED = "recovery.expired"
    RECOVERY_EVIDENCE_RECORDED = "recovery.evidence_recorded"
    RECOVERY_EVIDENCE_REJECTED = "recovery.evidence_rejected"
    RECOVERY_VERIFICATION_CALL_PLACED = "recovery.verification_call_placed"
    RECOVERY_VERIFICATION_CALL_FAILED = "recovery.verification_call_failed"
    RECOVERY_VERIFICATION_CALL_LIMITED = "recovery.verification_call_limited"
    RECOVERY_VERIFIED = "recovery.verified"
    RECOVERY_VERIFICATION_CODE_REJECTED = "recovery.verification_code_rejected"
    RECOVERY_SENIOR_ADMINS_NOTIFIED = "recovery.senior_admins_notified"
    RECOVERY_APPROVAL_REQUESTED = "recovery.approval_requested"
    RECOVERY_ACTION_APPROVED = "recovery.action_approved"
    RECOVERY_ACTION_QUEUED = "recovery.action_queued"
    RECOVERY_ACTION_CANCELLED = "recovery.action_cancelled"
    RECOVERY_SECRET_DELIVERY_FAILED = "recovery.secret_delivery_failed"
    RECOVERY_RESET_SCHEDULED = "recovery.reset_scheduled"
    RECOVERY_RECOVERED = "recovery.recovered"
    RECOVERY_FOLLOW_UP_REQUESTED = "recovery.follow_up_requested"
    RECOVERY_FOLLOW_UP_SENT = "recovery.follow_up_sent"
    RECOVERY_TICKET_COMMENTED = "recovery.ticket_commented"
    RECOVERY_CLOSED = "recovery.closed"
    RECOVERY_REPORTED_NOT_ME = "recovery.reported_not_me"
    RECOVERY_RESET_CANCELLED = "recovery.reset_cancelled"
    USER_REACTIVATED = "user.reactivated"
    USER_CHANNEL_TRUSTED = "user.channel_trusted"
    USER_ENROLMENT_CLOSED = "user.enrolment_closed"
    USER_ENROLMENT_REOPENED = "user.enrolment_reopened"
    RECOVERY_ACTION_SCHEDULED = "recovery.action_scheduled"
    RECOVERY_SECRET_DELIVERED = "recovery.secret_delivered"
    RECOVERY_SECRET_DISCARDED = "recovery.secret_discarded"
    RECOVERY_SECRET_EXPIRED = "recovery.secret_expired"
    TASK_DEAD_LETTERED = "task.dead_lettered"
    # Federated sign-in (OpenID Connect): a tenant's identity providers, the link an agent sends,
    # and each sign-in Rekey observed or refused.
    IDENTITY_PROVIDER_ADDED = "tenant.identity_provider_added"
    RECOVERY_FEDERATED_LINK_SENT = "recovery.federated_link_sent"
    FEDERATED_SIGNIN_REFUSED = "auth.federated_signin_refused"
    # The agent console (issue 10): agents' own credentials.
    AGENT_INVITED = "agent.invited"
    AGENT_PASSWORD_SET = "agent.password_set"
    AGENT_FACTOR_ENROLLED = "agent.factor_enrolled"
    AGENT_MFA_RESET = "agent.mfa_reset"
    AGENT_SESSIONS_REVOKED = "agent.sessions_revoked"
    AGENT_LOCKED = "agent.locked"
    TENANT_DIRECTORY_CONFIGURED = "tenant.directory_configured"
    RECOVERY_ACTION_FAILED = "recovery.action_failed"
    RECOVERY_ACTION_RETRIED = "recovery.action_retried"
    USER_CHANNEL_DATES_IMPORTED = "user.channel_dates_imported"
    DIRECTORY_USER_SUSPENDED = "directory.user_suspended"
    DIRECTORY_SYNCED = "directory.synced"


class AuditEvent(db.Model):  # type: ignore[name-defined]
    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "seq"),
        Index("ix_audit_events_tenant_action", "tenant_id", "action", "occurred_at"),
        Index("ix_audit_events_tenant_user", "tenant_id", "target_user_id"),
        Index("ix_audit_events_tenant_case", "tenant_id", "case_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    seq: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target_user_id: Mapped[uuid.UUID | None] = mapped_column()
    case_id: Mapped[uuid.UUID | None] = mapped_column()
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(db.Model):  # type: ignore[name-defined]
    """The tip of a tenant's chain. Writers lock this row, so the chain cannot fork and `seq`
    has no gaps; `audit verify` also compares it with the last row to catch a cut-off tail."""

    __tablename__ = "audit_heads"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
