"""The case's state: which move is allowed from which state and to whom, and the moves every
part of recovery shares (refuse, escalate). Every transition of a case goes through here."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.accounts.services import agent_owns_user
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.extensions import db, utcnow
from app.recovery import models as m
from app.recovery.models import RecoveryCase, VerificationCall
from app.recovery.pending import cancel_pending
from app.tenants.models import Agent, Tenant
from app.tenants.step_up import require_step_up

REFUSAL_TRIGGERS = ("unverifiable", "urgency", "unusual_activity", "agent_judgement")

# action -> the states it may start from. The runbook's order is enforced here and nowhere else.
ALLOWED_FROM: dict[str, tuple[str, ...]] = {
    "screen": (m.RECEIVED,),
    "record_evidence": (m.AWAITING_VERIFICATION, m.VERIFIED),
    "place_verification_call": (m.AWAITING_VERIFICATION,),
    "confirm_verification_call": (m.AWAITING_VERIFICATION, m.VERIFIED),
    "escalate": (m.RECEIVED, m.AWAITING_VERIFICATION, m.VERIFIED, m.AWAITING_ENROLMENT),
    "refuse": (m.RECEIVED, m.AWAITING_VERIFICATION, m.VERIFIED, m.AWAITING_ENROLMENT, m.ESCALATED,
               m.SUSPECTED_ATTACK),
    "resume": (m.ESCALATED, m.SUSPECTED_ATTACK),
    "reopen": (m.REFUSED, m.EXPIRED),
    # An unverified case past its TTL; an escalated case nobody took up (tenant TTLs).
    "expire": (m.AWAITING_VERIFICATION, m.ESCALATED),
    # Steps 2-5 (app/recovery/actions.py, app/recovery/closing.py).
    "force_mfa_reset": (m.VERIFIED,),
    # Codes and a temporary password may wait for approval after the reset, too.
    "approve": (m.VERIFIED, m.AWAITING_ENROLMENT),
    "generate_backup_codes": (m.VERIFIED, m.AWAITING_ENROLMENT),
    "set_temporary_password": (m.VERIFIED, m.AWAITING_ENROLMENT),
    "suspend_user": (m.RECEIVED, m.AWAITING_VERIFICATION, m.VERIFIED, m.AWAITING_ENROLMENT, m.RECOVERED,
                     m.ESCALATED, m.REFUSED, m.EXPIRED, m.CLOSED),
    "send_follow_up": (m.RECOVERED, m.CLOSED),
    "close": (m.RECOVERED,),
    # Runbook step 4: the user's own enrolment closes the loop (app/recovery/closing.py).
    "record_enrolment": (m.VERIFIED, m.AWAITING_ENROLMENT),
    # Federated evidence (app/recovery/federated.py): a link that starts an observed sign-in.
    "send_federated_signin_link": (m.AWAITING_VERIFICATION,),
    # An action an external directory refused for good, queued again once the backend is fixed.
    "retry_action": (m.VERIFIED, m.AWAITING_ENROLMENT),
}
SENIOR_ONLY = {"resume", "reopen", "approve", "retry_action"}
# Actions only a senior admin may take from these states: ending a suspected attack is a
# decision on an incident (the user stays suspended), not a support agent's call.
SENIOR_ONLY_FROM: dict[str, tuple[str, ...]] = {"refuse": (m.SUSPECTED_ATTACK,)}
# Transitions Rekey makes itself (a task, the user's enrolment); never offered to an agent.
NOT_AGENT_ACTIONS = ("screen", "expire", "record_enrolment")


class StateConflict(Conflict):
    code = "invalid_state"


class CaseEscalated(Forbidden):
    code = "case_escalated"


class CaseRefused(Forbidden):
    code = "case_refused"


def allowed_actions(case: RecoveryCase, actor: Actor) -> list[str]:
    """What this actor may do to the case now (shown on the case, and in 409s)."""
    if case.state in (m.ESCALATED, m.REFUSED, m.EXPIRED) and not actor.is_senior_admin:
        return []
    return sorted(a for a, states in ALLOWED_FROM.items()
                  if case.state in states and a not in NOT_AGENT_ACTIONS
                  and (actor.is_senior_admin or not _senior_only(a, case.state)))


def _senior_only(action: str, state: str) -> bool:
    return action in SENIOR_ONLY or state in SENIOR_ONLY_FROM.get(action, ())


def require(case: RecoveryCase, action: str, actor: Actor) -> None:
    """Refuse an action the case's state or the actor's role does not allow."""
    if case.state == m.ESCALATED and actor.type == "agent" and not actor.is_senior_admin:
        raise CaseEscalated("The case is escalated; only a senior admin may act on it.",
                            details={"state": case.state})
    if actor.type == "agent" and case.user_id is not None and is_own_account(actor, case):
        # Separation of duties: nobody recovers, resets or approves their own account.
        raise Forbidden("Agents cannot act on their own account's recovery.", code="own_account")
    if _senior_only(action, case.state) and not actor.is_senior_admin:
        raise Forbidden("Only a senior admin may do this.", details={"action": action, "state": case.state})
    if case.state not in ALLOWED_FROM[action]:
        raise StateConflict(
            f"Cannot {action.replace('_', ' ')} a case that is {case.state}.",
            details={"state": case.state, "allowed_from": list(ALLOWED_FROM[action]),
                     "allowed_actions": allowed_actions(case, actor)},
        )
    if case.state in (m.REFUSED, m.EXPIRED) and actor.type == "agent" and not actor.is_senior_admin:
        # A refusal is final for support: only a senior admin reopens the case or acts on it
        # (a suspension would otherwise bring it back as an open case).
        raise CaseRefused("The case was refused; only a senior admin may act on it.",
                          details={"state": case.state})
    # Last, so a refusal for the state or the role comes first: a console actor's recent second
    # factor, or a tenant that forbids destructive actions by token (app/tenants/step_up.py).
    require_step_up(actor, action)


def is_own_account(actor: Actor, case: RecoveryCase) -> bool:
    """Whether the acting agent is the case's user (`accounts.services.agent_owns_user`)."""
    agent = db.session.get(Agent, uuid.UUID(actor.id)) if actor.id else None
    user = records.user_by_id(case.user_id)
    return agent is not None and user is not None and agent_owns_user(agent, user)


def load_case(actor: Actor, case_id: uuid.UUID | str, *, lock: bool = False) -> RecoveryCase:
    """The actor's tenant's case; another tenant's id is NotFound."""
    try:
        cid = case_id if isinstance(case_id, uuid.UUID) else uuid.UUID(str(case_id))
    except ValueError as exc:
        raise NotFound("No such case.") from exc
    stmt = select(RecoveryCase).where(RecoveryCase.id == cid, RecoveryCase.tenant_id == actor.tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    case = db.session.scalars(stmt).first()
    if case is None:
        raise NotFound("No such case.")
    return case


def move(case: RecoveryCase, state: str) -> None:
    case.state, case.updated_at = state, utcnow()
    if state in (m.CLOSED, m.REFUSED, m.EXPIRED):
        case.closed_at = case.updated_at


def case_user(case: RecoveryCase) -> User:
    """The case's user; a case that names no account has nobody to act on."""
    user = records.user_by_id(case.user_id)
    if user is None:
        raise Conflict("The case names no account.", details={"state": case.state})
    return user


def end_round(case: RecoveryCase) -> int:
    """End the case's round (a suspension, a refusal or a reopening); returns the round that
    ended. What was recorded or decided in it (evidence, a verified phone, an agent's video
    call, an action) no longer counts: it was judged not enough, or it is what a suspect passed.
    A code still on its way proves nothing in the next round either."""
    ended = case.round
    case.round = ended + 1
    db.session.execute(update(VerificationCall).where(
        VerificationCall.case_id == case.id, VerificationCall.status.in_(("pending", "sent"))
    ).values(status="expired", code_encrypted=None).execution_options(synchronize_session=False))
    return ended


def effect_key(case_id: uuid.UUID | str, round_: int, step: str) -> str:
    """The effect key of a step that happens once per round of a case (a senior admins'
    notice, the follow-up, the ticket comment): after a reopen or a suspension the case may
    need it again. Round 1 keeps the key the step had before rounds existed."""
    return f"case:{case_id}:{step}" if round_ == 1 else f"case:{case_id}:r{round_}:{step}"


def close_enrolment_window(actor: Actor, case: RecoveryCase, reason: str) -> None:
    """A case refused or suspected while its user has no factor left (after a reset): whoever
    knows the password could otherwise sign in to an enrolment session and bind their own
    factor. Restricted sessions are revoked and `enrolment_closed_at` refuses a factor-less
    sign-in until a case of the user is verified in a later round (`reopen_enrolment_window`)."""
    user = records.user_by_id(case.user_id)
    revoked = records.close_enrolment(user) if user is not None else None
    if user is None or revoked is None:
        return
    record_event(actor, AuditAction.USER_ENROLMENT_CLOSED, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=reason, details={"sessions_revoked": revoked, "state": case.state})


def reopen_enrolment_window(actor: Actor, case: RecoveryCase, reason: str | None) -> None:
    """The case was verified in a round after the one that closed the window: enrolment again."""
    user = records.user_by_id(case.user_id)
    if user is None or not records.reopen_enrolment(user):
        return
    record_event(actor, AuditAction.USER_ENROLMENT_REOPENED, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=reason, details={"round": case.round})


def refuse(actor: Actor, case: RecoveryCase, trigger: str, reason: str, *,
            facts: dict[str, Any] | None = None) -> int:
    """Refuse the case (audited with its trigger); returns the round the refusal ended."""
    previous = case.state
    case.refusal_trigger = trigger
    if trigger not in case.flags:
        case.flags = [*case.flags, trigger]
    move(case, m.REFUSED)
    record_event(actor, AuditAction.RECOVERY_REFUSED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason,
                 details={"trigger": trigger, "from_state": previous, "round": case.round, **(facts or {})})
    # A refusal ends the round: a reset or secret decided in it must not run if a senior admin
    # reopens the case and it is verified again (on other evidence, for another reason).
    cancel_pending(actor, case, "case refused")
    close_enrolment_window(actor, case, reason)
    return end_round(case)


def escalate(actor: Actor, case: RecoveryCase, flags: list[str], reason: str, *,
              facts: dict[str, Any] | None = None) -> None:
    previous = case.state
    case.state_before_escalation = previous
    case.flags = sorted(set(case.flags) | set(flags))
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    # Counted from the escalation: an escalation nobody takes up must not stay open forever.
    case.escalation_expires_at = utcnow() + timedelta(hours=float(tenant.setting("escalation_ttl_hours")))
    move(case, m.ESCALATED)
    record_event(actor, AuditAction.RECOVERY_ESCALATED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason,
                 details={"flags": flags, "from_state": previous, **(facts or {})})


def ensure_reason(reason: str | None) -> str:
    """Every destructive or deciding action carries a reason into the audit trail."""
    if not reason or not reason.strip():
        raise ValidationFailed("A reason is required.", details={"field": "reason"})
    return reason.strip()
