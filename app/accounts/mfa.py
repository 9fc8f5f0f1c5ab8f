"""Factors a user holds: TOTP enrolment and checks, backup codes, the password."""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from datetime import timedelta
from typing import Any

import pyotp
from sqlalchemy import select, update

from app.accounts.hooks import recovery
from app.accounts.models import BackupCode, MfaFactor, PasswordIdentity, User, UserSession
from app.accounts.services import active_factors, check_new_password, revoke_sessions
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import decrypt, encrypt, hash_code, hash_password, verify_code, verify_password
from app.errors import Conflict, Forbidden, RuleRefused
from app.extensions import db, rows_changed, utcnow

TOTP_PERIOD = 30
# One step either side for clock drift (NIST 800-63B §3.1.5.2); a code is still accepted once.
TOTP_VALID_WINDOW = 1
ENROLMENT_TTL = timedelta(minutes=10)
BACKUP_CODE_COUNT = 10
_CODE_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32: 5 bits a character
_CODE_GROUPS, _CODE_GROUP_LEN = 4, 5  # 20 characters = 100 bits; the 4-character lookup leaves 80
LOOKUP_LEN = 4


class InvalidFactorCode(RuleRefused):
    code = "invalid_code"


class EnrolmentClosed(Forbidden):
    code = "enrolment_closed"
    keep_changes = True  # the refused sign-in is recorded


def enrolment_closed(user: User) -> bool:
    """Whether a refused or suspected recovery closed the user's enrolment window: the user has
    no factor left, so a password alone (perhaps the attacker's) must not bind a new one. The
    recovery layer sets the mark on the user and clears it when a case is verified again; it is
    kept on the user, not asked of recovery, because accounts sits below recovery and the mark is
    a fact about the account (like `status`), read on every sign-in without reaching up."""
    return user.enrolment_closed_at is not None and not active_factors(user)


# --- TOTP -----------------------------------------------------------------------------------


def start_totp_enrolment(actor: Actor, user: User, *, issuer: str) -> tuple[MfaFactor, str, str]:
    """Create a pending TOTP factor; returns it, the base32 secret and the otpauth URI (shown
    only to the user's own session, once)."""
    if enrolment_closed(user):
        raise EnrolmentClosed("Enrolment is closed for this account until support verifies you again.")
    for factor in user.factors:
        if factor.status == "pending":  # an abandoned enrolment dies when a new one starts
            factor.status, factor.removed_at = "removed", utcnow()
    secret = pyotp.random_base32(32)  # 160 bits
    factor = MfaFactor(user=user, kind="totp", status="pending", secret_encrypted=encrypt(secret),
                       enrolled_ip=actor.ip)
    db.session.add(factor)
    db.session.flush()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.email, issuer_name=issuer)
    return factor, secret, uri


def _matching_step(secret: str, code: str, *, at: float | None = None) -> int | None:
    # ASCII only: `isdigit` also admits other scripts' digits, which `compare_digest` rejects
    # with a TypeError (a 500 for a typo).
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    now_step = int((at if at is not None else time.time()) // TOTP_PERIOD)
    found = None
    for step in range(now_step - TOTP_VALID_WINDOW, now_step + TOTP_VALID_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            found = step
    return found


def consume_totp(factor: MfaFactor, code: str) -> bool:
    """Accept the code once: the matching time step must be later than any accepted before,
    claimed by an atomic compare-and-set so two concurrent uses cannot both pass."""
    if factor.secret_encrypted is None:  # not a TOTP factor
        return False
    step = _matching_step(decrypt(factor.secret_encrypted), code)
    if step is None:
        return False
    claimed = rows_changed(
        update(MfaFactor)
        .where(MfaFactor.id == factor.id, MfaFactor.last_used_step < step)
        .values(last_used_step=step)
        .execution_options(synchronize_session=False)
    )
    if claimed == 1:
        factor.last_used_step = step
    return claimed == 1


def is_spent_totp(factor: MfaFactor, code: str) -> bool:
    """True when the code is right for the factor but its time step was already accepted: a
    replay (or the loser of a concurrent race), worth recording apart from a typo."""
    if factor.secret_encrypted is None:
        return False
    step = _matching_step(decrypt(factor.secret_encrypted), code)
    if step is None:
        return False
    # Read the committed value: a concurrent winner updated the row, not this session's object.
    last = db.session.scalar(select(MfaFactor.last_used_step).where(MfaFactor.id == factor.id))
    return step <= (last or 0)


def confirm_totp_enrolment(actor: Actor, user: User, code: str) -> MfaFactor:
    """Activate the pending factor with its first code; records `mfa.factor_enrolled`."""
    # Lock order: the recovery case first, as a reset does, then the factors; and the factors
    # are read once the case is ours, so a reset that just ran is seen (the enrolment it removed
    # stays removed). Taking the factor first deadlocked with a reset running at the same time.
    case_id = recovery().lock_case_for_enrolment(user)
    # Read again under a lock, after the case's: a refusal that closed the window while this
    # request was on its way (its session was revoked a moment ago) must win.
    db.session.refresh(user, with_for_update=True)
    if enrolment_closed(user):
        raise EnrolmentClosed("Enrolment is closed for this account until support verifies you again.")
    pending = list(db.session.scalars(select(MfaFactor).where(
        MfaFactor.user_id == user.id, MfaFactor.status == "pending").order_by(MfaFactor.created_at)
        .with_for_update().execution_options(populate_existing=True)).all())
    if not pending:
        raise Conflict("There is no enrolment to confirm; start one first.")
    factor = pending[-1]
    if factor.created_at + ENROLMENT_TTL < utcnow():
        factor.status, factor.removed_at = "removed", utcnow()
        raise RuleRefused("The enrolment expired; start again.", code="enrolment_expired",
                          keep_changes=True)
    if not consume_totp(factor, code):
        raise InvalidFactorCode("The code is not valid.")
    factor.status, factor.activated_at, factor.enrolled_ip = "active", utcnow(), actor.ip
    db.session.flush()
    record_enrolment(actor, user, factor, case_id)
    return factor


def record_enrolment(actor: Actor, user: User, factor: MfaFactor, case_id: uuid.UUID | None,
                     **details: object) -> None:
    """Record `mfa.factor_enrolled` for a newly active factor and, when it completes a recovery
    case (locked first by `lock_case_for_enrolment`), close that case's loop."""
    # Runbook step 4 "closes the loop": the enrolment is recorded against the recovery case.
    record_event(actor, AuditAction.FACTOR_ENROLLED, tenant_id=user.tenant_id, target_user_id=user.id,
                 case_id=case_id, details={"factor_id": str(factor.id), "kind": factor.kind, **details})
    if case_id is not None:
        recovery().factor_enrolled(case_id, user, actor)


# --- backup codes ---------------------------------------------------------------------------


def _new_backup_code() -> str:
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(_CODE_GROUPS * _CODE_GROUP_LEN))
    return "-".join(raw[i:i + _CODE_GROUP_LEN] for i in range(0, len(raw), _CODE_GROUP_LEN))


def normalize_backup_code(raw: str) -> str | None:
    """Accept codes typed with spaces, without dashes or in capitals; None if it cannot be one."""
    compact = "".join(ch for ch in raw.lower() if ch not in " -")
    if len(compact) != _CODE_GROUPS * _CODE_GROUP_LEN or any(c not in _CODE_ALPHABET
                                                             for c in compact):
        return None
    return "-".join(compact[i:i + _CODE_GROUP_LEN]
                    for i in range(0, len(compact), _CODE_GROUP_LEN))


def issue_backup_codes(actor: Actor, user: User, *, reason: str | None = None,
                       case_id: uuid.UUID | None = None, extra: dict[str, Any] | None = None) -> list[str]:
    """Replace every unused code with a fresh set of ten; returns the codes (shown once).
    `case_id` names the recovery case an admin generated them for, and `extra` adds (non-secret)
    facts of that decision, in the audit trail."""
    batch, codes = replace_backup_codes(user)
    record_event(actor, AuditAction.BACKUP_CODES_GENERATED, tenant_id=user.tenant_id,
                 target_user_id=user.id, case_id=case_id, reason=reason,
                 details=backup_codes_event_details(actor, batch, extra))
    return codes


def backup_codes_event_details(actor: Actor, batch: uuid.UUID | str,
                               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `mfa.backup_codes_generated` details, the same whoever records the event."""
    return {"count": BACKUP_CODE_COUNT, "batch_id": str(batch),
            "by": "admin" if actor.type == "agent" else actor.type, **(extra or {})}


def replace_backup_codes(user: User) -> tuple[uuid.UUID, list[str]]:
    """Revoke every unused code and store a fresh batch of ten (flushed, not audited: the caller
    records the event in the same transaction); returns the batch id and the codes."""
    now = utcnow()
    db.session.execute(
        update(BackupCode)
        .where(BackupCode.user_id == user.id, BackupCode.used_at.is_(None),
               BackupCode.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    batch = uuid.uuid4()
    codes: list[str] = []
    lookups: set[str] = set()
    while len(codes) < BACKUP_CODE_COUNT:
        code = _new_backup_code()
        if code[:LOOKUP_LEN] in lookups:  # keep lookups distinct so a check hashes once
            continue
        lookups.add(code[:LOOKUP_LEN])
        codes.append(code)
        db.session.add(BackupCode(user_id=user.id, batch_id=batch, lookup=code[:LOOKUP_LEN],
                                  hash=hash_code(code), created_at=now))
    db.session.flush()
    return batch, codes


def regenerate_backup_codes(actor: Actor, user: User, session: UserSession) -> list[str]:
    """The user's own regeneration (API and account page): ten new codes, shown once. A recovery
    session must enrol a real factor before it may mint new codes."""
    if session.scope != "full" and not active_factors(user):
        raise Forbidden("Enrol a factor before regenerating backup codes.", code="restricted_session")
    return issue_backup_codes(actor, user)


def revoke_backup_code_batch(user: User, batch_id: uuid.UUID) -> int:
    """Revoke the unused codes of one batch (codes that never reached their user)."""
    return rows_changed(update(BackupCode).where(
        BackupCode.user_id == user.id, BackupCode.batch_id == batch_id, BackupCode.used_at.is_(None),
        BackupCode.revoked_at.is_(None)).values(revoked_at=utcnow()).execution_options(synchronize_session=False)) or 0


def consume_backup_code(user: User, raw: str) -> bool:
    """Burn one unused code: one indexed lookup, one argon2 check, and an atomic
    `UPDATE ... WHERE used_at IS NULL` so the same code cannot sign in twice, even concurrently."""
    code = normalize_backup_code(raw)
    if code is None:
        return False
    candidates = db.session.scalars(
        select(BackupCode).where(
            BackupCode.user_id == user.id, BackupCode.lookup == code[:LOOKUP_LEN],
            BackupCode.used_at.is_(None), BackupCode.revoked_at.is_(None),
        )
    ).all()
    for candidate in candidates:
        if verify_code(candidate.hash, code):
            claimed = rows_changed(
                update(BackupCode)
                .where(BackupCode.id == candidate.id, BackupCode.used_at.is_(None),
                       BackupCode.revoked_at.is_(None))
                .values(used_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            return claimed == 1
    return False


# --- password -------------------------------------------------------------------------------


def password_change_forced(user: User, session: UserSession) -> bool:
    """Whether this session may set a new password without the current one: it was opened by a
    must-change (temporary) password."""
    identity = user.password
    # Only a session opened after the must-change password was set has proven it; an older one
    # (or one stolen before an admin set a temporary password) must still present it.
    return identity is not None and identity.must_change and session.created_at >= identity.set_at


def change_password(actor: Actor, user: User, session: UserSession, *, new_password: str,
                    current_password: str | None) -> None:
    """Set a password the user chose. A session opened by a must-change (temporary) password has
    already proven it; any other session must present the current one."""
    identity = user.password
    forced = password_change_forced(user, session)
    if (identity is not None and not forced
            and not verify_password(identity.hash, current_password or "")):
        raise RuleRefused("The current password is not correct.", code="invalid_credentials")
    check_new_password(new_password, email=user.email)
    if identity is not None and verify_password(identity.hash, new_password):
        raise RuleRefused("The new password must differ from the current one.")
    if identity is None:
        identity = PasswordIdentity(user=user, hash="")
        db.session.add(identity)
    identity.hash = hash_password(new_password)
    identity.must_change = identity.temporary = False
    identity.expires_at = identity.used_at = None
    identity.set_at = utcnow()
    revoked = revoke_sessions(user.id, except_id=session.id)
    record_event(actor, AuditAction.PASSWORD_CHANGED, tenant_id=user.tenant_id,
                 target_user_id=user.id,
                 details={"forced": forced, "other_sessions_revoked": revoked})

