"""Where recovery meets the tenant's directory: every effect on a user goes through the `Directory`
seam (integrations/directory/), the built-in one or an external one.

For the built-in directory each call changes rows in the caller's transaction, where the caller
writes the audit event: effect and event commit together. For an external directory the effect
happens in another system: the task makes the (idempotent) call first and writes the audit event,
with the backend's own reference, in the transaction that records completion; a crash before that
commit rolls the record back and the retry calls again (DESIGN.md, "Layering").
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

import structlog

from app.accounts import records
from app.accounts.mirror import mirror_user
from app.accounts.records import UserRecord
from app.errors import RekeyError, RuleRefused
from app.extensions import db
from app.tenants.models import Tenant
from integrations.directory import Directory, DirectoryError, PermanentDirectoryError, TransientDirectoryError
from integrations.directory.registry import BUILTIN, DirectoryConfig, build, directory_for

log = structlog.get_logger(__name__)
T = TypeVar("T")


class DirectoryUnavailable(RekeyError):
    """The tenant's external directory did not answer (a transient failure): try again shortly."""

    status = 503
    code = "directory_unavailable"


class DirectoryRefused(RuleRefused):
    """The tenant's external directory refused the call for good (its reason is in the details)."""

    code = "directory_refused"


def directory_of(tenant_id: uuid.UUID) -> Directory:
    """The case's tenant's directory."""
    tenant = db.session.get(Tenant, tenant_id)
    assert tenant is not None
    return directory_for(tenant)


def directory_of_user(user: UserRecord) -> Directory:
    """The directory the user lives in: the built-in one for a built-in user (even in a tenant
    that connected an external directory since), else the tenant's."""
    if not records.is_external(user):
        return build(DirectoryConfig(tenant_id=str(user.tenant_id)))
    directory = directory_of(user.tenant_id)
    if directory.kind != user.directory_kind:
        raise PermanentDirectoryError(f"the user lives in a {user.directory_kind} directory, the tenant now uses "
                                      f"{directory.kind}")
    return directory


def ref(user: UserRecord) -> str:
    return records.directory_ref(user)


def in_request(call: Callable[[], T]) -> T:
    """Make a directory call from a request: a transient failure is a 503, a permanent one a 422,
    never a 500 (and the request's transaction rolls back, so nothing is half-written)."""
    try:
        return call()
    except TransientDirectoryError as exc:
        raise DirectoryUnavailable("The account directory did not answer; try again shortly.",
                                   details={"error": str(exc)[:200]}) from exc
    except PermanentDirectoryError as exc:
        raise DirectoryRefused("The account directory refused the call.", details={"error": str(exc)[:200]}) from exc


def locate_user(tenant: Tenant, *, email: str | None, external_id: str | None) -> UserRecord | None:
    """The request's user: a local row, else (for an external directory) the directory's user,
    mirrored as a local row on first sight. Unknown stays unknown (None); a directory that does not
    answer is a 503, so a transient outage never refuses a real user's case as unverifiable."""
    user = records.find_user(tenant.id, email=email, external_id=external_id)
    if user is not None or tenant.directory_kind == BUILTIN:
        return user
    directory = directory_for(tenant)
    try:
        found = directory.find_user(email=email) if email else None
        if found is None and external_id:
            found = directory.find_user(external_id=external_id)
        if found is None:
            return None
        described = directory.describe(found.external_id)
    except TransientDirectoryError as exc:
        raise DirectoryUnavailable("The account directory did not answer; try again shortly.",
                                   details={"error": str(exc)[:200]}) from exc
    except DirectoryError as exc:
        log.warning("directory_lookup_refused", tenant=str(tenant.id), error=str(exc)[:200])
        return None
    return mirror_user(tenant.id, directory.kind, described)
