"""Sign-in: the password, then a second factor (a TOTP code, a backup code or a security key),
with per-account and per-IP throttling.

Two doors, one mechanism. `sign_in` takes everything in one call (`POST /v1/auth/signin`);
`begin_sign_in` checks the password and, when a factor is owed, hands out a pending sign-in
that `complete_sign_in` (a code) or `complete_sign_in_with_key` (a security key) finishes. Both
pass the same throttles, checks, records and audit events, step by step.

Every attempt is recorded with its IP. Unknown accounts, wrong passwords and wrong codes get
the same answer and cost the same argon2 work, and the per-account lock counts by the email
tried, so lockout does not reveal whether an account exists either. The password step of the
two-step sign-in answers an unknown account exactly as a wrong password (401): a pending
sign-in, and the list of an account's methods, go only to someone who knows its password.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from flask import current_app
from sqlalchemy import delete, func, select, text

from app.accounts import security_keys
from app.accounts.hooks import recovery
from app.accounts.mfa import EnrolmentClosed, consume_backup_code, consume_totp, is_spent_totp
from app.accounts.models import PasswordIdentity, PendingSignin, SigninAttempt, User, WebAuthnChallenge
from app.accounts.services import (
    active_factors,
    backup_codes_remaining,
    find_user_by_email,
    normalize_email,
    open_session,
)
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import new_token, token_digest, verify_password
from app.errors import Forbidden, RateLimited, Unauthenticated, ValidationFailed
from app.extensions import db, rows_changed, utcnow
from app.tenants.models import Tenant

# A pending sign-in lives as long as a WebAuthn challenge, and a few wrong codes end it (each
# also counts toward the account's lockout): a new password step is needed to keep guessing.
PENDING_TTL = timedelta(minutes=5)
PENDING_MAX_FAILURES = 3
_FAILURES = ("bad_password", "bad_factor", "unknown_user")


class InvalidCredentials(Unauthenticated):
    code = "invalid_credentials"
    keep_changes = True  # the failed attempt and its audit row must survive the refusal


class AccountLocked(RateLimited):
    code = "account_locked"
    keep_changes = True


class AccountSuspended(Forbidden):
    code = "account_suspended"
    keep_changes = True


class SigninExpired(Unauthenticated):
    code = "signin_expired"
    keep_changes = True  # a pending sign-in found spent by a password change stays spent


@dataclass(frozen=True)
class SigninResult:
    status: str  # ok | mfa_required | enrolment_required | password_change_required
    token: str | None = None
    user: User | None = None
    # The two-step sign-in's first step, when a factor is owed: the pending sign-in's token
    # (shown once), the methods the account has, and seconds until it expires.
    pending_token: str | None = None
    methods: tuple[str, ...] = ()
    expires_in: int | None = None


def _record(tenant: Tenant, email: str, user: User | None, ip: str | None, result: str,
            method: str) -> None:
    db.session.add(SigninAttempt(tenant_id=tenant.id, user_id=user.id if user else None,
                                 email=email, ip=ip, result=result, method=method,
                                 occurred_at=utcnow()))
    db.session.flush()


def _retry_after_for_ip(tenant: Tenant, ip: str | None) -> int | None:
    settings = current_app.extensions["rekey.settings"]
    if ip is None:
        return None
    since = utcnow() - timedelta(seconds=settings.ip_window_seconds)
    failures = db.session.scalar(
        select(func.count()).select_from(SigninAttempt).where(
            SigninAttempt.tenant_id == tenant.id, SigninAttempt.ip == ip,
            SigninAttempt.occurred_at >= since, SigninAttempt.result.in_(_FAILURES),
        )
    ) or 0
    return settings.ip_window_seconds if failures >= settings.ip_max_failures else None


def _retry_after_for_account(tenant: Tenant, email: str) -> int | None:
    """Seconds until the account unlocks, if `signin_max_failures` consecutive failures fell
    within the lockout window."""
    settings = current_app.extensions["rekey.settings"]
    now = utcnow()
    window_start = now - timedelta(seconds=settings.signin_lockout_seconds)
    last_success = db.session.scalar(
        select(func.max(SigninAttempt.occurred_at)).where(
            SigninAttempt.tenant_id == tenant.id, SigninAttempt.email == email,
            SigninAttempt.result == "succeeded",
        )
    )
    since = max(window_start, last_success) if last_success else window_start
    recent = db.session.scalars(
        select(SigninAttempt.occurred_at).where(
            SigninAttempt.tenant_id == tenant.id, SigninAttempt.email == email,
            SigninAttempt.occurred_at > since, SigninAttempt.result.in_(_FAILURES),
        ).order_by(SigninAttempt.occurred_at.desc()).limit(settings.signin_max_failures)
    ).all()
    if len(recent) < settings.signin_max_failures:
        return None
    unlock = recent[-1] + timedelta(seconds=settings.signin_lockout_seconds)
    return max(1, int((unlock - now).total_seconds()))


def _claim_account(tenant: Tenant, email: str) -> bool:
    """One sign-in per account (known or not) at a time, until this transaction ends, so the
    failure count read next is the true one: without it, N parallel guesses all read "below
    the limit" and the lockout admits N guesses per window instead of `signin_max_failures`.
    A second attempt in flight is refused at once rather than queued, so a flood aimed at one
    account cannot hold workers and database connections waiting on the lock."""
    if db.session.get_bind().dialect.name != "postgresql":
        return True  # SQLite is development only; it has no advisory locks
    digest = hashlib.sha256(f"rekey.signin\x00{tenant.id}\x00{email}".encode()).digest()
    return bool(db.session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"),
                                  {"key": int.from_bytes(digest[:8], "big", signed=True)}))


def _fail(tenant: Tenant, email: str, user: User | None, actor: Actor, result: str,
          method: str, **facts: Any) -> InvalidCredentials:
    _record(tenant, email, user, actor.ip, result, method)
    if user is not None:
        record_event(actor, AuditAction.SIGNIN_FAILED, tenant_id=tenant.id, target_user_id=user.id,
                     details={"result": result, "method": method, **facts})
        if _retry_after_for_account(tenant, email) is not None:
            limit = current_app.extensions["rekey.settings"].signin_max_failures
            record_event(actor, AuditAction.ACCOUNT_LOCKED, tenant_id=tenant.id,
                         target_user_id=user.id, details={"after_failures": limit})
    return InvalidCredentials("The email, password or code is not correct.")


def _guard(tenant: Tenant, email: str, user: User | None, actor: Actor, method: str) -> None:
    """The checks every step passes first: one attempt per account at a time, then the per-IP
    and per-account limits."""
    if not _claim_account(tenant, email):
        _record(tenant, email, user, actor.ip, "busy", method)
        raise RateLimited("Another sign-in for this account is in progress; retry.", retry_after=1,
                          keep_changes=True)
    retry = _retry_after_for_ip(tenant, actor.ip)
    if retry is not None:
        _record(tenant, email, user, actor.ip, "throttled", method)
        raise RateLimited("Too many failed sign-ins from this address.", retry_after=retry,
                          keep_changes=True)
    retry = _retry_after_for_account(tenant, email)
    if retry is not None:
        _record(tenant, email, user, actor.ip, "locked", method)
        raise AccountLocked("Too many failed sign-ins for this account; try again later.",
                            retry_after=retry)


def _password_usable(identity: PasswordIdentity) -> bool:
    # A temporary password works once, and only until it expires.
    return not identity.temporary or (
        identity.used_at is None and (identity.expires_at is None or identity.expires_at > utcnow()))


def _require_active(tenant: Tenant, email: str, user: User, actor: Actor, method: str) -> None:
    if user.status != "active":
        _record(tenant, email, user, actor.ip, "suspended", method)
        record_event(actor, AuditAction.SIGNIN_FAILED, tenant_id=tenant.id, target_user_id=user.id,
                     details={"result": "suspended", "method": method})
        raise AccountSuspended("This account is suspended; contact support.")


def _check_password(tenant: Tenant, actor: Actor, email: str, password: str,
                    method: str) -> tuple[User, PasswordIdentity]:
    """The password step: throttles, then the password (the same work for an unknown account)."""
    # Looked up before the throttle so a refused attempt still shows on the user's record (the
    # agent's sign-in activity, the risk screen); the lookup costs the same for unknown emails.
    user = find_user_by_email(tenant.id, email)
    _guard(tenant, email, user, actor, method)
    identity = user.password if user else None
    password_ok = verify_password(identity.hash if identity else None, password)
    if user is None or identity is None or not password_ok or not _password_usable(identity):
        result = "unknown_user" if user is None else "bad_password"
        raise _fail(tenant, email, user, actor, result, method)
    _require_active(tenant, email, user, actor, method)
    if user.enrolment_closed_at is not None and not active_factors(user):
        # A recovery case was refused or suspected after the reset left no factor: the password
        # (or codes issued in that round) must not open an enrolment until a case is verified.
        _record(tenant, email, user, actor.ip, "enrolment_closed", method)
        record_event(actor, AuditAction.SIGNIN_FAILED, tenant_id=tenant.id, target_user_id=user.id,
                     details={"result": "enrolment_closed", "method": method})
        raise EnrolmentClosed("This account cannot sign in without a factor until support verifies you again.")
    return user, identity


def _factor_owed(user: User) -> bool:
    return bool(active_factors(user)) or backup_codes_remaining(user.id) > 0


def methods_of(user: User) -> tuple[str, ...]:
    """The second factors the account can sign in with, by name."""
    kinds = {f.kind for f in active_factors(user)}
    methods: list[str] = [kind for kind in ("totp", "webauthn") if kind in kinds]
    if backup_codes_remaining(user.id):
        methods.append("backup_code")
    return tuple(methods)


def _check_code(tenant: Tenant, email: str, user: User, actor: Actor, method: str, *,
                otp: str | None, backup_code: str | None) -> None:
    totps = [f for f in active_factors(user) if f.kind == "totp"]
    if otp and not any(consume_totp(f, otp) for f in totps):
        for factor in totps:
            if is_spent_totp(factor, otp):  # someone holds a code already used: log the replay
                record_event(actor, AuditAction.TOTP_REPLAY_REFUSED, tenant_id=tenant.id,
                             target_user_id=user.id, details={"factor_id": str(factor.id)})
        raise _fail(tenant, email, user, actor, "bad_factor", method)
    if backup_code and not consume_backup_code(user, backup_code):
        raise _fail(tenant, email, user, actor, "bad_factor", method)


def _open(tenant: Tenant, email: str, user: User, identity: PasswordIdentity, actor: Actor,
          method: str, *, session_kind: str = "api", **facts: Any) -> SigninResult:
    """The credentials are proven: say what the user must do next and open the session."""
    # From here the events are the user's own acts.
    actor = replace(actor, type="user", id=str(user.id))
    if method == "backup_code":
        record_event(actor, AuditAction.BACKUP_CODE_USED, tenant_id=tenant.id,
                     target_user_id=user.id, details={"remaining": backup_codes_remaining(user.id)})
    if identity.temporary:
        identity.used_at = utcnow()
    if identity.must_change:
        status = "password_change_required"
    elif not active_factors(user):
        # After a reset (or before a first enrolment) the password alone only opens enrolment.
        status = "enrolment_required"
    elif method == "backup_code" and recovery().in_recovery(user):
        # Runbook step 2: a backup-code sign-in during a recovery only opens re-enrolment.
        status = "enrolment_required"
    else:
        status = "ok"
    scope = "full" if status == "ok" else "restricted"
    token = open_session(user, scope=scope, ip=actor.ip, kind=session_kind)
    _record(tenant, email, user, actor.ip, "succeeded", method)
    record_event(actor, AuditAction.SIGNIN_SUCCEEDED, tenant_id=tenant.id, target_user_id=user.id,
                 details={"method": method, "status": status, "session_scope": scope, **facts})
    return SigninResult(status=status, token=token, user=user)


def sign_in(tenant: Tenant, actor: Actor, *, email: str, password: str, otp: str | None = None,
            backup_code: str | None = None, session_kind: str = "api") -> SigninResult:
    """Check the credentials and say what the user must do next; opens a session when allowed
    (`session_kind="browser"` for a sign-in page: the token then goes in a cookie)."""
    if otp and backup_code:
        raise ValidationFailed("Give either otp or backup_code, not both.")
    method = "totp" if otp else "backup_code" if backup_code else "password"
    email = normalize_email(email)
    user, identity = _check_password(tenant, actor, email, password, method)
    if _factor_owed(user) and not (otp or backup_code):
        _record(tenant, email, user, actor.ip, "mfa_required", method)
        return SigninResult(status="mfa_required", user=user)
    _check_code(tenant, email, user, actor, method, otp=otp, backup_code=backup_code)
    return _open(tenant, email, user, identity, actor, method, session_kind=session_kind)


# --- the two-step sign-in -------------------------------------------------------------------


def begin_sign_in(tenant: Tenant, actor: Actor, *, email: str, password: str,
                  session_kind: str = "api") -> SigninResult:
    """The password step: a session when no factor is owed, else a pending sign-in and the
    account's methods."""
    email = normalize_email(email)
    user, identity = _check_password(tenant, actor, email, password, "password")
    if not _factor_owed(user):
        return _open(tenant, email, user, identity, actor, "password", session_kind=session_kind)
    _record(tenant, email, user, actor.ip, "mfa_required", "password")
    token, now = new_token("rk_pend"), utcnow()
    db.session.add(PendingSignin(tenant_id=tenant.id, user_id=user.id, email=email, digest=token_digest(token),
                                 ip=actor.ip, created_at=now, expires_at=now + PENDING_TTL))
    db.session.flush()
    return SigninResult(status="mfa_required", user=user, pending_token=token, methods=methods_of(user),
                        expires_in=int(PENDING_TTL.total_seconds()))


def _pending(tenant: Tenant, token: str) -> PendingSignin:
    row = db.session.scalars(select(PendingSignin).where(
        PendingSignin.digest == token_digest(token), PendingSignin.tenant_id == tenant.id
    ).with_for_update()).first()
    if row is None or row.used_at is not None or row.expires_at <= utcnow():
        # Unknown, used, expired or another tenant's: one answer.
        raise SigninExpired("This sign-in expired or was already used; start again with your password.")
    return row


def _resume(tenant: Tenant, actor: Actor, token: str, method: str) -> tuple[PendingSignin, User, PasswordIdentity]:
    """The second step's start: the pending sign-in, the same throttles as any attempt, and the
    account still as the password step found it."""
    pending = _pending(tenant, token)
    user = db.session.get(User, pending.user_id)
    assert user is not None
    _guard(tenant, pending.email, user, actor, method)
    _require_active(tenant, pending.email, user, actor, method)
    identity = user.password
    if identity is None or identity.set_at > pending.created_at or not _password_usable(identity):
        # The password this sign-in proved was changed, reset or spent since: prove it again.
        pending.used_at = utcnow()
        raise SigninExpired("The password changed since this sign-in began; start again.")
    return pending, user, identity


def _count_failure(pending: PendingSignin) -> None:
    pending.failures += 1
    if pending.failures >= PENDING_MAX_FAILURES:
        pending.used_at = utcnow()


def complete_sign_in(tenant: Tenant, actor: Actor, *, pending_token: str, otp: str | None = None,
                     backup_code: str | None = None, session_kind: str = "api") -> SigninResult:
    """The second step with a TOTP code or a backup code; opens the session."""
    if bool(otp) == bool(backup_code):
        raise ValidationFailed("Give either otp or backup_code.")
    method = "totp" if otp else "backup_code"
    pending, user, identity = _resume(tenant, actor, pending_token, method)
    try:
        _check_code(tenant, pending.email, user, actor, method, otp=otp, backup_code=backup_code)
    except InvalidCredentials:
        _count_failure(pending)
        raise
    pending.used_at = utcnow()
    return _open(tenant, pending.email, user, identity, actor, method, two_step=True, session_kind=session_kind)


def key_options(tenant: Tenant, actor: Actor, *, pending_token: str) -> dict[str, Any]:
    """The WebAuthn request options for a pending sign-in (its account's keys only)."""
    pending = _pending(tenant, pending_token)
    user = db.session.get(User, pending.user_id)
    assert user is not None
    _guard(tenant, pending.email, user, actor, "webauthn")  # a locked account gets no challenge
    return security_keys.assertion_options(user, pending.id)


def complete_sign_in_with_key(tenant: Tenant, actor: Actor, *, pending_token: str,
                              credential: dict[str, Any], session_kind: str = "api") -> SigninResult:
    """The second step with a security key's assertion; opens the session."""
    pending, user, identity = _resume(tenant, actor, pending_token, "webauthn")
    try:
        factor, user_verified = security_keys.check_assertion(actor, user, pending.id, credential)
    except security_keys.SecurityKeyError as exc:
        _count_failure(pending)
        raise _fail(tenant, pending.email, user, actor, "bad_factor", "webauthn", problem=exc.problem) from exc
    pending.used_at = utcnow()
    return _open(tenant, pending.email, user, identity, actor, "webauthn", two_step=True,
                 session_kind=session_kind, factor_id=str(factor.id), user_verified=user_verified)


PURGE_AFTER = timedelta(hours=1)


def purge_expired() -> int:
    """Forget pending sign-ins and WebAuthn challenges an hour past their expiry (the attempts
    and the audit trail keep what happened); how many rows went."""
    cutoff = utcnow() - PURGE_AFTER
    gone = rows_changed(delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < cutoff))
    return gone + rows_changed(delete(PendingSignin).where(PendingSignin.expires_at < cutoff))


def pending_methods(tenant: Tenant, pending_token: str) -> tuple[str, ...]:
    """The second factors a live pending sign-in may finish with (the sign-in page's step 2);
    `SigninExpired` when it is unknown, used, expired or another tenant's."""
    pending = _pending(tenant, pending_token)
    user = db.session.get(User, pending.user_id)
    assert user is not None
    return methods_of(user)
