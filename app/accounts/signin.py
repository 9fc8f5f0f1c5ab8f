"""Sign-in: password, then TOTP or a backup code, with per-account and per-IP throttling.

Every attempt is recorded with its IP. Unknown accounts, wrong passwords and wrong codes get
the same answer and cost the same argon2 work, and the per-account lock counts by the email
tried, so lockout does not reveal whether an account exists either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select, text

from app.accounts.hooks import recovery
from app.accounts.mfa import EnrolmentClosed, consume_backup_code, consume_totp, is_spent_totp
from app.accounts.models import SigninAttempt, User
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
from app.crypto import verify_password
from app.errors import Forbidden, RateLimited, Unauthenticated, ValidationFailed
from app.extensions import db, utcnow
from app.tenants.models import Tenant

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


@dataclass(frozen=True)
class SigninResult:
    status: str  # ok | mfa_required | enrolment_required | password_change_required
    token: str | None = None
    user: User | None = None


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
          method: str) -> InvalidCredentials:
    _record(tenant, email, user, actor.ip, result, method)
    if user is not None:
        record_event(actor, AuditAction.SIGNIN_FAILED, tenant_id=tenant.id, target_user_id=user.id,
                     details={"result": result, "method": method})
        if _retry_after_for_account(tenant, email) is not None:
            limit = current_app.extensions["rekey.settings"].signin_max_failures
            record_event(actor, AuditAction.ACCOUNT_LOCKED, tenant_id=tenant.id,
                         target_user_id=user.id, details={"after_failures": limit})
    return InvalidCredentials("The email, password or code is not correct.")


def sign_in(tenant: Tenant, actor: Actor, *, email: str, password: str, otp: str | None = None,
            backup_code: str | None = None) -> SigninResult:
    """Check the credentials and say what the user must do next; opens a session when allowed."""
    if otp and backup_code:
        raise ValidationFailed("Give either otp or backup_code, not both.")
    method = "totp" if otp else "backup_code" if backup_code else "password"
    email = normalize_email(email)
    # Looked up before the throttle so a refused attempt still shows on the user's record (the
    # agent's sign-in activity, the risk screen); the lookup costs the same for unknown emails.
    user = find_user_by_email(tenant.id, email)
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

    identity = user.password if user else None
    password_ok = verify_password(identity.hash if identity else None, password)
    if identity is not None and identity.temporary and (
        identity.used_at is not None
        or (identity.expires_at is not None and identity.expires_at <= utcnow())
    ):
        password_ok = False  # a temporary password works once, and only until it expires
    if user is None or not password_ok:
        result = "unknown_user" if user is None else "bad_password"
        raise _fail(tenant, email, user, actor, result, method)
    if user.status != "active":
        _record(tenant, email, user, actor.ip, "suspended", method)
        record_event(actor, AuditAction.SIGNIN_FAILED, tenant_id=tenant.id, target_user_id=user.id,
                     details={"result": "suspended", "method": method})
        raise AccountSuspended("This account is suspended; contact support.")

    factors = active_factors(user)
    if user.enrolment_closed_at is not None and not factors:
        # A recovery case was refused or suspected after the reset left no factor: the password
        # (or codes issued in that round) must not open an enrolment until a case is verified.
        _record(tenant, email, user, actor.ip, "enrolment_closed", method)
        record_event(actor, AuditAction.SIGNIN_FAILED, tenant_id=tenant.id, target_user_id=user.id,
                     details={"result": "enrolment_closed", "method": method})
        raise EnrolmentClosed("This account cannot sign in without a factor until support verifies you again.")
    codes_left = backup_codes_remaining(user.id)
    if (factors or codes_left) and not (otp or backup_code):
        _record(tenant, email, user, actor.ip, "mfa_required", method)
        return SigninResult(status="mfa_required", user=user)
    if otp and not any(consume_totp(f, otp) for f in factors):
        for factor in factors:
            if is_spent_totp(factor, otp):  # someone holds a code already used: log the replay
                record_event(actor, AuditAction.TOTP_REPLAY_REFUSED, tenant_id=tenant.id,
                             target_user_id=user.id, details={"factor_id": str(factor.id)})
        raise _fail(tenant, email, user, actor, "bad_factor", method)
    if backup_code and not consume_backup_code(user, backup_code):
        raise _fail(tenant, email, user, actor, "bad_factor", method)
    # From here the credentials are proven: the events that follow are the user's own acts.
    actor = replace(actor, type="user", id=str(user.id))
    if backup_code:
        record_event(actor, AuditAction.BACKUP_CODE_USED, tenant_id=tenant.id,
                     target_user_id=user.id, details={"remaining": backup_codes_remaining(user.id)})

    assert identity is not None
    if identity.temporary:
        identity.used_at = utcnow()
    if identity.must_change:
        status = "password_change_required"
    elif not factors:
        # After a reset (or before a first enrolment) the password alone only opens enrolment.
        status = "enrolment_required"
    elif backup_code and recovery().in_recovery(user):
        # Runbook step 2: a backup-code sign-in during a recovery only opens re-enrolment.
        status = "enrolment_required"
    else:
        status = "ok"
    scope = "full" if status == "ok" else "restricted"
    token = open_session(user, scope=scope, ip=actor.ip)
    _record(tenant, email, user, actor.ip, "succeeded", method)
    record_event(actor, AuditAction.SIGNIN_SUCCEEDED, tenant_id=tenant.id, target_user_id=user.id,
                 details={"method": method, "status": status, "session_scope": scope})
    return SigninResult(status=status, token=token, user=user)

