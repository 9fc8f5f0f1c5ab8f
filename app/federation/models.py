from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.extensions import UTCDateTime, db, new_id, utcnow


class IdentityProvider(db.Model):  # type: ignore[name-defined]
    """An OpenID provider a tenant's users sign in with (`rekey idp add`). The client secret is
    encrypted at rest like every other secret Rekey must read back (app/crypto.py)."""

    __tablename__ = "identity_providers"
    __table_args__ = (UniqueConstraint("tenant_id", "issuer"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))  # "Sign in with <name>"
    issuer: Mapped[str] = mapped_column(String(300))  # exactly as the ID tokens' `iss`
    client_id: Mapped[str] = mapped_column(String(300))
    client_secret_encrypted: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FederatedSignin(db.Model):  # type: ignore[name-defined]
    """One OpenID Connect authorization code flow. `purpose` is `evidence` (started from a
    single-use link an agent had sent to a channel on file, for one case) or `signin` (started
    from the tenant's federated sign-in page). Only digests of the link token and the `state`
    are kept; the link token is sealed until its message is sent, the `nonce` and the PKCE
    verifier until the callback, then each is erased."""

    __tablename__ = "federated_signins"
    __table_args__ = (Index("ix_federated_signins_tenant_created", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id"))
    provider_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("identity_providers.id"))
    purpose: Mapped[str] = mapped_column(String(16))  # evidence | signin
    case_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("recovery_cases.id"), index=True)
    round: Mapped[int | None] = mapped_column(Integer)  # the case's round the link was sent in
    channel_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("channels.id"))
    requested_by: Mapped[str | None] = mapped_column(String(64))  # the agent who sent the link
    link_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    link_sealed: Mapped[str | None] = mapped_column(Text)  # until the link's message is sent
    state_digest: Mapped[str | None] = mapped_column(String(64), unique=True)
    nonce_sealed: Mapped[str | None] = mapped_column(Text)
    verifier_sealed: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)  # the link was issued
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the link was used
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # verified | refused (why in `failure`) | failed (the provider answered an error)
    result: Mapped[str | None] = mapped_column(String(16))
    failure: Mapped[str | None] = mapped_column(String(300))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))  # who signed in
