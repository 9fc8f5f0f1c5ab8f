"""Mirroring an external directory's users (issue 11, item 4): `rekey directory sync` and a beat.

Each mirrored user is described again; new channels are recorded with the day Rekey first saw
them, channels gone from the directory are marked removed. A directory that does not answer is
logged and tried again at the next run; the other tenants go on.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select

from app.accounts.mirror import mirrored_users, sync_channels
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.extensions import db, utcnow
from app.tenants.models import Tenant, TenantDirectory
from integrations.directory import DirectoryError, PermanentDirectoryError
from integrations.directory.registry import BUILTIN, directory_for

log = structlog.get_logger(__name__)


def sync_tenant(tenant: Tenant) -> dict[str, Any]:
    """Mirror the channels of the tenant's external directory users; the counts."""
    directory = directory_for(tenant)
    if directory.kind == BUILTIN:
        return {"kind": BUILTIN, "users": 0, "added": 0, "removed": 0, "failed": 0}
    counts: dict[str, Any] = {"kind": directory.kind, "users": 0, "added": 0, "removed": 0, "failed": 0}
    for user in mirrored_users(tenant.id, directory.kind):
        try:
            described = directory.describe(user.directory_ref or "")
        except PermanentDirectoryError as exc:
            log.warning("directory_sync_user_refused", tenant=tenant.slug, user_id=str(user.id), error=str(exc)[:200])
            counts["failed"] += 1
            continue
        changed = sync_channels(user, described)
        counts["users"] += 1
        counts["added"] += changed["added"]
        counts["removed"] += changed["removed"]
    row = db.session.get(TenantDirectory, tenant.id)
    if row is not None:
        row.synced_at = utcnow()
    record_event(Actor.system(tenant.id), AuditAction.DIRECTORY_SYNCED, tenant_id=tenant.id, details=counts)
    db.session.flush()
    return counts


def sync_all() -> int:
    """Beat: every tenant with an external directory; how many were synced."""
    synced = 0
    for tenant_id in db.session.scalars(select(TenantDirectory.tenant_id)).all():
        tenant = db.session.get(Tenant, tenant_id)
        if tenant is None:
            continue
        try:
            with db.session.begin_nested():
                sync_tenant(tenant)
            synced += 1
        except DirectoryError as exc:
            log.warning("directory_sync_failed", tenant=tenant.slug, error=type(exc).__name__)
    return synced
