from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.extensions import JSONType, UTCDateTime, db, new_id, utcnow


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "email"),
                      Index("ix_users_directory_ref", "tenant_id", "directory_ref"))

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
    # Where the user lives (issue 11): `builtin`, or the kind of the tenant's external directory,
    # whose own id for the user is `directory_ref` (the row mirrors it so cases keep their key).
    directory_kind: Mapped[str] = mapped_column(String(32), default="builtin", server_default="builtin")
    directory_ref: Mapped[str | None] = mapped_column(String(200))

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
    # When Rekey first saw the channel in an external directory that keeps no date (issue 11):
    # `added_at` is then this (or a date an admin imported), so the channel-age rule still holds.
    first_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="channels")


class MfaFactor(db.Model):  # type: ignore[name-defined]
    """An authenticator: `totp`, or `webauthn` (a security key, its credential in
    `WebAuthnCredential`). Never deleted: a reset marks it removed, so the history of what was
    bound, when, and when it was invalidated survives (NIST 800-63B §4.1)."""

    __tablename__ = "mfa_factors"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="totp")
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|active|removed
    secret_encrypted: Mapped[str | None] = mapped_column(String(500))  # TOTP only
    # Highest TOTP time step accepted: a code is valid once (compare-and-set on this column).
    last_used_step: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enrolled_ip: Mapped[str | None] = mapped_column(String(64))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship(back_populates="factors")
    credential: Mapped[WebAuthnCredential | None] = relationship(back_populates="factor", uselist=False)


class WebAuthnCredential(db.Model):  # type: ignore[name-defined]
    """What a security key proved at registration, for its `webauthn` factor (whose row holds
    the key's life: created, removed). The public key is not secret; the private key never
    leaves the authenticator."""

    __tablename__ = "webauthn_credentials"

    factor_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("mfa_factors.id"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    # WebAuthn allows up to 1023 bytes; unique across tenants, as every RP must keep it.
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(1023), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # COSE_Key
    # The authenticator's signature counter: a value that does not grow betrays a clone.
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    transports: Mapped[list[str]] = mapped_column(JSONType, default=list)
    aaguid: Mapped[str] = mapped_column(String(36))  # the authenticator model (zeros: not told)
    label: Mapped[str] = mapped_column(String(64))
    user_verified: Mapped[bool] = mapped_column(Boolean, default=False)  # at registration
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)  # a synced passkey
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    factor: Mapped[MfaFactor] = relationship(back_populates="credential")


class PendingSignin(db.Model):  # type: ignore[name-defined]
    """A sign-in whose password step passed and whose second factor is still owed. Only a
    digest of its token is kept; it works once, for a few minutes, for this user and tenant."""

    __tablename__ = "pending_signins"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    email: Mapped[str] = mapped_column(String(320))  # as tried: the lockout counts by it
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    ip: Mapped[str | None] = mapped_column(String(64))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebAuthnChallenge(db.Model):  # type: ignore[name-defined]
    """One WebAuthn ceremony's challenge: single use, short-lived, and bound to what asked for
    it: the user's session (registration) or the pending sign-in (authentication)."""

    __tablename__ = "webauthn_challenges"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    ceremony: Mapped[str] = mapped_column(String(16))  # registration | authentication
    session_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("user_sessions.id"), index=True)
    pending_signin_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("pending_signins.id", ondelete="CASCADE"), index=True)
    challenge: Mapped[bytes] = mapped_column(LargeBinary(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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
    method: Mapped[str] = mapped_column(String(16))  # password | totp | backup_code | webauthn
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UserSession(db.Model):  # type: ignore[name-defined]
    """A signed-in session. `scope` is `full`, or `restricted` (after a reset, a temporary
    password or a backup code during recovery: may only enrol factors and change the password).
    `kind` is `api` (a bearer token) or `browser` (an opaque cookie, with an idle timeout from
    `last_seen_at`); a reset or a suspension revokes both kinds."""

    __tablename__ = "user_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="full")
    kind: Mapped[str] = mapped_column(String(16), default="api", server_default="api")
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
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
