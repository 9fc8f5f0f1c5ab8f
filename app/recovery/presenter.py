"""What an agent sees of a case: its facts, the recommended path with the runbook's reasons,
what they may do next, and the timeline from the audit trail."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.accounts.services import backup_codes_remaining, mask_phone
from app.actor import Actor
from app.audit.models import AuditEvent
from app.extensions import db
from app.recovery.evidence import COMPROMISED_REASON, eligible_channels
from app.recovery.models import CaseAction, Evidence, RecoveryCase
from app.recovery.rounds import required_types
from app.recovery.state import allowed_actions, load_case


def recommended_path(user: User | None) -> dict[str, str] | None:
    """Runbook steps 2-3 in order: backup codes, then a federated identity, then a reset."""
    if user is None:
        return None
    remaining = backup_codes_remaining(user.id)
    if remaining:
        return {"path": "use_backup_code",
                "reason": f"{remaining} backup codes remain: the user signs in with one and re-enrols; "
                          "no reset needed."}
    if user.identities:
        issuers = ", ".join(sorted({i.issuer for i in user.identities}))
        return {"path": "federated_signin",
                "reason": f"A federated identity is linked ({issuers}): the user signs in with it and "
                          "re-enrols; no reset needed."}
    detail = "no backup codes remain" + ("" if records.has_active_factor(user) else " and no factor is enrolled")
    return {"path": "force_mfa_reset", "reason": f"{detail.capitalize()}: force an MFA reset."}


def list_cases(actor: Actor, *, state: str | None, limit: int) -> list[RecoveryCase]:
    stmt = select(RecoveryCase).where(RecoveryCase.tenant_id == actor.tenant_id)
    if state:
        stmt = stmt.where(RecoveryCase.state == state)
    return list(db.session.scalars(stmt.order_by(RecoveryCase.opened_at.desc()).limit(limit)).all())


def describe_case(actor: Actor, case_id: uuid.UUID | str) -> dict[str, Any]:
    case = load_case(actor, case_id)
    user = records.user_by_id(case.user_id)
    evidence = db.session.scalars(select(Evidence).where(Evidence.case_id == case.id)
                                  .order_by(Evidence.recorded_at)).all()
    timeline = db.session.scalars(select(AuditEvent).where(
        AuditEvent.tenant_id == case.tenant_id, AuditEvent.case_id == case.id).order_by(AuditEvent.seq)).all()
    return {
        "id": case.id, "state": case.state, "user_id": case.user_id, "flags": case.flags,
        "refusal_trigger": case.refusal_trigger, "ticket_id": case.ticket_id, "opened_at": case.opened_at,
        "updated_at": case.updated_at, "requester_email": case.requester_email, "subject": case.subject,
        "requests": case.requests, "verification_expires_at": case.verification_expires_at,
        "verified_at": case.verified_at, "closed_at": case.closed_at, "round": case.round,
        "escalation_expires_at": case.escalation_expires_at,
        "evidence": evidence,
        "evidence_required_types": required_types(case) if user else 0,
        # Phones on file since before the case's day; each says whether it may be called now.
        "callable_channels": [
            {"id": c.id, "kind": c.kind, "value": mask_phone(c.value), "added_at": c.added_at,
             "callable": c.compromised_at is None,
             "not_callable_reason": COMPROMISED_REASON if c.compromised_at is not None else None}
            for c in (eligible_channels(case) if user else [])
        ],
        "recommended_path": recommended_path(user),
        "allowed_actions": allowed_actions(case, actor),
        "pending_actions": db.session.scalars(select(CaseAction).where(
            CaseAction.case_id == case.id, CaseAction.status.in_(("awaiting_approval", "scheduled", "queued")))
            .order_by(CaseAction.created_at)).all(),
        "timeline": timeline,
    }
