"""A tenant's identity providers (`rekey idp add`, `rekey idp list`)."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from sqlalchemy import select

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import decrypt, encrypt
from app.errors import Conflict, NotFound, ValidationFailed
from app.extensions import db
from app.federation.models import IdentityProvider
from app.tenants.models import Tenant
from integrations.base import TransientDeliveryError
from integrations.http import BlockedDestinationError, OutboundPolicy, check_destination


def _text(value: str, field: str, limit: int) -> str:
    value = (value or "").strip()
    if not value or len(value) > limit or not value.isprintable():
        raise ValidationFailed(f"{field} must be 1-{limit} printable characters.",
                               details={"fields": {field: [f"Required, printable, at most {limit} characters."]}})
    return value


def _issuer(raw: str) -> str:
    """An issuer identifier (OpenID Connect Discovery: an https URL without query or fragment),
    kept exactly as given: it must equal every ID token's `iss`, character for character."""
    issuer = _text(raw, "issuer", 300)
    try:
        parts = urlsplit(issuer)
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError as exc:
        raise ValidationFailed("The issuer is not a URL.", details={"fields": {"issuer": ["Not a URL."]}}) from exc
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValidationFailed("The issuer is a URL without query, fragment or credentials.",
                               details={"fields": {"issuer": ["No query, fragment or credentials."]}})
    try:
        # The same guard as every outbound call: https, or http to an allow-listed host only, and
        # no private address. It runs again at every call (DNS may change); a name that does not
        # resolve from here yet is not refused for that.
        check_destination(issuer, OutboundPolicy.from_env())
    except BlockedDestinationError as exc:
        raise ValidationFailed(f"Rekey cannot call this issuer: {exc}.",
                               details={"fields": {"issuer": [str(exc)]}}) from exc
    except TransientDeliveryError:
        pass
    return issuer


def add_identity_provider(tenant: Tenant, actor: Actor, *, issuer: str, client_id: str, client_secret: str,
                          name: str | None = None) -> IdentityProvider:
    """Register an OpenID provider for the tenant; its client secret is stored encrypted."""
    issuer = _issuer(issuer)
    client_id = _text(client_id, "client_id", 300)
    secret = _text(client_secret, "client_secret", 1000)
    label = _text(name or urlsplit(issuer).hostname or issuer, "name", 100)
    if db.session.scalars(select(IdentityProvider.id).where(
            IdentityProvider.tenant_id == tenant.id, IdentityProvider.issuer == issuer)).first():
        raise Conflict("The tenant already has an identity provider with this issuer.", details={"issuer": issuer})
    provider = IdentityProvider(tenant_id=tenant.id, name=label, issuer=issuer, client_id=client_id,
                                client_secret_encrypted=encrypt(secret), active=True)
    db.session.add(provider)
    db.session.flush()
    record_event(actor, AuditAction.IDENTITY_PROVIDER_ADDED, tenant_id=tenant.id,
                 details={"provider_id": str(provider.id), "issuer": issuer, "client_id": client_id, "name": label})
    return provider


def list_identity_providers(tenant_id: uuid.UUID) -> list[IdentityProvider]:
    """The tenant's active identity providers, by name."""
    return list(db.session.scalars(select(IdentityProvider).where(
        IdentityProvider.tenant_id == tenant_id, IdentityProvider.active.is_(True))
        .order_by(IdentityProvider.name, IdentityProvider.created_at)).all())


def get_identity_provider(tenant_id: uuid.UUID, provider_id: uuid.UUID | str) -> IdentityProvider:
    """One of the tenant's active providers; another tenant's is not found."""
    try:
        pid = provider_id if isinstance(provider_id, uuid.UUID) else uuid.UUID(str(provider_id))
    except ValueError as exc:
        raise NotFound("No such identity provider.") from exc
    provider = db.session.get(IdentityProvider, pid)
    if provider is None or provider.tenant_id != tenant_id or not provider.active:
        raise NotFound("No such identity provider.")
    return provider


def client_secret(provider: IdentityProvider) -> str:
    """The provider's client secret, for the token request only."""
    return decrypt(provider.client_secret_encrypted)
