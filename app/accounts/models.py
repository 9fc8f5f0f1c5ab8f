from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import UTCDateTime, db, new_id, utcnow


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    # Normalised (NFKC, lower-case) so that look-alike spellings cannot open a second account.
    email: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    external_id: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | suspended
    suspended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    privileged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when a recovery case was refused or suspected while the user had no factor left: a
    # sign-in without a factor is refused, and no factor can be enrolled, until a case of the
    # user is verified again (the recovery layer sets and clears it; see app/recovery/state.py).
    enrolment_closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    password: Mapped[PasswordIdentity | None] = relationship(back_populates="user", uselist=False)
    channels: Mapped[list[Channel]] = relationship(back_populates="user", order_by="Channel.added_at")
    factors: Mapped[list[MfaFactor]] = relationship(back_populates="user", order_by="MfaFactor.created_at")
    identities: Mapped[list[FederatedIdentity]] = relationship(back_populates="user")


class PasswordIdentity(db.Model):  # type: ignore[name-defined]
    __tablename__ = "password_identities"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    hash: Mapped[str] = mapped_column(String(200))
    must_change: Mapped[bool] = mapped_column(Boolean, default=False)
    # A temporary password issued by Rekey: single use and short-lived.
    temporary: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="password")


class FederatedIdentity(db.Model):  # type: ignore[name-defined]
    __tablename__ = "federated_identities"
    __table_args__ = (UniqueConstraint("tenant_id", "issuer", "subject"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    issuer: Mapped[str] = mapped_column(String(300))
    subject: Mapped[str] = mapped_column(String(300))
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="identities")


class Channel(db.Model):  # type: ignore[name-defined]
    """A contact channel on file: `email` or `phone` (E.164). `added_at` drives the channel-age
    check: a number added the day a case opens could be the attacker's."""

    __tablename__ = "channels"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(320))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A phone verified in a round that ended as a suspected attack (a SIM swap, perhaps): not
    # accepted for verification again until a senior admin marks it trusted, with a reason.
    compromised_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    compromised_case_id: Mapped[uuid.UUID | None] = mapped_column()

    user: Mapped[User] = relationship(back_populates="channels")


class MfaFactor(db.Model):  # type: ignore[name-defined]
    """An authenticator. Never deleted: a reset marks it removed, so the history of what was
    bound, when, and when it was invalidated survives (NIST 800-63B §4.1)."""

    __tablename__ = "mfa_factors"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="totp")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|active|removed
    secret_encrypted: Mapped[str] = mapped_column(String(500))
    # Highest TOTP time step accepted: a code is valid once (compare-and-set on this column).
    last_used_step: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enrolled_ip: Mapped[str | None] = mapped_column(String(64))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="factors")


class BackupCode(db.Model):  # type: ignore[name-defined]
    """One look-up secret. `lookup` is a short non-secret prefix of the code so a check is one
    indexed read and one argon2 verification, never ten."""

    __tablename__ = "backup_codes"
    __table_args__ = (Index("ix_backup_codes_user_lookup", "user_id", "lookup"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    batch_id: Mapped[uuid.UUID] = mapped_column()
    lookup: Mapped[str] = mapped_column(String(8))
    hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SigninAttempt(db.Model):  # type: ignore[name-defined]
    __tablename__ = "signin_attempts"
    __table_args__ = (
        Index("ix_signin_attempts_user_time", "user_id", "occurred_at"),
        Index("ix_signin_attempts_ip_time", "tenant_id", "ip", "occurred_at"),
        Index("ix_signin_attempts_email_time", "tenant_id", "email", "occurred_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    # The normalised email tried, known or not: the per-account throttle counts by it, so an
    # unknown account locks exactly like a real one and lockout reveals nothing.
    email: Mapped[str] = mapped_column(String(320))
    ip: Mapped[str | None] = mapped_column(String(64))
    # succeeded | mfa_required | bad_password | bad_factor | locked | suspended | enrolment_closed | unknown_user |
    # throttled (per IP) | busy (another attempt for the account in flight)
    result: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))  # password | totp | backup_code
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserSession(db.Model):  # type: ignore[name-defined]
    """A signed-in session. `scope` is `full`, or `restricted` (after a reset, a temporary
    password or a backup code during recovery: may only enrol factors and change the password)."""

    __tablename__ = "user_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="full")
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RememberedDevice(db.Model):  # type: ignore[name-defined]
    """A browser that may skip the second factor; a reset forgets every one of them."""

    __tablename__ = "remembered_devices"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Note(db.Model):  # type: ignore[name-defined]
    """A manual entry on a user's record (the runbook's refusal "Note"), also in the audit."""

    __tablename__ = "notes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    author_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id"))
    body: Mapped[str] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
