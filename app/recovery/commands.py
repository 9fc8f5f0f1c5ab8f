"""One entry for an agent's action on a case, whichever door it comes through (the admin API,
the console): the action's name and its parameters in, the recorded outcome out."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.actor import Actor
from app.errors import NotFound
from app.recovery import actions, cases, closing
from app.recovery.models import CaseAction


@dataclass(frozen=True)
class ActionOutcome:
    """What an action left behind: the pending or done action row it created, if any, and the
    backup codes shown this once (only when the agent reads them out on their own video call)."""

    action: CaseAction | None = None
    backup_codes: list[str] | None = None


def _force_reset(actor: Actor, case_id: Any, p: dict[str, Any]) -> ActionOutcome:
    return ActionOutcome(actions.request_force_mfa_reset(
        actor, case_id, reason=p["reason"], backup_codes_unusable=p.get("backup_codes_unusable")))


def _approve(actor: Actor, case_id: Any, p: dict[str, Any]) -> ActionOutcome:
    return ActionOutcome(actions.approve(actor, case_id, action_id=p.get("action_id"), reason=p["reason"]))


def _secret(action: str) -> Callable[[Actor, Any, dict[str, Any]], ActionOutcome]:
    def run(actor: Actor, case_id: Any, p: dict[str, Any]) -> ActionOutcome:
        row, codes = actions.request_secret_delivery(actor, case_id, action, reason=p["reason"],
                                                     delivery=p.get("delivery") or "verified_phone")
        return ActionOutcome(row, codes)
    return run


def _federated_link(actor: Actor, case_id: Any, p: dict[str, Any]) -> ActionOutcome:
    from app.recovery.federated import send_federated_signin_link

    provider = p.get("provider_id")
    send_federated_signin_link(actor, case_id, channel_id=str(p.get("channel_id") or ""), reason=p["reason"],
                               provider_id=str(provider) if provider else None)
    return ActionOutcome()


def _case_move(move: Callable[..., Any], **fixed: Any) -> Callable[[Actor, Any, dict[str, Any]], ActionOutcome]:
    def run(actor: Actor, case_id: Any, p: dict[str, Any]) -> ActionOutcome:
        move(actor, case_id, reason=p["reason"], **{k: f(p) for k, f in fixed.items()})
        return ActionOutcome()
    return run


_ACTIONS: dict[str, Callable[[Actor, Any, dict[str, Any]], ActionOutcome]] = {
    "force_mfa_reset": _force_reset,
    "approve": _approve,
    "retry_action": lambda actor, cid, p: ActionOutcome(actions.retry_action(
        actor, cid, action_id=p.get("action_id"), reason=p["reason"])),
    "generate_backup_codes": _secret("generate_backup_codes"),
    # A temporary password only ever goes to the phone verified in the case.
    "set_temporary_password": lambda actor, cid, p: _secret("set_temporary_password")(
        actor, cid, {**p, "delivery": "verified_phone"}),
    "suspend_user": _case_move(closing.suspend_user),
    "send_follow_up": _case_move(closing.request_follow_up),
    "close": _case_move(closing.close_case),
    "refuse": _case_move(cases.refuse_case, trigger=lambda p: p.get("trigger") or "agent_judgement"),
    "escalate": _case_move(cases.escalate_case),
    "resume": _case_move(cases.resume_case),
    "reopen": _case_move(cases.reopen_case),
    "send_federated_signin_link": lambda actor, cid, p: _federated_link(actor, cid, p),
}
AGENT_ACTIONS = tuple(sorted(_ACTIONS))


def perform_action(actor: Actor, case_id: uuid.UUID | str, action: str, params: dict[str, Any]) -> ActionOutcome:
    """Take one of the runbook's actions on the case; every rule lives in the service it calls."""
    run = _ACTIONS.get(action)
    if run is None:
        raise NotFound("No such action.", details={"actions": list(AGENT_ACTIONS)})
    return run(actor, case_id, params)
