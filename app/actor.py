"""Who is acting, from where: passed explicitly into every service (services never read the request)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """The principal behind a service call.

    `type` is one of `agent`, `user`, `integration`, `system`; `tenant_id` comes from the
    credential that authenticated the call, never from a request body.
    """

    type: str
    id: str | None
    tenant_id: uuid.UUID | None
    role: str | None = None
    ip: str | None = None
    request_id: str | None = None

    @classmethod
    def system(cls, tenant_id: uuid.UUID | None, request_id: str | None = None) -> Actor:
        return cls(type="system", id="rekey", tenant_id=tenant_id, request_id=request_id)

    @property
    def is_senior_admin(self) -> bool:
        return self.type == "agent" and self.role == "senior_admin"
