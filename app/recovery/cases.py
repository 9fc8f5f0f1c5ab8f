"""Opening and screening recovery cases, and the case-level decisions: refuse, escalate, resume,
reopen, expire. Each is one call, allowed only from the states `state.ALLOWED_FROM` lists, under
a row lock on the case, with its audit event."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.accounts.services import normalize_email
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.errors import Conflict, ValidationFailed
from app.extensions import db, utcnow
from app.jobs.services import enqueue
from app.recovery import models as m
from app.recovery.effects import locate_user
from app.recovery.models import RecoveryCase
from app.recovery.risk import screen
from app.recovery.state import (
    ALLOWED_FROM,
    REFUSAL_TRIGGERS,
    StateConflict,
    close_enrolment_window,
    effect_key,
    end_round,
    ensure_reason,
    escalate,
    load_case,
    move,
    refuse,
    require,
)
from app.tenants.models import Tenant

# --- intake ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryRequest:
    user_email: str | None
    external_user_id: str | None
    ticket_id: str | None
    requester_email: str | None
    subject: str | None
    text: str | None


def _find_user(tenant: Tenant, request: RecoveryRequest) -> tuple[User | None, str | None]:
    email = None
    if request.user_email:
        try:
            email = normalize_email(request.user_email)
        except ValidationFailed:
            email = None
    user = locate_user(tenant, email=email, external_id=request.external_user_id)
    return user, email or (request.user_email or "")[:320].lower() or None


@dataclass(frozen=True)
class Opening:
    """What a recovery request did: opened a case, joined the user's open one, or repeated a
    ticket that already has its case (`repeat`: nothing was written)."""

    case: RecoveryCase
    joined: bool
    repeat: bool = False


def open_case(tenant: Tenant, actor: Actor, request: RecoveryRequest, *,
              integration_id: uuid.UUID | None) -> tuple[RecoveryCase, bool]:
    """Open a case for the request, or join the user's open one; returns (case, joined)."""
    opening = take_request(tenant, actor, request, integration_id=integration_id)
    return opening.case, opening.joined


def take_request(tenant: Tenant, actor: Actor, request: RecoveryRequest, *,
                 integration_id: uuid.UUID | None) -> Opening:
    """Open a case for the request, join the user's open one, or answer with the case its
    ticket already has.

    The answer looks the same whether or not the account exists: an unknown email gets a case
    (refused as unverifiable by the screen), and repeats for it join that case like a real one.
    A ticket (integration and ticket id) opens at most one case, ever: Jira signs no timestamp,
    so its signed body replayed under a new delivery id must not open a case once the first was
    refused. A joining request is screened like a new one.
    """
    ticket = _claim_ticket(request, integration_id)
    if isinstance(ticket, RecoveryCase):
        return Opening(ticket, joined=True, repeat=True)
    user, email = _find_user(tenant, request)
    existing = _open_case_for(tenant, user, email)
    if existing is None:
        case = RecoveryCase(
            id=uuid.uuid4(), tenant_id=tenant.id, user_id=user.id if user else None, requested_email=email,
            state=m.RECEIVED, integration_id=integration_id, ticket_id=request.ticket_id,
            requester_email=(request.requester_email or "")[:320].lower() or None,
            subject=(request.subject or "")[:500] or None, text=(request.text or "")[:10_000] or None,
            opened_at=utcnow(), flags=[],
        )
        try:
            # A concurrent request for the same user may insert its case first: the unique
            # open-case index holds this insert until that one commits, then refuses it. Undo
            # only this insert (the savepoint) and join the case that won.
            with db.session.begin_nested():
                db.session.add(case)
        except IntegrityError:
            existing = _open_case_for(tenant, user, email)
            if existing is None:
                raise
        else:
            if ticket is not None:
                ticket.case_id = case.id
            record_event(actor, AuditAction.RECOVERY_REQUESTED, tenant_id=tenant.id,
                         target_user_id=case.user_id, case_id=case.id,
                         details={"joined": False, "ticket_id": request.ticket_id,
                                  "integration_id": str(integration_id) if integration_id else None})
            # The screen runs in a task, so a broker outage delays it and loses nothing.
            enqueue("rekey.recovery.screen_case", case_id=str(case.id))
            return Opening(case, joined=False)
    existing.requests += 1
    existing.updated_at = utcnow()
    if ticket is None:
        ticket = _request_row(request, integration_id, ticket_id=None)
        db.session.add(ticket)
    ticket.case_id, ticket.joined = existing.id, True
    db.session.flush()
    record_event(actor, AuditAction.RECOVERY_REQUESTED, tenant_id=tenant.id,
                 target_user_id=existing.user_id, case_id=existing.id,
                 details={"joined": True, "ticket_id": request.ticket_id,
                          "integration_id": str(integration_id) if integration_id else None})
    _screen_joining_request(tenant, existing)
    return Opening(existing, joined=True)


def _request_row(request: RecoveryRequest, integration_id: uuid.UUID | None, *,
                 ticket_id: str | None) -> m.CaseRequest:
    return m.CaseRequest(
        id=uuid.uuid4(), integration_id=integration_id, ticket_id=ticket_id,
        requester_email=(request.requester_email or "")[:320].lower() or None,
        subject=(request.subject or "")[:500] or None, text=(request.text or "")[:10_000] or None,
        received_at=utcnow())


def _claim_ticket(request: RecoveryRequest,
                  integration_id: uuid.UUID | None) -> m.CaseRequest | RecoveryCase | None:
    """Claim the request's ticket (a new row), or find the case it already has. A concurrent
    copy of the same ticket waits on the unique index until the first commits, then finds it."""
    if integration_id is None or not request.ticket_id:
        return None
    ticket_id = request.ticket_id[:200]
    row = _request_row(request, integration_id, ticket_id=ticket_id)
    try:
        with db.session.begin_nested():
            db.session.add(row)
    except IntegrityError:
        first = db.session.scalars(select(m.CaseRequest).where(
            m.CaseRequest.integration_id == integration_id, m.CaseRequest.ticket_id == ticket_id)).first()
        case = db.session.get(RecoveryCase, first.case_id) if first and first.case_id else None
        if case is None:  # the first copy rolled back; the sender's retry will be processed
            raise Conflict("This ticket is being processed; retry later.") from None
        return case
    return row


def _screen_joining_request(tenant: Tenant, case: RecoveryCase) -> None:
    """Screen a joining request like a new one: an urgent second ticket ("the CEO needs access
    now, skip the checks") escalates the case instead of riding on it unseen. A case not yet
    screened is left to its screen task, which reads every request of the case."""
    if case.state == m.RECEIVED or case.user_id is None:
        return
    user = db.session.get(User, case.user_id)
    if user is None:
        return
    result = screen(tenant, case, user)
    system = Actor.system(case.tenant_id)
    if result.refuse:
        if case.state in ALLOWED_FROM["refuse"] and case.state != m.SUSPECTED_ATTACK:
            ended = refuse(system, case, result.refuse,
                           "Unusual recent sign-in activity on the account (a joining request).",
                           facts=result.facts)
            enqueue("rekey.recovery.notify_senior_admins", case_id=str(case.id), case_round=ended)
            return
        new = [result.refuse] if result.refuse not in case.flags else []
    else:
        new = [flag for flag in result.escalate if flag not in case.flags]
    if not new:
        return
    if case.state in ALLOWED_FROM["escalate"]:
        escalate(system, case, new, "Risk screen of a joining request: " + ", ".join(new),
                 facts={**result.facts, "joined": True})
        return
    # Already with a senior admin (escalated, or a suspected attack): the flags are added.
    case.flags = sorted(set(case.flags) | set(new))
    case.updated_at = utcnow()
    record_event(system, AuditAction.RECOVERY_SCREENED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, details={"flags": new, "joined": True, "state": case.state, **result.facts})


def _open_case_for(tenant: Tenant, user: User | None, email: str | None) -> RecoveryCase | None:
    """The case a new request joins: the user's open case, or for an unknown account a recent
    case for the same email (locked, so concurrent joins count every request)."""
    if user is not None:
        return db.session.scalars(select(RecoveryCase).where(
            RecoveryCase.user_id == user.id, RecoveryCase.state.in_(m.OPEN_STATES)).with_for_update()).first()
    if email:
        return db.session.scalars(select(RecoveryCase).where(
            RecoveryCase.tenant_id == tenant.id, RecoveryCase.user_id.is_(None),
            RecoveryCase.requested_email == email,
            RecoveryCase.opened_at >= utcnow() - timedelta(hours=int(tenant.setting("verification_ttl_hours"))),
        ).with_for_update()).first()
    return None


def screen_case(case_id: uuid.UUID) -> RecoveryCase | None:
    """Apply the risk screen to a newly received case (a no-op once it has been screened)."""
    case = db.session.scalars(select(RecoveryCase).where(RecoveryCase.id == case_id).with_for_update()).first()
    if case is None or case.state != m.RECEIVED:
        return case
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    system = Actor.system(case.tenant_id)
    user = records.user_by_id(case.user_id)
    if user is None:
        refuse(system, case, "unverifiable", "The request names no account that can be verified.")
        return case
    result = screen(tenant, case, user)
    if result.refuse:
        ended = refuse(system, case, result.refuse, "Unusual recent sign-in activity on the account.",
                       facts=result.facts)
        enqueue("rekey.recovery.notify_senior_admins", case_id=str(case.id), case_round=ended)
    elif result.escalate:
        escalate(system, case, result.escalate, "Risk screen: " + ", ".join(result.escalate),
                  facts=result.facts)
        case.state_before_escalation = m.AWAITING_VERIFICATION
        case.verification_expires_at = utcnow() + timedelta(hours=int(tenant.setting("verification_ttl_hours")))
    else:
        move(case, m.AWAITING_VERIFICATION)
        case.verification_expires_at = utcnow() + timedelta(hours=int(tenant.setting("verification_ttl_hours")))
        record_event(system, AuditAction.RECOVERY_SCREENED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                     case_id=case.id, details={"flags": [], **result.facts,
                                               "expires_at": case.verification_expires_at.isoformat()})
    return case


# --- transitions ----------------------------------------------------------------------------


def refuse_case(actor: Actor, case_id: uuid.UUID | str, *, trigger: str, reason: str) -> RecoveryCase:
    """Refuse the case with one of the runbook's triggers."""
    reason = ensure_reason(reason)
    if trigger not in REFUSAL_TRIGGERS:
        raise ValidationFailed("Unknown refusal trigger.", details={"allowed": list(REFUSAL_TRIGGERS)})
    case = load_case(actor, case_id, lock=True)
    require(case, "refuse", actor)
    refuse(actor, case, trigger, reason)
    return case


def escalate_case(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> RecoveryCase:
    """Hand the case to a senior admin (an agent's gut says no, or a signal appeared)."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "escalate", actor)
    escalate(actor, case, ["agent_escalation"], reason)
    return case


def resume_case(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> RecoveryCase:
    """A senior admin lets an escalated case continue where it was."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "resume", actor)
    target = case.state_before_escalation
    if case.state == m.SUSPECTED_ATTACK or target not in (m.AWAITING_VERIFICATION, m.VERIFIED,
                                                          m.AWAITING_ENROLMENT):
        # After a suspected attack the real user is verified again from the start.
        target = m.AWAITING_VERIFICATION
    if target == m.AWAITING_VERIFICATION:
        _renew_ttl(case)
    move(case, target)
    record_event(actor, AuditAction.RECOVERY_RESUMED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason, details={"to_state": target, "flags": case.flags})
    return case


def reopen_case(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> RecoveryCase:
    """A senior admin reopens a refused or expired case; verification starts again."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "reopen", actor)
    if case.user_id is None:
        raise StateConflict("A case for an unknown account cannot be reopened.", details={"state": case.state})
    busy = db.session.scalars(select(RecoveryCase.id).where(
        RecoveryCase.user_id == case.user_id, RecoveryCase.state.in_(m.OPEN_STATES))).first()
    if busy is not None:
        raise StateConflict("The user has another open case.", details={"open_case_id": str(busy)})
    previous = case.state
    _renew_ttl(case)
    case.closed_at = None
    end_round(case)
    move(case, m.AWAITING_VERIFICATION)
    record_event(actor, AuditAction.RECOVERY_REOPENED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason, details={"from_state": previous, "round": case.round})
    return case


def _renew_ttl(case: RecoveryCase) -> None:
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    case.verification_expires_at = utcnow() + timedelta(hours=int(tenant.setting("verification_ttl_hours")))


def expire_overdue(limit: int = 500) -> int:
    """Expire every unverified case past its verification TTL, and every escalated case past
    its escalation TTL (the beat runs this); the senior admins hear of the escalations."""
    now = utcnow()
    stmt = (select(RecoveryCase).where(
        ((RecoveryCase.state == m.AWAITING_VERIFICATION) & (RecoveryCase.verification_expires_at < now))
        | ((RecoveryCase.state == m.ESCALATED) & (RecoveryCase.escalation_expires_at < now)))
        .order_by(RecoveryCase.updated_at).limit(limit))
    if db.engine.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    count = 0
    for case in db.session.scalars(stmt).all():
        system = Actor.system(case.tenant_id)
        escalated = case.state == m.ESCALATED
        trigger = "escalation_expired" if escalated else "unverifiable"
        reason = ("No senior admin resumed or refused the escalated case in time." if escalated
                  else "Not verified before the case's time limit.")
        case.refusal_trigger = trigger
        move(case, m.EXPIRED)
        record_event(system, AuditAction.RECOVERY_EXPIRED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, reason=reason, details={"trigger": trigger})
        if escalated:
            # An escalation is a suspicion nobody settled: treat it as one for the enrolment
            # window, and tell the senior admins it lapsed.
            close_enrolment_window(system, case, reason)
            enqueue("rekey.recovery.notify_senior_admins", case_id=str(case.id), case_round=case.round,
                    why="escalation_expired")
        count += 1
    return count


_ADMIN_NOTICES = {
    "refused": ("Rekey: recovery refused for unusual activity",
                "Recovery case {case} was refused automatically ({trigger}). Flags: {flags}. Review it in "
                "the admin console; only a senior admin may reopen it."),
    "escalation_expired": ("Rekey: an escalated recovery expired",
                           "Recovery case {case} was escalated to the senior admins and expired without a "
                           "decision. Flags: {flags}. Review it in the admin console; only a senior admin "
                           "may reopen it."),
}


def notify_senior_admins(case_id: uuid.UUID, round_: int = 1, why: str = "refused") -> int:
    """Tell the tenant's senior admins a case was refused for unusual activity, or that its
    escalation expired (the runbook's escalation). Once per round of the case and reason: a
    second run finds the effect claimed and sends nothing, while a second automatic refusal
    after a reopen is news again. `round_` is the round the news is about (a message queued
    before rounds existed names none: round 1, the key it had then)."""
    from app.jobs.services import claim_effect
    from app.messaging import send
    from app.tenants.models import Agent

    case = db.session.get(RecoveryCase, case_id)
    if case is None or why not in _ADMIN_NOTICES:
        return 0
    step = "notify_senior_admins" if why == "refused" else f"notify_senior_admins:{why}"
    if not claim_effect(effect_key(case.id, round_, step)):
        return 0
    admins = db.session.scalars(select(Agent).where(
        Agent.tenant_id == case.tenant_id, Agent.role == "senior_admin", Agent.active.is_(True))).all()
    subject, text = _ADMIN_NOTICES[why]
    body = text.format(case=case.id, trigger=case.refusal_trigger, flags=", ".join(case.flags) or "none")
    message = "notify" if why == "refused" else why
    for admin in admins:
        send("email", admin.email, subject=subject, body=body,
             key=effect_key(case.id, round_, f"{message}:{admin.id}"))
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_SENIOR_ADMINS_NOTIFIED,
                 tenant_id=case.tenant_id, target_user_id=case.user_id, case_id=case.id,
                 details={"admins": len(admins), "trigger": case.refusal_trigger, "why": why, "round": round_})
    return len(admins)
