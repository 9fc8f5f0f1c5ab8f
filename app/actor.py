"""Who is acting, from where: passed explicitly into every service (services never read the request)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime


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
    # How an agent came in: `console` (a browser session with a second factor) or None (an API
    # token); for a console actor, when it last passed a second factor (the step-up rule).
    via: str | None = None
    second_factor_at: datetime | None = None

    @classmethod
    def system(cls, tenant_id: uuid.UUID | None, request_id: str | None = None) -> Actor:
        return cls(type="system", id="rekey", tenant_id=tenant_id, request_id=request_id)

    @property
    def is_senior_admin(self) -> bool:
        return self.type == "agent" and self.role == "senior_admin"
