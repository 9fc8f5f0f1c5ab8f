"""What the console shows besides what the API's presenter already gives: the queue with what
awaits a senior admin, why each action not allowed now is not, a case's open verification calls
(attempts left), a user's notes. Reads only, always within the actor's tenant."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from app.accounts.models import Note
from app.accounts.services import get_user
from app.actor import Actor
from app.extensions import db
from app.recovery import models as m
from app.recovery.commands import AGENT_ACTIONS
from app.recovery.models import CaseAction, RecoveryCase, VerificationCall
from app.recovery.presenter import list_cases
from app.recovery.state import ALLOWED_FROM, SENIOR_ONLY, SENIOR_ONLY_FROM, allowed_actions, load_case
from app.tenants.step_up import DESTRUCTIVE_ACTIONS

OPEN_STATES = m.OPEN_STATES


def queue(actor: Actor, *, state: str | None, limit: int = 200) -> dict[str, Any]:
    """The tenant's open cases newest first (or those in `state`), and for a senior admin what
    awaits them: escalated cases and actions awaiting a second person's approval."""
    cases = list_cases(actor, state=state, limit=limit)
    if not state:
        cases = [c for c in cases if c.state in OPEN_STATES]
    awaiting: list[dict[str, Any]] = []
    if actor.is_senior_admin:
        approvals = db.session.scalars(select(CaseAction).where(
            CaseAction.tenant_id == actor.tenant_id, CaseAction.status == "awaiting_approval")
            .order_by(CaseAction.created_at.desc()).limit(limit)).all()
        awaiting += [{"case_id": a.case_id, "what": f"approve {a.action.replace('_', ' ')}",
                      "own": a.requested_by == actor.id} for a in approvals]
        escalated = db.session.scalars(select(RecoveryCase).where(
            RecoveryCase.tenant_id == actor.tenant_id, RecoveryCase.state.in_((m.ESCALATED, m.SUSPECTED_ATTACK)))
            .order_by(RecoveryCase.opened_at.desc()).limit(limit)).all()
        awaiting += [{"case_id": c.id, "what": c.state.replace("_", " "), "own": False} for c in escalated]
    return {"cases": cases, "awaiting": awaiting}


def unavailable_actions(case: RecoveryCase, actor: Actor) -> list[dict[str, str]]:
    """Each agent action not allowed now, with why (the rules are the state module's)."""
    allowed = set(allowed_actions(case, actor))
    out = []
    for action in AGENT_ACTIONS:
        if action in allowed:
            continue
        if case.state in (m.ESCALATED, m.REFUSED, m.EXPIRED) and not actor.is_senior_admin:
            why = f"The case is {case.state}: only a senior admin may act on it."
        elif (action in SENIOR_ONLY or case.state in SENIOR_ONLY_FROM.get(action, ())) and not actor.is_senior_admin:
            why = "Only a senior admin may do this."
        else:
            states = ", ".join(s.replace("_", " ") for s in ALLOWED_FROM.get(action, ()))
            why = f"Not while the case is {case.state.replace('_', ' ')} (only when {states})."
        out.append({"action": action, "why": why})
    return out


def is_destructive(action: str) -> bool:
    return action in DESTRUCTIVE_ACTIONS


def open_calls(actor: Actor, case_id: uuid.UUID | str) -> list[dict[str, Any]]:
    """The case's verification calls still waiting for a code, with the attempts left."""
    case = load_case(actor, case_id)
    calls = db.session.scalars(select(VerificationCall).where(
        VerificationCall.case_id == case.id, VerificationCall.status == "pending")
        .order_by(VerificationCall.created_at.desc())).all()
    return [{"id": c.id, "method": c.method, "attempts_left": max(c.max_attempts - c.attempts, 0),
             "expires_at": c.expires_at} for c in calls]


def user_notes(actor: Actor, user_id: uuid.UUID | str) -> list[Note]:
    """The notes on the tenant's user, newest first."""
    assert actor.tenant_id is not None
    user = get_user(actor.tenant_id, user_id)
    return list(db.session.scalars(select(Note).where(Note.user_id == user.id)
                                   .order_by(Note.created_at.desc())).all())


def unavailable_actions_for(actor: Actor, case_id: uuid.UUID | str) -> list[dict[str, str]]:
    return unavailable_actions(load_case(actor, case_id), actor)


def require_case(actor: Actor, case_id: uuid.UUID | str) -> None:
    """NotFound unless the case is the actor's tenant's."""
    load_case(actor, case_id)
