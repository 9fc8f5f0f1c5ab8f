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


TOKEN_WARN_DAYS = 14


def check_directory(tenant: Tenant, *, email: str | None = None) -> dict[str, Any]:
    """Connect to the tenant's directory, look at one user, and say what works (nothing changes:
    only reads). For the built-in directory there is nothing to connect."""
    from datetime import timedelta

    from app.accounts.models import User

    directory = directory_for(tenant)
    report: dict[str, Any] = {"kind": directory.kind, "ok": True, "warnings": [], "works": {}}
    if directory.kind == BUILTIN:
        report["users"] = len(db.session.scalars(select(User.id).where(User.tenant_id == tenant.id)).all())
        report["works"] = {"factors": True, "backup_codes": True, "temporary_password": True, "suspend": True,
                           "sessions": True, "signin_history": True, "channel_dates": True,
                           "enrolment_signal": "hook"}
        return report
    row = db.session.get(TenantDirectory, tenant.id)
    if row is not None and row.token_expires_at is not None:
        left = row.token_expires_at - utcnow()
        if left <= timedelta(days=TOKEN_WARN_DAYS):
            report["warnings"].append(f"the service token expires at {row.token_expires_at.isoformat()}: "
                                      "rotate it with `rekey directory configure` (token on stdin)")
    ref = None
    if email:
        found = directory.find_user(email=email)
        ref = found.external_id if found else None
        if found is None:
            report["warnings"].append(f"no user {email!r} in the directory")
    else:
        mirrored = mirrored_users(tenant.id, directory.kind)
        ref = mirrored[0].directory_ref if mirrored else None
        if ref is None:
            report["warnings"].append("no user to look at: pass --email of a user in the directory")
    if ref is not None:
        described = directory.describe(ref)
        report["user"] = {"external_id": ref, "factors": len(described.factors),
                          "channels": len(described.channels), "suspended": described.user.suspended}
        report["works"] = {
            "factors": True,
            "backup_codes_remaining": described.backup_codes_remaining is not None,
            "channel_dates": all(c.added_at is not None for c in described.channels),
            "signin_history": described.signins is not None,
            "enrolment_signal": "poll",
        }
        if not report["works"]["channel_dates"]:
            report["warnings"].append("the directory keeps no channel dates: channels count as new from the day "
                                      "Rekey first saw them (import dates with `rekey directory "
                                      "import-channel-dates`)")
        if not report["works"]["signin_history"]:
            report["warnings"].append("no sign-in history from the directory: the unusual-activity screen has no data")
    report["synced_at"] = row.synced_at.isoformat() if row is not None and row.synced_at else None
    return report
