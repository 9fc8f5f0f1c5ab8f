"""Provisioning tenants and agents, and authenticating agent tokens."""

from __future__ import annotations

import functools
import re
import uuid
import zoneinfo
from collections.abc import Sequence
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import new_token, token_digest
from app.emails import normalize_email
from app.errors import Conflict, NotFound, Unauthenticated, ValidationFailed
from app.extensions import db, utcnow
from app.tenants.models import DEFAULT_TENANT_SETTINGS, ROLES, Agent, AgentIdentity, AgentToken, Tenant

_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


def create_tenant(*, slug: str, name: str | None = None, settings: dict[str, Any] | None = None) -> Tenant:
    """Create a tenant with its audit chain's first event."""
    if not _SLUG.fullmatch(slug):
        raise ValidationFailed("A tenant slug is 2-63 lower-case letters, digits or dashes.")
    unknown = set(settings or {}) - set(DEFAULT_TENANT_SETTINGS)
    if unknown:
        raise ValidationFailed("Unknown tenant settings.", details={"unknown": sorted(unknown)})
    for key, value in (settings or {}).items():
        check_setting(key, value)
    if db.session.scalars(select(Tenant).where(Tenant.slug == slug)).first():
        raise Conflict(f"Tenant {slug!r} already exists.")
    tenant = Tenant(id=uuid.uuid4(), slug=slug, name=name or slug, settings=settings or {})
    db.session.add(tenant)
    db.session.flush()
    record_event(Actor.system(tenant.id), AuditAction.TENANT_CREATED,
                 details={"slug": slug, "settings": settings or {}})
    return tenant


LIMIT_SETTINGS = ("verification_calls_per_case_per_hour", "verification_calls_per_agent_per_hour",
                  "verification_texts_per_tenant_per_hour")
_MAX_NUMBER = 1_000_000


@functools.cache
def _iana_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_setting(name: str, value: Any) -> None:
    """Refuse a tenant setting value of the wrong kind: a typo must fail here, at provisioning,
    and not as a 500 in the middle of someone's recovery."""
    expected = _expected(name, value)
    if expected:
        raise ValidationFailed(f"The tenant setting {name} must be {expected}.",
                               details={"setting": name, "expected": expected})


def _expected(name: str, value: Any) -> str | None:
    """What `value` should have been, or None when it is fine."""
    default = DEFAULT_TENANT_SETTINGS[name]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if name == "time_zone":
        # Only a name from the IANA database: no path, offset or abbreviation that zoneinfo
        # would read from disk, or that another machine would read differently.
        ok = isinstance(value, str) and value in _iana_zones()
        return None if ok else "an IANA time zone name such as Europe/Paris or America/New_York"
    if name in LIMIT_SETTINGS:
        ok = number and isinstance(value, int) and 1 <= value <= _MAX_NUMBER
        return None if ok else f"a whole number from 1 to {_MAX_NUMBER}"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int | float):
        return None if number and 0 <= value <= _MAX_NUMBER else f"a number from 0 to {_MAX_NUMBER}"
    return None


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


def create_agent(tenant: Tenant, *, email: str, name: str, role: str, actor: Actor | None = None,
                 external_id: str | None = None,
                 federated: Sequence[tuple[str, str]] = ()) -> tuple[Agent, str]:
    """Create an agent and its first API token; the token is returned once and never stored.
    `external_id` and `federated` ((issuer, subject) pairs) say which user account, if any, is
    the agent's own: nobody acts on the recovery of their own account."""
    if role not in ROLES:
        raise ValidationFailed("Unknown role.", details={"allowed": list(ROLES)})
    # The same normal form as users' addresses, so the own-account check compares like with like.
    email = normalize_email(email)
    external_id = _link_text(external_id, "external_id", 200) if external_id is not None else None
    links = sorted({(_link_text(i, "issuer", 300), _link_text(s, "subject", 300)) for i, s in federated})
    if db.session.scalars(select(Agent).where(Agent.tenant_id == tenant.id, Agent.email == email)).first():
        raise Conflict("An agent with this email exists in the tenant.")
    for issuer, subject in links:
        if db.session.scalars(select(AgentIdentity.id).where(
                AgentIdentity.tenant_id == tenant.id, AgentIdentity.issuer == issuer,
                AgentIdentity.subject == subject)).first():
            raise Conflict("Another agent of the tenant has this federated subject.",
                           details={"issuer": issuer})
    agent = Agent(id=uuid.uuid4(), tenant_id=tenant.id, email=email, name=name, role=role, external_id=external_id)
    db.session.add(agent)
    db.session.add_all(AgentIdentity(tenant_id=tenant.id, agent_id=agent.id, issuer=issuer, subject=subject)
                       for issuer, subject in links)
    token = issue_agent_token(agent)
    record_event(actor or Actor.system(tenant.id), AuditAction.AGENT_CREATED,
                 details={"agent_id": str(agent.id), "email": email, "role": role, "external_id": external_id,
                          "federated": [{"issuer": i, "subject": s} for i, s in links]})
    return agent, token


def _link_text(value: str, field: str, limit: int) -> str:
    """An identifier as the agent's link to an account: printable, trimmed, not empty."""
    text = value.strip() if isinstance(value, str) else ""
    if not text or len(text) > limit or not text.isprintable():
        raise ValidationFailed(f"{field} must be 1-{limit} printable characters.", details={"field": field})
    return text


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
