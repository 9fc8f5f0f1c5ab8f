"""Choosing a tenant's directory (issue 11): kind, where it is, and its service token.

The token is encrypted at rest like every other secret (app/crypto.py) and never returned,
logged or audited; configuring again rotates it. Which kinds exist is the registry's business
(integrations/directory/registry.py): a kind nobody registered is refused here, not at the
first recovery.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import encrypt
from app.errors import ValidationFailed
from app.extensions import db, utcnow
from app.tenants.models import Tenant, TenantDirectory
from integrations.directory.registry import BUILTIN, is_registered, kinds


def configure_directory(actor: Actor, tenant: Tenant, *, kind: str, url: str = "", realm: str = "",
                        token: str | None = None, token_expires_at: datetime | None = None,
                        options: dict[str, Any] | None = None) -> TenantDirectory | None:
    """Point the tenant at a directory kind; `builtin` removes any external configuration.
    A new `token` replaces (rotates) the stored one; without one, an external kind keeps the
    token it had."""
    if not is_registered(kind):
        raise ValidationFailed(f"Unknown directory kind {kind!r}.", details={"known": list(kinds())})
    row = db.session.get(TenantDirectory, tenant.id, with_for_update=True)
    previous = row.kind if row is not None else BUILTIN
    if kind == BUILTIN:
        if row is not None:
            db.session.delete(row)
        db.session.flush()
        record_event(actor, AuditAction.TENANT_DIRECTORY_CONFIGURED, tenant_id=tenant.id,
                     details={"kind": BUILTIN, "previous": previous})
        return None
    parts = urlsplit(url or "")
    if not (parts.scheme and parts.netloc):
        raise ValidationFailed("An external directory needs its URL (https://...).",
                               details={"fields": {"url": ["A URL with a scheme and a host is required."]}})
    if row is None:
        row = TenantDirectory(tenant_id=tenant.id, kind=kind, options={})
        db.session.add(row)
    rotated = bool(token)
    if token:
        row.token_encrypted, row.token_set_at, row.token_expires_at = encrypt(token.strip()), utcnow(), token_expires_at
    elif row.token_encrypted is None:
        raise ValidationFailed("An external directory needs its service token (read from standard input).",
                               details={"fields": {"token": ["A token is required the first time."]}})
    row.kind, row.url, row.realm, row.updated_at = kind, url.rstrip("/"), realm or None, utcnow()
    row.options = dict(options or row.options or {})
    db.session.flush()
    record_event(actor, AuditAction.TENANT_DIRECTORY_CONFIGURED, tenant_id=tenant.id,
                 details={"kind": kind, "previous": previous, "url": row.url, "realm": row.realm,
                          "token_rotated": rotated,
                          "token_expires_at": row.token_expires_at.isoformat() if row.token_expires_at else None})
    return row


def directory_settings(tenant_id: uuid.UUID) -> TenantDirectory | None:
    """The tenant's external directory row (None: the built-in directory)."""
    return db.session.get(TenantDirectory, tenant_id)
