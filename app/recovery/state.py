"""The case's state: which move is allowed from which state and to whom, and the moves every
part of recovery shares (refuse, escalate). Every transition of a case goes through here."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

from sqlalchemy import and_, select

from app.accounts.models import Channel, FederatedIdentity, User
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.emails import same_mailbox
from app.errors import Conflict, Forbidden, NotFound, ValidationFailed
from app.extensions import db, utcnow
from app.recovery import models as m
from app.recovery.models import RecoveryCase
from app.recovery.pending import cancel_pending
from app.tenants.models import Agent, AgentIdentity

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
    "expire": (m.AWAITING_VERIFICATION,),
    # Steps 2-5 (app/recovery/actions.py, app/recovery/closing.py).
    "force_mfa_reset": (m.VERIFIED,),
    "approve": (m.VERIFIED,),
    "generate_backup_codes": (m.VERIFIED, m.AWAITING_ENROLMENT),
    "set_temporary_password": (m.VERIFIED, m.AWAITING_ENROLMENT),
    "suspend_user": (m.RECEIVED, m.AWAITING_VERIFICATION, m.VERIFIED, m.AWAITING_ENROLMENT, m.RECOVERED,
                     m.ESCALATED, m.REFUSED, m.EXPIRED, m.CLOSED),
    "send_follow_up": (m.RECOVERED, m.CLOSED),
    "close": (m.RECOVERED,),
    # Runbook step 4: the user's own enrolment closes the loop (app/recovery/closing.py).
    "record_enrolment": (m.VERIFIED, m.AWAITING_ENROLMENT),
}
SENIOR_ONLY = {"resume", "reopen", "approve"}
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


def is_own_account(actor: Actor, case: RecoveryCase) -> bool:
    """Whether the acting agent is the case's user: the same mailbox (however it is spelt: Unicode
    width, case, a plus-alias), the user's external id, or a federated subject linked to both.
    Any one is enough: a full-width copy of an agent's own address once passed a raw compare."""
    agent = db.session.get(Agent, uuid.UUID(actor.id)) if actor.id else None
    user = db.session.get(User, case.user_id)
    if agent is None or user is None:
        return False
    addresses = [user.email, *db.session.scalars(select(Channel.value).where(
        Channel.user_id == user.id, Channel.kind == "email")).all()]
    if any(same_mailbox(agent.email, address) for address in addresses):
        return True
    if agent.external_id and user.external_id and _id_key(agent.external_id) == _id_key(user.external_id):
        return True
    return db.session.scalars(select(AgentIdentity.id).join(FederatedIdentity, and_(
        FederatedIdentity.issuer == AgentIdentity.issuer, FederatedIdentity.subject == AgentIdentity.subject,
        FederatedIdentity.tenant_id == AgentIdentity.tenant_id)).where(
        AgentIdentity.agent_id == agent.id, FederatedIdentity.user_id == user.id)).first() is not None


def _id_key(external_id: str) -> str:
    return unicodedata.normalize("NFKC", external_id).casefold().strip()


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
    user = db.session.get(User, case.user_id) if case.user_id else None
    if user is None:
        raise Conflict("The case names no account.", details={"state": case.state})
    return user


def refuse(actor: Actor, case: RecoveryCase, trigger: str, reason: str, *,
            facts: dict[str, Any] | None = None) -> None:
    previous = case.state
    case.refusal_trigger = trigger
    if trigger not in case.flags:
        case.flags = [*case.flags, trigger]
    move(case, m.REFUSED)
    record_event(actor, AuditAction.RECOVERY_REFUSED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason,
                 details={"trigger": trigger, "from_state": previous, **(facts or {})})
    # A refusal ends the round: a reset or secret decided in it must not run if a senior admin
    # reopens the case and it is verified again (on other evidence, for another reason).
    cancel_pending(actor, case, "case refused")


def escalate(actor: Actor, case: RecoveryCase, flags: list[str], reason: str, *,
              facts: dict[str, Any] | None = None) -> None:
    previous = case.state
    case.state_before_escalation = previous
    case.flags = sorted(set(case.flags) | set(flags))
    move(case, m.ESCALATED)
    record_event(actor, AuditAction.RECOVERY_ESCALATED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason,
                 details={"flags": flags, "from_state": previous, **(facts or {})})


def ensure_reason(reason: str | None) -> str:
    """Every destructive or deciding action carries a reason into the audit trail."""
    if not reason or not reason.strip():
        raise ValidationFailed("A reason is required.", details={"field": "reason"})
    return reason.strip()
