"""The runbook's destructive actions (steps 3-4 and "what can go wrong").

A request here decides and records; a task carries the effect out. No reset, temporary
password or admin backup codes without a verified case; the risk screen runs again before each;
a privileged user's reset needs a second person; an optional cooldown gives the real user a
one-click cancel. Each effect is written with its audit event in the task's one transaction.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from app.accounts.mfa import issue_backup_codes
from app.accounts.models import BackupCode, MfaFactor, PasswordIdentity, RememberedDevice, User
from app.accounts.services import backup_codes_remaining, revoke_sessions
from app.actor import Actor
from app.audit.models import AuditAction, AuditEvent
from app.audit.services import record_event
from app.crypto import UnreadableCiphertext, decrypt, encrypt, hash_password
from app.errors import Conflict, Forbidden, RuleRefused
from app.extensions import db, rows_changed, utcnow
from app.jobs.services import claim_effect, enqueue, record_dead_letter
from app.recovery import models as m
from app.recovery.evidence import accepted_types, evidence_sufficient
from app.recovery.models import CaseAction, Evidence, RecoveryCase, VerificationCall
from app.recovery.notify import announce
from app.recovery.pending import pending_actions
from app.recovery.risk import unusual_activity
from app.recovery.state import case_user, ensure_reason, load_case, move, refuse, require
from app.tenants.models import Tenant
from app.tenants.services import page_url
from integrations.base import PermanentDeliveryError

TEMP_PASSWORD_LENGTH = 20
TEMP_PASSWORD_TTL = timedelta(hours=24)
_TEMP_ALPHABET = string.ascii_letters + string.digits


class NotVerified(RuleRefused):
    code = "not_verified"


class BackupCodesRemain(RuleRefused):
    code = "backup_codes_remain"


class NoVerifiedChannel(RuleRefused):
    code = "no_verified_channel"


class RefusedOnRescreen(RuleRefused):
    code = "refused_unusual_activity"
    keep_changes = True  # the refusal of the case is the point


class SamePerson(Forbidden):
    code = "same_person"


def _gate(actor: Actor, case: RecoveryCase, user: User) -> None:
    """No destructive action without recorded acceptable evidence, and never past a fresh
    unusual-activity signal (the screen runs again at decision time)."""
    if not evidence_sufficient(case):
        raise NotVerified("No destructive action without acceptable verification evidence on the case.",
                          details={"accepted_types": accepted_types(case)})
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    unusual, failures = unusual_activity(tenant, user)
    if unusual:
        refuse(actor, case, "unusual_activity", "Unusual sign-in activity found when acting on the case.",
                facts={"failed_signins_from_unknown_ips": failures})
        enqueue("rekey.recovery.notify_senior_admins", case_id=str(case.id))
        raise RefusedOnRescreen("Unusual recent sign-in activity: the case was refused and escalated.")


def _new_action(actor: Actor, case: RecoveryCase, action: str, reason: str, status: str,
                options: dict[str, Any] | None = None) -> CaseAction:
    row = CaseAction(id=uuid.uuid4(), tenant_id=case.tenant_id, case_id=case.id, action=action, status=status,
                     requested_by=actor.id or actor.type, requested_role=actor.role, reason=reason,
                     options=options or {}, request_id=actor.request_id, source_ip=actor.ip, created_at=utcnow())
    db.session.add(row)
    db.session.flush()
    return row


def _queue(actor: Actor, case: RecoveryCase, row: CaseAction) -> None:
    row.status, row.queued_at = "queued", utcnow()
    record_event(actor, AuditAction.RECOVERY_ACTION_QUEUED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=row.reason, details={"action_id": str(row.id), "action": row.action})
    enqueue("rekey.recovery.execute_action", action_id=str(row.id))


def _schedule_or_queue(actor: Actor, case: RecoveryCase, row: CaseAction) -> None:
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    hours = float(tenant.setting("reset_cooldown_hours") or 0)
    if row.action == "force_mfa_reset" and hours > 0:
        row.status, row.execute_after = "scheduled", utcnow() + timedelta(hours=hours)
        record_event(actor, AuditAction.RECOVERY_RESET_SCHEDULED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, reason=row.reason,
                     details={"action_id": str(row.id), "execute_after": row.execute_after.isoformat(),
                              "cooldown_hours": hours})
        announce(case, "reset.scheduled", cancel_ttl=timedelta(hours=hours))
    else:
        _queue(actor, case, row)


# --- requests ---------------------------------------------------------------------------------


def request_force_mfa_reset(actor: Actor, case_id: uuid.UUID | str, *, reason: str,
                            backup_codes_unusable: str | None = None) -> CaseAction:
    """Decide a force MFA reset (runbook step 3); a task carries it out."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "force_mfa_reset", actor)
    user = case_user(case)
    _gate(actor, case, user)
    remaining = backup_codes_remaining(user.id)
    if remaining and not (backup_codes_unusable and backup_codes_unusable.strip()):
        # Runbook step 2: with codes left, the user owns the recovery; a reset needs a reason.
        raise BackupCodesRemain(f"{remaining} backup codes remain: the user can sign in with one. To reset "
                                "anyway, say why the codes cannot be used (backup_codes_unusable).",
                                details={"remaining": remaining})
    if pending_actions(case, "force_mfa_reset"):
        raise Conflict("A reset is already pending on this case.", details={"state": case.state})
    options = {"backup_codes_unusable": backup_codes_unusable.strip()} if remaining and backup_codes_unusable else {}
    if user.privileged:
        # Two-person rule: a senior admin other than the requester must approve.
        row = _new_action(actor, case, "force_mfa_reset", reason, "awaiting_approval", options)
        record_event(actor, AuditAction.RECOVERY_APPROVAL_REQUESTED, tenant_id=case.tenant_id,
                     target_user_id=user.id, case_id=case.id, reason=reason,
                     details={"action_id": str(row.id), "action": "force_mfa_reset"})
        return row
    row = _new_action(actor, case, "force_mfa_reset", reason, "queued", options)
    _schedule_or_queue(actor, case, row)
    return row


def approve(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> CaseAction:
    """The second person: a senior admin who is not the requester approves the pending reset."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "approve", actor)
    waiting = [a for a in pending_actions(case) if a.status == "awaiting_approval"]
    if not waiting:
        raise Conflict("Nothing on this case awaits approval.", details={"state": case.state})
    row = waiting[0]
    if row.requested_by == actor.id:
        raise SamePerson("The approver must be a different person from the requester.")
    _gate(actor, case, case_user(case))
    row.approved_by, row.approval_reason = actor.id, reason
    record_event(actor, AuditAction.RECOVERY_ACTION_APPROVED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, reason=reason,
                 details={"action_id": str(row.id), "action": row.action, "requested_by": row.requested_by})
    _schedule_or_queue(actor, case, row)
    return row


def verified_phone_channel(case: RecoveryCase) -> uuid.UUID | None:
    """The phone the user proved they hold in this case (the verification call's channel)."""
    call = db.session.scalars(select(VerificationCall).where(
        VerificationCall.case_id == case.id, VerificationCall.status == "verified")
        .order_by(VerificationCall.verified_at.desc())).first()
    return call.channel_id if call else None


def _agents_video_call(actor: Actor, case: RecoveryCase) -> bool:
    return db.session.scalars(select(Evidence.id).where(
        Evidence.case_id == case.id, Evidence.accepted.is_(True), Evidence.type == "video_call",
        Evidence.recorded_by_id == actor.id)).first() is not None


def request_secret_delivery(actor: Actor, case_id: uuid.UUID | str, action: str, *, reason: str,
                            delivery: str) -> tuple[CaseAction | None, list[str] | None]:
    """Admin backup codes or a temporary password, delivered over the verified channel only.

    Returns (queued action, None) for delivery by phone, or (None, codes) when the verified
    channel is the agent's own video call: codes only, shown once in this response.
    """
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, action, actor)
    user = case_user(case)
    _gate(actor, case, user)
    if delivery == "video_call":
        if action != "generate_backup_codes" or not _agents_video_call(actor, case):
            raise NoVerifiedChannel("Only backup codes, and only to the agent who verified the user on a "
                                    "video call, may be read out on that call.")
        codes = issue_backup_codes(actor, user, reason=reason, case_id=case.id)
        _after_secret_issued(case, "mfa.backup_codes_generated")
        return None, codes
    if verified_phone_channel(case) is None:
        raise NoVerifiedChannel("No verified phone on this case: verify with a call to a known number "
                                "first; secrets are never sent to an unverified channel or the ticket.")
    if pending_actions(case, action):
        raise Conflict("This action is already pending on the case.", details={"state": case.state})
    row = _new_action(actor, case, action, reason, "queued", {"delivery": "verified_phone"})
    _queue(actor, case, row)
    return row, None


def _after_secret_issued(case: RecoveryCase, event: str) -> None:
    if case.state == m.VERIFIED:
        move(case, m.AWAITING_ENROLMENT)
    announce(case, event)


# --- execution (tasks) ----------------------------------------------------------------------


def _acting_agent(row: CaseAction) -> Actor:
    return Actor(type="agent", id=row.requested_by, tenant_id=row.tenant_id, role=row.requested_role,
                 ip=row.source_ip, request_id=row.request_id)


def execute_action(action_id: uuid.UUID) -> CaseAction | None:
    """Carry out a queued action once. A second run, a redelivery after a crash or a concurrent
    copy finds the effect claimed (or the row no longer queued) and changes nothing."""
    # Lock order: the action's case, then the action, as every request that decides, refuses or
    # suspends does; taking the action first deadlocked with a concurrent refusal.
    case = db.session.scalars(select(RecoveryCase).select_from(CaseAction)
                              .join(RecoveryCase, RecoveryCase.id == CaseAction.case_id)
                              .where(CaseAction.id == action_id).with_for_update(of=RecoveryCase)).first()
    if case is None:
        return None
    row = db.session.get(CaseAction, action_id, with_for_update=True)
    if row is None or row.status != "queued" or not claim_effect(f"action:{action_id}"):
        return row
    actor = _acting_agent(row)
    if case.state not in _EXECUTABLE_FROM[row.action]:
        row.status, row.done_at = "cancelled", utcnow()
        record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_ACTION_CANCELLED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, reason=f"case is {case.state}",
                     details={"action_id": str(row.id), "action": row.action})
        return row
    user = case_user(case)
    try:
        _gate(actor, case, user)
    except RefusedOnRescreen:
        return row  # _gate refused the case and cancelled this action
    _EXECUTORS[row.action](actor, case, user, row)
    row.status, row.done_at = "done", utcnow()
    db.session.flush()
    _maybe_reactivate(case, user)
    return row


def reset_factors(user: User) -> dict[str, int]:
    """One atomic reset: factors (TOTP and security keys), unused backup codes, sessions and
    remembered devices, in the caller's transaction. Nothing is deleted; each row records when
    it was invalidated (a key's credential is unusable once its factor is removed)."""
    now = utcnow()
    kinds = db.session.scalars(update(MfaFactor).where(
        MfaFactor.user_id == user.id, MfaFactor.status.in_(("active", "pending"))
    ).values(status="removed", removed_at=now).returning(MfaFactor.kind)
        .execution_options(synchronize_session=False)).all()
    codes = rows_changed(update(BackupCode).where(
        BackupCode.user_id == user.id, BackupCode.used_at.is_(None), BackupCode.revoked_at.is_(None)
    ).values(revoked_at=now).execution_options(synchronize_session=False))
    devices = rows_changed(update(RememberedDevice).where(
        RememberedDevice.user_id == user.id, RememberedDevice.revoked_at.is_(None)
    ).values(revoked_at=now).execution_options(synchronize_session=False))
    sessions = revoke_sessions(user.id)
    db.session.expire(user)
    return {"factors_removed": len(kinds), "security_keys_removed": kinds.count("webauthn"),
            "backup_codes_revoked": codes or 0,
            "sessions_revoked": sessions, "devices_forgotten": devices or 0}


def _do_force_reset(actor: Actor, case: RecoveryCase, user: User, row: CaseAction) -> None:
    counts = reset_factors(user)
    record_event(actor, AuditAction.FACTOR_ADMIN_RESET, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=row.reason,
                 details={**counts, "action_id": str(row.id), "approved_by": row.approved_by,
                          "evidence": accepted_types(case), **row.options})
    move(case, m.AWAITING_ENROLMENT)
    announce(case, "mfa.factor_admin_reset")


def _seal_for_delivery(row: CaseAction, secret: list[str] | str) -> None:
    """Keep the secret this action generated (encrypted, on the action) until a separate task
    has texted it. The text cannot go out from here: if this transaction were lost after the
    send (a dropped connection, a killed worker), the retry would generate a different secret,
    and the provider, deduplicating on the action's key, would never deliver it: the user would
    hold a password or codes that do not work. Generate once, store, then deliver as often as
    it takes."""
    row.options = {**row.options, "sealed": encrypt(json.dumps(secret))}
    row.delivery_state = "pending"
    enqueue("rekey.recovery.deliver_secret", action_id=str(row.id))


def _delivery_text(action: str, secret: list[str] | str, signin: str) -> str:
    if action == "generate_backup_codes":
        return ("Your new backup codes (each works once; store them safely): " + ", ".join(secret)
                + f". Sign in at {signin} with your email, password and one code, then enrol a new factor.")
    return (f"Your one-time temporary password is {secret} . It works once, for 24 hours; sign in at "
            f"{signin} and you will choose a new password.")


def deliver_secret(action_id: uuid.UUID) -> bool:
    """Text the secret a done action generated to the phone verified in its case, then forget it.
    A second run (retry, redelivery) sends the same secret under the same key, or nothing; a
    channel that refuses it for good ends the attempts (`_delivery_failed`)."""
    from app.accounts.models import Channel
    from app.messaging import send

    row = db.session.get(CaseAction, action_id, with_for_update=True)
    if row is None or not row.options.get("sealed"):
        return False
    case = db.session.get(RecoveryCase, row.case_id)
    assert case is not None
    # The tenant before the phone: the e2e kill tests find this task by its last query before
    # the send, the phone's.
    tenant = db.session.get(Tenant, row.tenant_id)
    assert tenant is not None
    try:
        channel_id = verified_phone_channel(case)
        channel = db.session.get(Channel, channel_id) if channel_id else None
        if channel is None:
            raise NoVerifiedChannel("The verified phone is gone.")
        secret = json.loads(decrypt(row.options["sealed"]))
        body = _delivery_text(row.action, secret, signin=page_url(tenant, "signin"))
        send("phone", channel.value, subject="Account recovery", body=body,
             key=f"action:{row.id}", method="sms")
    except (PermanentDeliveryError, NoVerifiedChannel, UnreadableCiphertext) as exc:
        _delivery_failed(case, row, exc)
        return False
    row.options = {k: v for k, v in row.options.items() if k != "sealed"}
    row.delivery_state = "sent"
    return True


def _delivery_failed(case: RecoveryCase, row: CaseAction, exc: Exception) -> None:
    """A secret that can never go out as things stand (the number refused it for good, no
    verified phone, a key gone): stop trying, and say why where people look. The sweep re-queued
    such a delivery every five minutes, each time into a new dead letter. The secret stays sealed
    so that `rekey dlq retry` sends it once the cause is fixed."""
    row.delivery_state = "failed"
    what = "backup codes" if row.action == "generate_backup_codes" else "temporary password"
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_SECRET_DELIVERY_FAILED,
                 tenant_id=case.tenant_id, target_user_id=case.user_id, case_id=case.id,
                 reason=f"The {what} could not be texted to the verified phone and were not sent: "
                        f"{type(exc).__name__}. Fix the cause, then replay the dead letter (rekey dlq retry).",
                 details={"action_id": str(row.id), "action": row.action, "error": type(exc).__name__,
                          "message": str(exc)[:200]})
    record_dead_letter("rekey.recovery.deliver_secret", {"action_id": str(row.id)}, None, exc, 0)


def _do_backup_codes(actor: Actor, case: RecoveryCase, user: User, row: CaseAction) -> None:
    _seal_for_delivery(row, issue_backup_codes(actor, user, reason=row.reason, case_id=case.id))
    _after_secret_issued(case, "mfa.backup_codes_generated")


def _do_temporary_password(actor: Actor, case: RecoveryCase, user: User, row: CaseAction) -> None:
    password = "".join(secrets.choice(_TEMP_ALPHABET) for _ in range(TEMP_PASSWORD_LENGTH))
    identity = user.password or PasswordIdentity(user=user, hash="")
    db.session.add(identity)
    identity.hash, identity.must_change, identity.temporary = hash_password(password), True, True
    identity.expires_at, identity.used_at, identity.set_at = utcnow() + TEMP_PASSWORD_TTL, None, utcnow()
    revoked = revoke_sessions(user.id)
    record_event(actor, AuditAction.PASSWORD_SET_BY_ADMIN, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=row.reason,
                 details={"action_id": str(row.id), "generated_by": "rekey", "single_use": True,
                          "expires_at": identity.expires_at.isoformat(), "sessions_revoked": revoked,
                          "delivered_to": "verified_phone"})
    _seal_for_delivery(row, password)
    _after_secret_issued(case, "user.password_set_by_admin")


_EXECUTORS = {"force_mfa_reset": _do_force_reset, "generate_backup_codes": _do_backup_codes,
              "set_temporary_password": _do_temporary_password}
_EXECUTABLE_FROM = {"force_mfa_reset": (m.VERIFIED,),
                    "generate_backup_codes": (m.VERIFIED, m.AWAITING_ENROLMENT),
                    "set_temporary_password": (m.VERIFIED, m.AWAITING_ENROLMENT)}


def _maybe_reactivate(case: RecoveryCase, user: User) -> None:
    """After a suspected attack, the real user gets the account back only once verified again
    and both a real MFA reset and a new password have been carried out."""
    if user.status != "suspended" or "suspected_attack" not in case.flags:
        return
    # Only what was decided for the real user counts: a reset carried out before the suspension
    # was the attacker's (who may have enrolled their own factor since).
    suspended_at = db.session.scalar(select(func.max(AuditEvent.occurred_at)).where(
        AuditEvent.tenant_id == case.tenant_id, AuditEvent.case_id == case.id,
        AuditEvent.action == AuditAction.USER_SUSPENDED))
    stmt = select(CaseAction.action).where(CaseAction.case_id == case.id, CaseAction.status == "done")
    if suspended_at is not None:
        stmt = stmt.where(CaseAction.created_at > suspended_at)
    done = set(db.session.scalars(stmt).all())
    if {"force_mfa_reset", "set_temporary_password"} <= done:
        user.status = "active"
        record_event(Actor.system(case.tenant_id), AuditAction.USER_REACTIVATED, tenant_id=case.tenant_id,
                     target_user_id=user.id, case_id=case.id,
                     reason="Verified again after a suspected attack; MFA reset and password set.")
