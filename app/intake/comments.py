"""Status comments back on the originating ticket (runbook step 5): the intake's outbound half.

Recovery queues `rekey.recovery.post_ticket_comment` by name when a case closes; the comment is
written here, above recovery, because it needs the integration the ticket came through."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy import select

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import decrypt
from app.extensions import db
from app.intake.models import Integration
from app.jobs.services import claim_effect
from app.recovery.models import CaseAction, CaseRequest, RecoveryCase
from app.recovery.rounds import accepted_types
from app.recovery.state import effect_key
from integrations.base import TicketRef
from integrations.registry import ticketing_client


def _ticket_comment(case: RecoveryCase) -> str:
    reset = db.session.scalars(select(CaseAction).where(
        CaseAction.case_id == case.id, CaseAction.status == "done", CaseAction.round == case.round)).all()
    done = ", ".join(sorted({a.action for a in reset})) or "none (the user recovered on their own)"
    return (f"Rekey: the account recovery for this request is complete (case {case.id}). "
            f"Identity verified out of band by: {', '.join(accepted_types(case)) or 'n/a'}. "
            f"Admin actions: {done}. The user enrolled a new factor and was sent a follow-up. "
            "No codes or passwords are ever shared in tickets; the audit log holds the details.")


def _comment_key(case: RecoveryCase, request: CaseRequest | None = None) -> str:
    """The vendor-side idempotency key of the round's comment (round 1 keeps the original); a
    ticket that joined the case has its own."""
    key = f"rekey-case-{case.id}" if case.round == 1 else f"rekey-case-{case.id}-r{case.round}"
    return key if request is None else f"{key}-t{request.id.hex[:12]}"


def post_ticket_comment(case_id: uuid.UUID, request_id: uuid.UUID | None = None) -> str | None:
    """Post the status comment on the originating ticket, or on the joining ticket `request_id`,
    once (the vendor's API, signed where it supports it). Transient failures raise for a retry;
    the effect is claimed first."""
    case = db.session.get(RecoveryCase, case_id)
    if case is None:
        return None
    request: CaseRequest | None = None
    if request_id is not None:
        request = db.session.get(CaseRequest, request_id)
        if request is None or request.case_id != case.id:
            return None
        integration_id, ticket_id = request.integration_id, request.ticket_id
        step = f"ticket_comment:{request.id}"
    else:
        integration_id, ticket_id, step = case.integration_id, case.ticket_id, "ticket_comment"
    if integration_id is None or ticket_id is None:
        return None
    integration = db.session.get(Integration, integration_id)
    # Once per round: a case recovered again after a suspicion reports again.
    if integration is None or not claim_effect(effect_key(case.id, case.round, step)):
        return None
    credentials: dict[str, Any] = (json.loads(decrypt(integration.outbound_encrypted))
                                   if integration.outbound_encrypted else {})
    if integration.kind == "standard":
        credentials = {"secret": decrypt(integration.secret_encrypted), **credentials}
        base_url = integration.callback_url or ""
    else:
        base_url = credentials.pop("base_url", "")
    if not base_url:
        return None  # no outbound configured for this integration: nothing to post to
    ref = TicketRef(base_url=base_url, ticket_id=ticket_id, credentials=credentials)
    remote_id = ticketing_client(integration.kind).post_comment(ref, _ticket_comment(case),
                                                                idempotency_key=_comment_key(case, request))
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_TICKET_COMMENTED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id,
                 details={"integration_id": str(integration.id), "ticket_id": ticket_id[:200],
                          "remote_id": remote_id[:100]})
    return remote_id
