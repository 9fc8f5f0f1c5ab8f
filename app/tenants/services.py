"""Provisioning tenants and agents, and authenticating agent tokens."""

from __future__ import annotations

import re
import uuid
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import new_token, token_digest
from app.errors import Conflict, NotFound, Unauthenticated, ValidationFailed
from app.extensions import db, utcnow
from app.tenants.models import DEFAULT_TENANT_SETTINGS, ROLES, Agent, AgentToken, Tenant

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


def create_tenant(*, slug: str, name: str | None = None, settings: dict[str, Any] | None = None) -> Tenant:
    """Create a tenant with its audit chain's first event."""
    if not _SLUG.fullmatch(slug):
        raise ValidationFailed("A tenant slug is 2-63 lower-case letters, digits or dashes.")
    unknown = set(settings or {}) - set(DEFAULT_TENANT_SETTINGS)
    if unknown:
        raise ValidationFailed("Unknown tenant settings.", details={"unknown": sorted(unknown)})
    if db.session.scalars(select(Tenant).where(Tenant.slug == slug)).first():
        raise Conflict(f"Tenant {slug!r} already exists.")
    tenant = Tenant(id=uuid.uuid4(), slug=slug, name=name or slug, settings=settings or {})
    db.session.add(tenant)
    db.session.flush()
    record_event(Actor.system(tenant.id), AuditAction.TENANT_CREATED,
                 details={"slug": slug, "settings": settings or {}})
    return tenant


def get_tenant_by_slug(slug: str) -> Tenant:
    """The tenant with this slug, or NotFound."""
    if not _SLUG.fullmatch(slug):
        # Never a tenant (NUL, 3000 characters, a path): refused before it reaches SQL.
        raise NotFound("No such tenant.")
    tenant = db.session.scalars(select(Tenant).where(Tenant.slug == slug)).first()
    if tenant is None:
        raise NotFound("No such tenant.")
    return tenant


def page_url(tenant: Tenant, path: str) -> str:
    """The public URL of one of the tenant's end-user pages (`/t/<slug>/<path>`): browsers cannot
    send the tenant in a header, so it is in the path."""
    base = current_app.extensions["rekey.settings"].public_url.rstrip("/")
    return f"{base}/t/{tenant.slug}/{path}"


def create_agent(tenant: Tenant, *, email: str, name: str, role: str, actor: Actor | None = None) -> tuple[Agent, str]:
    """Create an agent and its first API token; the token is returned once and never stored."""
    if role not in ROLES:
        raise ValidationFailed("Unknown role.", details={"allowed": list(ROLES)})
    email = email.strip().lower()
    if db.session.scalars(select(Agent).where(Agent.tenant_id == tenant.id, Agent.email == email)).first():
        raise Conflict("An agent with this email exists in the tenant.")
    agent = Agent(id=uuid.uuid4(), tenant_id=tenant.id, email=email, name=name, role=role)
    db.session.add(agent)
    token = issue_agent_token(agent)
    record_event(actor or Actor.system(tenant.id), AuditAction.AGENT_CREATED,
                 details={"agent_id": str(agent.id), "email": email, "role": role})
    return agent, token


def issue_agent_token(agent: Agent) -> str:
    """A new bearer token for the agent (256 bits; only a keyed digest is kept)."""
    token = new_token("rk_agent")
    db.session.add(AgentToken(agent_id=agent.id, digest=token_digest(token)))
    db.session.flush()
    return token


def authenticate_agent(token: str) -> Agent:
    """The active agent holding this token, or Unauthenticated (one message for every failure)."""
    row = db.session.execute(
        select(AgentToken, Agent)
        .join(Agent, Agent.id == AgentToken.agent_id)
        .where(AgentToken.digest == token_digest(token), AgentToken.revoked_at.is_(None))
    ).first()
    if row is None or not row.Agent.active:
        raise Unauthenticated("The bearer token is not valid.")
    row.AgentToken.last_used_at = utcnow()
    return row.Agent
