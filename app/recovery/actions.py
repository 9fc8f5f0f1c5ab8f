"""The runbook's destructive actions (steps 3-4 and "what can go wrong").

A request here decides and records; a task carries the effect out. No reset, temporary
password or admin backup codes without evidence from the case's current round; the risk screen
runs again before each; on a privileged user each needs a second senior admin; an optional
cooldown holds each and gives the real user a one-click cancel. Each effect is written with its
audit event in the task's one transaction; secrets are delivered by app/recovery/delivery.py.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.accounts.services import backup_codes_remaining
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.errors import Conflict, Forbidden, NotFound, RuleRefused, ValidationFailed
from app.extensions import db, utcnow
from app.jobs.services import claim_effect, enqueue, record_dead_letter
from app.recovery import models as m
from app.recovery.delivery import seal_for_delivery
from app.recovery.effects import directory_of_user, in_request, ref
from app.recovery.models import CaseAction, Evidence, RecoveryCase
from app.recovery.notify import announce
from app.recovery.pending import pending_actions
from app.recovery.risk import unusual_activity
from app.recovery.rounds import accepted_types, evidence_sufficient, verified_phone
from app.recovery.state import case_user, ensure_reason, load_case, move, refuse, require
from app.tenants.models import Tenant
from integrations.directory import Directory, PermanentDirectoryError
from integrations.directory.registry import BUILTIN

log = structlog.get_logger(__name__)

TEMP_PASSWORD_TTL = timedelta(hours=24)
BACKUP_CODE_COUNT = 10


class NotVerified(RuleRefused):
    code = "not_verified"


class BackupCodesRemain(RuleRefused):
    code = "backup_codes_remain"


class NoVerifiedChannel(RuleRefused):
    code = "no_verified_channel"


class DeliveryNotOffered(RuleRefused):
    code = "delivery_not_offered"


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
        ended = refuse(actor, case, "unusual_activity", "Unusual sign-in activity found when acting on the case.",
                       facts={"failed_signins_from_unknown_ips": failures})
        enqueue("rekey.recovery.notify_senior_admins", case_id=str(case.id), case_round=ended)
        raise RefusedOnRescreen("Unusual recent sign-in activity: the case was refused and escalated.")


def _new_action(actor: Actor, case: RecoveryCase, action: str, reason: str, status: str,
                options: dict[str, Any] | None = None) -> CaseAction:
    row = CaseAction(id=uuid.uuid4(), tenant_id=case.tenant_id, case_id=case.id, action=action, status=status,
                     requested_by=actor.id or actor.type, requested_role=actor.role, reason=reason,
                     options=options or {}, request_id=actor.request_id, source_ip=actor.ip, created_at=utcnow(),
                     round=case.round)
    db.session.add(row)
    db.session.flush()
    return row


def _queue(actor: Actor, case: RecoveryCase, row: CaseAction) -> None:
    row.status, row.queued_at = "queued", utcnow()
    record_event(actor, AuditAction.RECOVERY_ACTION_QUEUED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=row.reason, details={"action_id": str(row.id), "action": row.action})
    enqueue("rekey.recovery.execute_action", action_id=str(row.id))


def cooldown_hours(case: RecoveryCase) -> float:
    """The tenant's cooldown before any destructive action runs (0: none)."""
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    return float(tenant.setting("reset_cooldown_hours") or 0)


# action -> (the notice the user gets, the audit event) when the cooldown holds it.
_SCHEDULED = {"force_mfa_reset": ("reset.scheduled", AuditAction.RECOVERY_RESET_SCHEDULED),
              "generate_backup_codes": ("backup_codes.scheduled", AuditAction.RECOVERY_ACTION_SCHEDULED),
              "set_temporary_password": ("temporary_password.scheduled", AuditAction.RECOVERY_ACTION_SCHEDULED)}


def _schedule_or_queue(actor: Actor, case: RecoveryCase, row: CaseAction) -> None:
    hours = cooldown_hours(case)
    if hours <= 0:
        _queue(actor, case, row)
        return
    # The cooldown holds every destructive action, not only the reset: admin codes or a
    # temporary password texted at once would sign the attacker in before the owner can cancel.
    row.status, row.execute_after = "scheduled", utcnow() + timedelta(hours=hours)
    notice, event = _SCHEDULED[row.action]
    record_event(actor, event, tenant_id=case.tenant_id, target_user_id=case.user_id, case_id=case.id,
                 reason=row.reason,
                 details={"action_id": str(row.id), "action": row.action,
                          "execute_after": row.execute_after.isoformat(), "cooldown_hours": hours})
    announce(case, notice, cancel_ttl=timedelta(hours=hours))


def _decide(actor: Actor, case: RecoveryCase, user: User, action: str, reason: str,
            options: dict[str, Any]) -> CaseAction:
    """Record the decision: a privileged user's waits for a second senior admin (two-person
    rule, for the reset, admin codes and a temporary password alike); others go to the cooldown
    or the queue."""
    if user.privileged:
        row = _new_action(actor, case, action, reason, "awaiting_approval", options)
        record_event(actor, AuditAction.RECOVERY_APPROVAL_REQUESTED, tenant_id=case.tenant_id,
                     target_user_id=user.id, case_id=case.id, reason=reason,
                     details={"action_id": str(row.id), "action": action})
        return row
    row = _new_action(actor, case, action, reason, "queued", options)
    _schedule_or_queue(actor, case, row)
    return row


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
    return _decide(actor, case, user, "force_mfa_reset", reason, options)


def _action_id(raw: uuid.UUID | str | None) -> uuid.UUID:
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(str(raw or ""))
    except ValueError as exc:
        raise ValidationFailed("Name the action to approve (action_id).",
                               details={"fields": {"action_id": ["An action id of this case is required."]}}) from exc


def approve(actor: Actor, case_id: uuid.UUID | str, *, action_id: uuid.UUID | str | None,
            reason: str) -> CaseAction:
    """The second person: a senior admin who is not the requester approves one named action
    (a reset, admin codes and a temporary password may all wait at once)."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "approve", actor)
    wanted = _action_id(action_id)
    row = db.session.get(CaseAction, wanted, with_for_update=True)
    if row is None or row.case_id != case.id:
        raise NotFound("No such action on this case.")
    if row.status != "awaiting_approval":
        raise Conflict("This action does not await approval.",
                       details={"state": case.state, "action_id": str(row.id), "status": row.status})
    if row.requested_by == actor.id:
        raise SamePerson("The approver must be a different person from the requester.")
    _gate(actor, case, case_user(case))
    row.approved_by, row.approval_reason = actor.id, reason
    record_event(actor, AuditAction.RECOVERY_ACTION_APPROVED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, reason=reason,
                 details={"action_id": str(row.id), "action": row.action, "requested_by": row.requested_by})
    _schedule_or_queue(actor, case, row)
    return row


def _agents_video_call(actor: Actor, case: RecoveryCase) -> bool:
    """Whether this agent saw the user on video in the current round (an earlier round's call
    may have been with the attacker)."""
    return db.session.scalars(select(Evidence.id).where(
        Evidence.case_id == case.id, Evidence.accepted.is_(True), Evidence.type == "video_call",
        Evidence.recorded_by_id == actor.id, Evidence.round == case.round)).first() is not None


def request_secret_delivery(actor: Actor, case_id: uuid.UUID | str, action: str, *, reason: str,
                            delivery: str) -> tuple[CaseAction | None, list[str] | None]:
    """Admin backup codes or a temporary password, delivered over the channel verified in the
    current round only.

    Returns (the action, None) for delivery by phone, or (None, codes) when the channel is the
    agent's own video call of this round: codes only, shown once in this response.
    """
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, action, actor)
    user = case_user(case)
    _gate(actor, case, user)
    if delivery == "video_call":
        if user.privileged or cooldown_hours(case) > 0:
            # Codes read out now would skip the second senior admin or the owner's cancel link.
            raise DeliveryNotOffered("With a cooldown or a second person's approval, codes go only to the phone "
                                     "verified in this round, once the wait is over.")
        if action != "generate_backup_codes" or not _agents_video_call(actor, case):
            raise NoVerifiedChannel("Only backup codes, and only to the agent who verified the user on a video "
                                    "call in the current round, may be read out on that call.")
        directory = directory_of_user(user)
        issued = in_request(lambda: directory.issue_backup_codes(
            ref(user), reference=f"case:{case.id}:r{case.round}:video", count=BACKUP_CODE_COUNT))
        _record_codes(actor, case, user, directory, issued.reference, len(issued.secrets), reason)
        after_secret_issued(case, "mfa.backup_codes_generated")
        return None, list(issued.secrets)
    if verified_phone(case) is None:
        raise NoVerifiedChannel("No phone verified in the current round of this case: verify with a call to a "
                                "known number first; secrets are never sent to a channel verified in an earlier "
                                "round, an unverified channel or the ticket.")
    if pending_actions(case, action):
        raise Conflict("This action is already pending on the case.", details={"state": case.state})
    return _decide(actor, case, user, action, reason, {"delivery": "verified_phone"}), None


def after_secret_issued(case: RecoveryCase, event: str) -> None:
    if case.state == m.VERIFIED:
        move(case, m.AWAITING_ENROLMENT)
    announce(case, event)


# --- execution (tasks) ----------------------------------------------------------------------


def _acting_agent(row: CaseAction) -> Actor:
    return Actor(type="agent", id=row.requested_by, tenant_id=row.tenant_id, role=row.requested_role,
                 ip=row.source_ip, request_id=row.request_id)


def _effect_key(row: CaseAction) -> str:
    """The action's effect key; a senior admin's retry of a failed action gets a fresh one."""
    attempt = int(row.options.get("attempt", 0))
    return f"action:{row.id}" if attempt == 0 else f"action:{row.id}:attempt{attempt}"


def _needs_plan(case: RecoveryCase, row: CaseAction) -> bool:
    """An external reset first lists the factors it will remove, in a transaction of its own, so
    the audit event names them even when a crash after the remote delete makes the retry find
    nothing left to delete."""
    user = records.user_by_id(case.user_id)
    return (row.action == "force_mfa_reset" and user is not None and records.is_external(user)
            and "remote_plan" not in row.options)


def execute_action(action_id: uuid.UUID) -> CaseAction | None:
    """Carry out a queued action once. A second run, a redelivery after a crash or a concurrent
    copy finds the effect claimed (or the row no longer queued) and changes nothing. Through an
    external directory, a transient failure rolls everything back and the task retries (the call
    is idempotent); a permanent one marks the action failed with its reason and a dead letter."""
    # Lock order: the action's case, then the action, as every request that decides, refuses or
    # suspends does; taking the action first deadlocked with a concurrent refusal.
    case = db.session.scalars(select(RecoveryCase).select_from(CaseAction)
                              .join(RecoveryCase, RecoveryCase.id == CaseAction.case_id)
                              .where(CaseAction.id == action_id).with_for_update(of=RecoveryCase)).first()
    if case is None:
        return None
    row = db.session.get(CaseAction, action_id, with_for_update=True)
    if row is None or row.status != "queued":
        return row
    planning = _needs_plan(case, row)
    if not planning and not claim_effect(_effect_key(row)):
        return row
    actor = _acting_agent(row)
    stale = (f"case is {case.state}" if case.state not in _EXECUTABLE_FROM[row.action]
             else "decided in an earlier round of the case" if row.round != case.round else None)
    if stale:
        if planning and not claim_effect(_effect_key(row)):
            return row
        row.status, row.done_at = "cancelled", utcnow()
        record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_ACTION_CANCELLED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, reason=stale,
                     details={"action_id": str(row.id), "action": row.action})
        return row
    user = case_user(case)
    try:
        _gate(actor, case, user)
    except RefusedOnRescreen:
        return row  # _gate refused the case and cancelled this action
    try:
        directory = directory_of_user(user)
        if planning:
            row.options = {**row.options,
                           "remote_plan": sorted(f.reference for f in directory.describe(ref(user)).factors)}
            enqueue("rekey.recovery.execute_action", action_id=str(row.id))
            return row
        _EXECUTORS[row.action](actor, case, user, row, directory)
        row.status, row.done_at = "done", utcnow()
        db.session.flush()
        _maybe_reactivate(case, user, directory)
    except PermanentDirectoryError as exc:
        _failed(case, row, user.directory_kind, exc)
    return row


def _failed(case: RecoveryCase, row: CaseAction, kind: str, exc: PermanentDirectoryError) -> None:
    """The directory refused for good: nothing happened there, so nothing is claimed. The action is
    `failed` with its reason, the case stays where it was (`verified`), a dead letter records the
    task, and a senior admin may retry it once the backend is fixed (`retry_action`)."""
    why = str(exc)[:300] or type(exc).__name__
    row.status, row.done_at = "failed", utcnow()
    row.options = {**row.options, "failure": why}
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_ACTION_FAILED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, reason=f"The directory refused: {why}",
                 details={"action_id": str(row.id), "action": row.action, "directory": kind,
                          "error": type(exc).__name__})
    record_dead_letter("rekey.recovery.execute_action", {"action_id": str(row.id)}, None, exc, 0)
    db.session.flush()


def retry_action(actor: Actor, case_id: uuid.UUID | str, *, action_id: uuid.UUID | str | None,
                 reason: str) -> CaseAction:
    """A senior admin queues a failed action again (after the directory was fixed): same case
    state rules and the same gate as the first time; a fresh effect key."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "retry_action", actor)
    row = db.session.get(CaseAction, _action_id(action_id), with_for_update=True)
    if row is None or row.case_id != case.id:
        raise NotFound("No such action on this case.")
    if row.status != "failed":
        raise Conflict("Only a failed action can be retried.",
                       details={"state": case.state, "action_id": str(row.id), "status": row.status})
    if case.state not in _EXECUTABLE_FROM[row.action] or row.round != case.round:
        raise Conflict("The case no longer allows this action.", details={"state": case.state})
    _gate(actor, case, case_user(case))
    options = {k: v for k, v in row.options.items() if k not in ("failure", "remote_plan")}
    row.options = {**options, "attempt": int(row.options.get("attempt", 0)) + 1}
    row.done_at = None
    record_event(actor, AuditAction.RECOVERY_ACTION_RETRIED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason, details={"action_id": str(row.id), "action": row.action})
    _queue(actor, case, row)
    return row


def reset_factors(user: User) -> dict[str, int]:
    """One atomic reset through the user's directory (built-in: factors, unused backup codes,
    sessions and remembered devices, in the caller's transaction); the counts for the audit."""
    return dict(directory_of_user(user).reset_factors(ref(user)).details)


def _do_force_reset(actor: Actor, case: RecoveryCase, user: User, row: CaseAction, directory: Directory) -> None:
    result = directory.reset_factors(ref(user))
    counts: dict[str, Any] = dict(result.details)
    if directory.kind != BUILTIN:
        # What was there before the first attempt and is gone now: a retry after a crash that
        # followed the remote delete finds nothing left, and still records the real effect.
        removed = sorted(set(row.options.get("remote_plan", [])) | set(result.removed))
        counts = {**counts, "directory": directory.kind, "removed": removed, "factors_removed": len(removed),
                  "sessions_revoked": directory.revoke_sessions(ref(user))}
    options = {k: v for k, v in row.options.items() if k != "remote_plan"}
    record_event(actor, AuditAction.FACTOR_ADMIN_RESET, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=row.reason,
                 details={**counts, "action_id": str(row.id), "approved_by": row.approved_by,
                          "evidence": accepted_types(case), **options})
    move(case, m.AWAITING_ENROLMENT)
    announce(case, "mfa.factor_admin_reset")


def _record_codes(actor: Actor, case: RecoveryCase, user: User, directory: Directory, reference: str, count: int,
                  reason: str | None, extra: dict[str, Any] | None = None) -> None:
    details: dict[str, Any] = {"count": count, "batch_id": reference,
                               "by": "admin" if actor.type == "agent" else actor.type, **(extra or {})}
    if directory.kind != BUILTIN:
        details["directory"] = directory.kind
    record_event(actor, AuditAction.BACKUP_CODES_GENERATED, tenant_id=user.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=reason, details=details)


def _do_backup_codes(actor: Actor, case: RecoveryCase, user: User, row: CaseAction, directory: Directory) -> None:
    # The action's id names the codes: a retry replaces them at the backend, never adds a second set.
    issued = directory.issue_backup_codes(ref(user), reference=str(row.id), count=BACKUP_CODE_COUNT)
    _record_codes(actor, case, user, directory, issued.reference, len(issued.secrets), row.reason,
                  {"action_id": str(row.id), "approved_by": row.approved_by})
    seal_for_delivery(row, user, list(issued.secrets), reference=issued.reference)
    after_secret_issued(case, "mfa.backup_codes_generated")


def _do_temporary_password(actor: Actor, case: RecoveryCase, user: User, row: CaseAction,
                           directory: Directory) -> None:
    issued = directory.set_temporary_password(ref(user), reference=str(row.id))
    revoked: Any = issued.details.get("sessions_revoked")
    if directory.kind != BUILTIN:
        revoked = directory.revoke_sessions(ref(user))
    expires = issued.expires_at
    record_event(actor, AuditAction.PASSWORD_SET_BY_ADMIN, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=row.reason,
                 details={"action_id": str(row.id), "generated_by": "rekey" if directory.kind == BUILTIN
                          else directory.kind, "single_use": True,
                          "expires_at": expires.isoformat() if expires else None, "sessions_revoked": revoked,
                          "delivered_to": "verified_phone", "approved_by": row.approved_by})
    seal_for_delivery(row, user, issued.secrets[0], reference=issued.reference)
    after_secret_issued(case, "user.password_set_by_admin")


_EXECUTORS = {"force_mfa_reset": _do_force_reset, "generate_backup_codes": _do_backup_codes,
              "set_temporary_password": _do_temporary_password}
_EXECUTABLE_FROM = {"force_mfa_reset": (m.VERIFIED,),
                    "generate_backup_codes": (m.VERIFIED, m.AWAITING_ENROLMENT),
                    "set_temporary_password": (m.VERIFIED, m.AWAITING_ENROLMENT)}


def _maybe_reactivate(case: RecoveryCase, user: User, directory: Directory) -> None:
    """After a suspected attack, the real user gets the account back only once verified again
    and both a real MFA reset and a new password were carried out for them: in the current round
    of whichever case carries them. A suspension ends the round, so what the attacker's round
    decided (a reset after which they enrolled their own factor) never counts; and a new case,
    opened after the suspended one expired, reactivates as well (DESIGN.md, "Suspected attack")."""
    if user.status != "suspended":
        return
    done = set(db.session.scalars(select(CaseAction.action).where(
        CaseAction.case_id == case.id, CaseAction.status == "done", CaseAction.round == case.round)).all())
    if {"force_mfa_reset", "set_temporary_password"} <= done:
        directory.reactivate(ref(user))
        if directory.kind != BUILTIN:
            records.mirror_status(user, "active")
        record_event(Actor.system(case.tenant_id), AuditAction.USER_REACTIVATED, tenant_id=case.tenant_id,
                     target_user_id=user.id, case_id=case.id,
                     reason="Verified again after a suspected attack; MFA reset and password set.",
                     details={"round": case.round} if directory.kind == BUILTIN
                     else {"round": case.round, "directory": directory.kind})
