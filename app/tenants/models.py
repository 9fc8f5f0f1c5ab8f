from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, new_id, utcnow
from integrations.directory.registry import DirectoryConfig

ROLES = ("support_agent", "senior_admin")

# Tenant policy and risk thresholds; a tenant's `settings` overrides any of them.
DEFAULT_TENANT_SETTINGS: dict[str, Any] = {
    "unusual_activity_failed_signins": 5,
    "unusual_activity_window_hours": 24,
    "recent_channel_change_days": 30,
    "repeat_recovery_days": 30,
    "privileged_requires_two_evidence_types": True,
    "strict_two_evidence_types": False,
    "verification_ttl_hours": 72,
    # An escalated case that no senior admin resumes or refuses expires this long after the
    # escalation (the senior admins are told).
    "escalation_ttl_hours": 72,
    "reset_cooldown_hours": 0,
    "allow_temporary_access_pass": False,
    # SMS pumping (issue 8, item 10): verification calls placed per hour, by case and by agent,
    # and verification codes sent per hour in the whole tenant (texts and voice calls alike).
    "verification_calls_per_case_per_hour": 3,
    "verification_calls_per_agent_per_hour": 20,
    "verification_texts_per_tenant_per_hour": 200,
    # The IANA zone whose calendar day "before today" means in the channel-age rule.
    "time_zone": "UTC",
    # Whether an agent's API token (which has no second factor) may take a destructive action
    # (force reset, temporary password, admin backup codes, suspend, approve); the console always
    # needs a recent step-up for them.
    "destructive_actions_by_token": True,
}


class Tenant(db.Model):  # type: ignore[name-defined]
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def setting(self, name: str) -> Any:
        return (self.settings or {}).get(name, DEFAULT_TENANT_SETTINGS[name])

    def directory_config(self) -> DirectoryConfig:
        """Where the tenant's users and factors live (integrations/directory/registry.py): the
        built-in directory unless `rekey directory configure` chose another; the token opened."""
        row = db.session.get(TenantDirectory, self.id)
        if row is None:
            return DirectoryConfig(tenant_id=str(self.id))
        from app.crypto import decrypt

        return DirectoryConfig(tenant_id=str(self.id), kind=row.kind, url=row.url or "", realm=row.realm or "",
                               token=decrypt(row.token_encrypted) if row.token_encrypted else "",
                               options=dict(row.options or {}))

    @property
    def directory_kind(self) -> str:
        row = db.session.get(TenantDirectory, self.id)
        return row.kind if row is not None else "builtin"


class Agent(db.Model):  # type: ignore[name-defined]
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The agent's own employee id in the HR system, when they also have a user account: the
    # own-account check compares it with the user's (`User.external_id`).
    external_id: Mapped[str | None] = mapped_column(String(200))


class AgentIdentity(db.Model):  # type: ignore[name-defined]
    """A federated subject (issuer and `sub`) that is the agent's: an agent linked to a user by
    one may not act on that user's recovery."""

    __tablename__ = "agent_identities"
    __table_args__ = (UniqueConstraint("tenant_id", "issuer", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(300))
    subject: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgentToken(db.Model):  # type: ignore[name-defined]
    """An agent's API token: only its keyed digest is stored; the token is shown once."""

    __tablename__ = "agent_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TenantDirectory(db.Model):  # type: ignore[name-defined]
    """The tenant's directory when it is not the built-in one (issue 11): its kind, where it is,
    and the service token, encrypted at rest like every other secret (configuring again rotates it)."""

    __tablename__ = "tenant_directories"

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    url: Mapped[str | None] = mapped_column(String(500))
    realm: Mapped[str | None] = mapped_column(String(200))
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    token_encrypted: Mapped[str | None] = mapped_column(String(4000))
    token_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the last `rekey directory sync` (or the beat task) mirrored the tenant's users.
    synced_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
