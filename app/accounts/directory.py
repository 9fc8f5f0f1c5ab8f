"""The built-in directory: the `Directory` seam over Rekey's own account tables.

It is the tenant's directory unless `rekey directory configure` chose an external one. A user's
`external_id` here is the local user id. Each method changes rows and flushes in the caller's
transaction, where the caller writes the audit event: for the built-in directory an effect and
its audit event still commit together (DESIGN.md). Nothing is deleted: a reset marks factors
removed, codes, sessions and remembered devices revoked.
"""

from __future__ import annotations

import secrets
import string
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update

from app.accounts.models import (
    BackupCode,
    MfaFactor,
    PasswordIdentity,
    RememberedDevice,
    SigninAttempt,
    User,
)
from app.accounts.services import backup_codes_remaining, revoke_sessions
from app.crypto import hash_password
from app.extensions import db, rows_changed, utcnow
from integrations.directory import (
    ContactChannel,
    DirectoryUser,
    Factor,
    IssuedSecret,
    PermanentDirectoryError,
    ResetResult,
    SigninRecord,
    UserDescription,
)
from integrations.directory.registry import BUILTIN, DirectoryConfig, register

TEMP_PASSWORD_LENGTH = 20
TEMP_PASSWORD_TTL = timedelta(hours=24)
_TEMP_ALPHABET = string.ascii_letters + string.digits
SIGNIN_HISTORY = 50


class BuiltinDirectory:
    """Users, factors and sessions in Rekey's own tables, for one tenant."""

    kind = BUILTIN

    def __init__(self, tenant_id: uuid.UUID):
        self.tenant_id = tenant_id

    def user(self, external_id: str) -> User:
        """The tenant's user with this id (locked rows are the caller's business)."""
        try:
            uid = uuid.UUID(str(external_id))
        except ValueError:
            raise PermanentDirectoryError(f"no such user {external_id!r}") from None
        user = db.session.get(User, uid)
        if user is None or user.tenant_id != self.tenant_id:
            raise PermanentDirectoryError(f"no such user {external_id!r}")
        return user

    @staticmethod
    def _public(user: User) -> DirectoryUser:
        return DirectoryUser(external_id=str(user.id), email=user.email, display_name=user.display_name,
                             suspended=user.status == "suspended")

    def find_user(self, *, email: str | None = None, external_id: str | None = None) -> DirectoryUser | None:
        if external_id is not None:
            try:
                return self._public(self.user(external_id))
            except PermanentDirectoryError:
                return None
        if email is None:
            return None
        user = db.session.scalars(select(User).where(User.tenant_id == self.tenant_id, User.email == email)).first()
        return self._public(user) if user is not None else None

    def describe(self, external_id: str) -> UserDescription:
        user = self.user(external_id)
        factors = tuple(Factor(reference=str(f.id), kind=f.kind, active=f.status == "active",
                               created_at=f.activated_at or f.created_at)
                        for f in user.factors if f.status == "active")
        channels = tuple(ContactChannel(kind=c.kind, value=c.value, added_at=c.added_at)
                         for c in user.channels if c.removed_at is None)
        attempts = db.session.scalars(select(SigninAttempt).where(SigninAttempt.user_id == user.id)
                                      .order_by(SigninAttempt.occurred_at.desc()).limit(SIGNIN_HISTORY)).all()
        signins = tuple(SigninRecord(at=a.occurred_at, outcome="success" if a.result == "succeeded" else "failure",
                                     ip=a.ip) for a in attempts)
        return UserDescription(user=self._public(user), factors=factors,
                               backup_codes_remaining=backup_codes_remaining(user.id), channels=channels,
                               federated=tuple((i.issuer, i.subject) for i in user.identities), signins=signins)

    def reset_factors(self, external_id: str) -> ResetResult:
        """One atomic reset: factors (TOTP and security keys), unused backup codes, sessions and
        remembered devices, in the caller's transaction; the details count each."""
        user = self.user(external_id)
        now = utcnow()
        removed = db.session.execute(update(MfaFactor).where(
            MfaFactor.user_id == user.id, MfaFactor.status.in_(("active", "pending"))
        ).values(status="removed", removed_at=now).returning(MfaFactor.id, MfaFactor.kind)
            .execution_options(synchronize_session=False)).all()
        kinds = [kind for _, kind in removed]
        codes = rows_changed(update(BackupCode).where(
            BackupCode.user_id == user.id, BackupCode.used_at.is_(None), BackupCode.revoked_at.is_(None)
        ).values(revoked_at=now).execution_options(synchronize_session=False))
        devices = self._forget_devices(user)
        sessions = revoke_sessions(user.id)
        db.session.expire(user)
        return ResetResult(removed=tuple(str(fid) for fid, _ in removed),
                           details={"factors_removed": len(kinds), "security_keys_removed": kinds.count("webauthn"),
                                    "backup_codes_revoked": codes or 0, "sessions_revoked": sessions,
                                    "devices_forgotten": devices})

    def issue_backup_codes(self, external_id: str, *, reference: str, count: int) -> IssuedSecret:
        """A fresh batch of ten replacing every unused code (the built-in set is always ten);
        the reference returned is the batch id."""
        from app.accounts.mfa import replace_backup_codes

        batch, codes = replace_backup_codes(self.user(external_id))
        return IssuedSecret(reference=str(batch), secrets=tuple(codes))

    def set_temporary_password(self, external_id: str, *, reference: str) -> IssuedSecret:
        """A single-use password for 24 hours, to be changed at the next sign-in; every session
        is revoked."""
        user = self.user(external_id)
        password = "".join(secrets.choice(_TEMP_ALPHABET) for _ in range(TEMP_PASSWORD_LENGTH))
        identity = user.password or PasswordIdentity(user=user, hash="")
        db.session.add(identity)
        identity.hash, identity.must_change, identity.temporary = hash_password(password), True, True
        identity.expires_at, identity.used_at, identity.set_at = utcnow() + TEMP_PASSWORD_TTL, None, utcnow()
        revoked = revoke_sessions(user.id)
        return IssuedSecret(reference=reference, secrets=(password,), expires_at=identity.expires_at,
                            details={"sessions_revoked": revoked})

    def withdraw_secret(self, external_id: str, *, kind: str, reference: str) -> None:
        """Make an issued secret that never reached its user useless: the unused codes of its
        batch, or a temporary password not yet used (optional: not part of the Protocol)."""
        user = self.user(external_id)
        if kind == "backup_codes":
            rows_changed(update(BackupCode).where(
                BackupCode.user_id == user.id, BackupCode.batch_id == uuid.UUID(reference),
                BackupCode.used_at.is_(None), BackupCode.revoked_at.is_(None)
            ).values(revoked_at=utcnow()).execution_options(synchronize_session=False))
            return
        identity = user.password
        if identity is not None and identity.temporary and identity.used_at is None:
            identity.expires_at = utcnow()

    def suspend(self, external_id: str) -> None:
        """Suspend: no sign-in; every session and remembered device revoked."""
        user = self.user(external_id)
        user.status, user.suspended_at = "suspended", utcnow()
        revoke_sessions(user.id)
        self._forget_devices(user)

    def reactivate(self, external_id: str) -> None:
        user = self.user(external_id)
        user.status, user.suspended_at = "active", None

    def revoke_sessions(self, external_id: str) -> bool:
        user = self.user(external_id)
        revoke_sessions(user.id)
        self._forget_devices(user)
        return True

    def enrolled_since(self, external_id: str, since: datetime) -> tuple[Factor, ...]:
        user = self.user(external_id)
        return tuple(Factor(reference=str(f.id), kind=f.kind, created_at=f.activated_at)
                     for f in user.factors
                     if f.status == "active" and f.activated_at is not None and f.activated_at >= since)

    @staticmethod
    def _forget_devices(user: User) -> int:
        return rows_changed(update(RememberedDevice).where(
            RememberedDevice.user_id == user.id, RememberedDevice.revoked_at.is_(None)
        ).values(revoked_at=utcnow()).execution_options(synchronize_session=False)) or 0


def _builtin(config: DirectoryConfig) -> BuiltinDirectory:
    return BuiltinDirectory(uuid.UUID(config.tenant_id))


register(BUILTIN, _builtin)
