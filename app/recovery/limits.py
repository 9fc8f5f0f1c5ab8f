"""SMS pumping (issue 8, item 10): every verification call makes Rekey send a code by text or
voice, at the tenant's expense and to a number an attacker may have ported to a premium line.
Calls are limited per case, per agent and per tenant over a sliding hour (tenant settings);
a refusal is a 429 with `Retry-After`, audited, and changes nothing else.

The count lives in PostgreSQL, in the `verification_calls` rows themselves: it is exact, it
survives a restart, and a request that rolls back never counted. Concurrent requests of one
tenant are serialised on an advisory transaction lock taken after the case's row lock and
before the audit chain's head (the order every request keeps), so two requests cannot both
read "one below the limit"."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, text, true

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.errors import RateLimited
from app.extensions import db, utcnow
from app.recovery.models import RecoveryCase, VerificationCall
from app.tenants.models import Tenant

WINDOW = timedelta(hours=1)


class VerificationLimitReached(RateLimited):
    code = "verification_limit"
    keep_changes = True  # the refusal is audited


def check_verification_limits(actor: Actor, case: RecoveryCase) -> None:
    """Refuse a new verification call over the case's, the agent's or the tenant's hourly
    limit; call it with the case locked, before anything is written."""
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    _serialise(tenant)
    now = utcnow()
    scopes: list[tuple[str, ColumnElement[bool], str]] = [
        ("case", VerificationCall.case_id == case.id, "verification_calls_per_case_per_hour"),
        ("tenant", true(), "verification_texts_per_tenant_per_hour"),
    ]
    if actor.type == "agent" and actor.id:
        scopes.insert(1, ("agent", VerificationCall.placed_by == actor.id, "verification_calls_per_agent_per_hour"))
    exceeded = []
    for scope, where, setting in scopes:
        limit = int(tenant.setting(setting))
        frees_at = _frees_at(tenant, where, limit, now)
        if frees_at is not None:
            exceeded.append((max(1, math.ceil((frees_at - now).total_seconds())), scope, limit))
    if not exceeded:
        return
    # The one that frees up last decides when a call can go out again.
    wait, scope, limit = max(exceeded)
    details = {"scope": scope, "limit": limit, "window_seconds": int(WINDOW.total_seconds()),
               "retry_after_seconds": wait}
    record_event(actor, AuditAction.RECOVERY_VERIFICATION_CALL_LIMITED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, details=details)
    raise VerificationLimitReached(
        f"Too many verification calls ({limit} an hour per {scope}); no code was sent.",
        retry_after=wait, details=details)


def _frees_at(tenant: Tenant, where: ColumnElement[bool], limit: int, now: datetime) -> datetime | None:
    """When the oldest of the last `limit` calls in the window leaves it, if `limit` are in it."""
    nth_newest = db.session.scalar(
        select(VerificationCall.created_at)
        .where(VerificationCall.tenant_id == tenant.id, where, VerificationCall.created_at > now - WINDOW)
        .order_by(VerificationCall.created_at.desc()).offset(limit - 1).limit(1))
    return None if nth_newest is None else nth_newest + WINDOW


def _serialise(tenant: Tenant) -> None:
    if db.session.get_bind().dialect.name != "postgresql":
        return  # SQLite (development only) writes one transaction at a time anyway
    digest = hashlib.sha256(f"rekey.verification-limits\x00{tenant.id}".encode()).digest()
    db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                       {"key": int.from_bytes(digest[:8], "big", signed=True)})
