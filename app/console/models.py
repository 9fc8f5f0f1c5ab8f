"""An agent's console credentials: a password set through a one-time invitation, second factors
(an authenticator app or a security key), browser sessions and sign-in attempts. All apart from
end users' tables: an agent is not a user, and an agent's email may also be a user's."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import JSONType, UTCDateTime, db, new_id, utcnow


class AgentPassword(db.Model):  # type: ignore[name-defined]
    """The agent's console password (argon2id)."""

    __tablename__ = "agent_passwords"

    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), primary_key=True)
    hash: Mapped[str] = mapped_column(String(255))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AgentInvitation(db.Model):  # type: ignore[name-defined]
    """A one-time link to set the console password: only a keyed digest of its token is kept."""

    __tablename__ = "agent_invitations"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AgentFactor(db.Model):  # type: ignore[name-defined]
    """An agent's second factor: `totp` (secret encrypted, last step used) or `webauthn` (the
    key's credential id and public key). Never deleted: a reset marks it removed."""

    __tablename__ = "agent_factors"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|active|removed
    secret_encrypted: Mapped[str | None] = mapped_column(String(500))
    last_used_step: Mapped[int] = mapped_column(BigInteger, default=0)
    credential_id: Mapped[bytes | None] = mapped_column(LargeBinary(1023), unique=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AgentSession(db.Model):  # type: ignore[name-defined]
    """A console browser session. `stage`: `password` (the password is proven, a second factor is
    owed), `enrol` (no factor yet: only enrolment), `full`. `second_factor_at` is when the agent
    last passed a second factor in it (sign-in or step-up); `challenge` the WebAuthn challenge
    this session asked for last (single use)."""

    __tablename__ = "agent_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    stage: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    second_factor_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    challenge: Mapped[bytes | None] = mapped_column(LargeBinary)
    challenge_ceremony: Mapped[str | None] = mapped_column(String(16))
    challenge_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AgentSigninAttempt(db.Model):  # type: ignore[name-defined]
    """Every console sign-in attempt, for the throttles; `tenant_id` is None when the form named
    no tenant we know (such a failure is logged and throttled, never audited)."""

    __tablename__ = "agent_signin_attempts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tenants.id"))
    agent_id: Mapped[uuid.UUID | None] = mapped_column()
    email: Mapped[str] = mapped_column(String(320), index=True)
    ip: Mapped[str | None] = mapped_column(String(64), index=True)
    result: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
