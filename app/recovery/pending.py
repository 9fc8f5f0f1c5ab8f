"""Pending actions of a case (awaiting approval, scheduled, queued): found and cancelled here,
below the state moves that cancel them (a refusal, a suspension)."""

from __future__ import annotations

from sqlalchemy import select

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.extensions import db, utcnow
from app.recovery.models import CaseAction, RecoveryCase

PENDING = ("awaiting_approval", "scheduled", "queued")


def pending_actions(case: RecoveryCase, action: str | None = None) -> list[CaseAction]:
    """The case's actions still waiting or queued (locked), optionally only `action`."""
    stmt = select(CaseAction).where(CaseAction.case_id == case.id, CaseAction.status.in_(PENDING))
    if action:
        stmt = stmt.where(CaseAction.action == action)
    return list(db.session.scalars(stmt.with_for_update()).all())


def cancel_pending(actor: Actor, case: RecoveryCase, why: str) -> None:
    """Cancel every pending action of the case, each audited with `why`."""
    for action in pending_actions(case):
        action.status, action.done_at = "cancelled", utcnow()
        record_event(actor, AuditAction.RECOVERY_ACTION_CANCELLED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, reason=why,
                     details={"action_id": str(action.id), "action": action.action})
