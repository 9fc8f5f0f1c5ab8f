"""The step-up rule (issue 10): a destructive action taken from the agent console needs a second
factor passed within the last few minutes (REKEY_CONSOLE_STEP_UP_SECONDS, 5 by default; the
sign-in itself counts). A stolen console cookie alone therefore cannot reset anyone. An API token
has no second factor: it keeps working for integrations and scripts unless the tenant's
`destructive_actions_by_token` setting is false.

The recovery services call `require_step_up` through `state.require`, so the console and the API
are held to it the same way, whichever door the call came through."""

from __future__ import annotations

from datetime import timedelta

from flask import current_app

from app.actor import Actor
from app.errors import Forbidden
from app.extensions import db, utcnow
from app.tenants.models import Tenant

DESTRUCTIVE_ACTIONS = frozenset({"force_mfa_reset", "set_temporary_password", "generate_backup_codes",
                                 "suspend_user", "approve"})


class StepUpRequired(Forbidden):
    code = "step_up_required"


class TokenNotAllowed(Forbidden):
    code = "destructive_action_by_token_forbidden"


def step_up_window() -> timedelta:
    return timedelta(seconds=current_app.extensions["rekey.settings"].console_step_up_seconds)


def has_recent_second_factor(actor: Actor) -> bool:
    """Whether a console actor passed a second factor within the step-up window."""
    at = actor.second_factor_at
    return at is not None and utcnow() - at <= step_up_window()


def require_step_up(actor: Actor, action: str) -> None:
    """Refuse a destructive action from a console actor without a recent second factor, or from an
    agent token where the tenant forbids it."""
    if action not in DESTRUCTIVE_ACTIONS or actor.type != "agent":
        return
    if actor.via == "console":
        if not has_recent_second_factor(actor):
            raise StepUpRequired(
                "This action needs a fresh check of your second factor: confirm it with your security key or "
                "authenticator app, then try again.",
                details={"action": action, "window_seconds": int(step_up_window().total_seconds())})
        return
    tenant = db.session.get(Tenant, actor.tenant_id) if actor.tenant_id else None
    if tenant is not None and not tenant.setting("destructive_actions_by_token"):
        raise TokenNotAllowed("This tenant allows destructive actions only from the console, after a second-"
                              "factor check; an API token may not take them.", details={"action": action})
