"""The account side of a federated (OpenID Connect) sign-in: which identities are linked to whom,
and the enrol-only browser session a linked user gets. The flow itself is app/federation; what a
sign-in proves on a recovery case is app/recovery/federated.py, which reads accounts only here
and through app/accounts/records.py."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeAlias

from sqlalchemy import select

from app.accounts.models import FederatedIdentity, SigninAttempt, User
from app.accounts.services import active_factors, open_session
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.extensions import db, utcnow

IdentityRecord: TypeAlias = FederatedIdentity


def linked_issuers(tenant_id: uuid.UUID, user_id: uuid.UUID, before: datetime) -> set[str]:
    """The issuers at which the user has an identity linked before `before`."""
    return set(db.session.scalars(select(FederatedIdentity.issuer).where(
        FederatedIdentity.user_id == user_id, FederatedIdentity.tenant_id == tenant_id,
        FederatedIdentity.linked_at < before)).all())


def linked_identity(tenant_id: uuid.UUID, issuer: str, subject: str) -> FederatedIdentity | None:
    """The tenant's identity with this issuer and subject (whoever it is linked to), or None."""
    return db.session.scalars(select(FederatedIdentity).where(
        FederatedIdentity.tenant_id == tenant_id, FederatedIdentity.issuer == issuer,
        FederatedIdentity.subject == subject)).first()


def enrolment_refusal(user: User) -> tuple[str, str] | None:
    """Why this user may not have an enrol-only session now, or None: a suspended account, or a
    closed enrolment window (a refused or suspected recovery after a reset)."""
    if user.status != "active":
        return "suspended", "This account is suspended."
    if user.enrolment_closed_at is not None and not active_factors(user):
        return "enrolment_closed", "This account cannot enrol a factor until support verifies you again."
    return None


def open_enrol_only_session(user: User, actor: Actor, *, case_id: uuid.UUID | None,
                            facts: dict[str, Any]) -> str:
    """The restricted (enrol-only) browser session after a verified federated sign-in; recorded
    as a successful sign-in (method `oidc`) with its attempt row. Returns the cookie's token."""
    token = open_session(user, scope="restricted", ip=actor.ip, kind="browser")
    db.session.add(SigninAttempt(tenant_id=user.tenant_id, user_id=user.id, email=user.email, ip=actor.ip,
                                 result="succeeded", method="oidc", occurred_at=utcnow()))
    me = Actor(type="user", id=str(user.id), tenant_id=user.tenant_id, ip=actor.ip, request_id=actor.request_id)
    record_event(me, AuditAction.SIGNIN_SUCCEEDED, tenant_id=user.tenant_id, target_user_id=user.id, case_id=case_id,
                 details={"method": "oidc", "status": "enrolment_required", "session_scope": "restricted", **facts})
    return token
