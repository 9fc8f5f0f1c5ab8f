"""The risk screen, run at intake and again before every destructive action.

`unusual_activity` refuses at once; the other signals escalate to a senior admin. Urgency
relaxes nothing: it only ever makes the path stricter (SECURITY-CHECKLIST R8).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.extensions import db
from app.recovery.models import CaseRequest, RecoveryCase
from app.tenants.models import Tenant

# Pressure language: the classic social-engineering lever the runbook tells agents to refuse.
_URGENCY = re.compile(
    r"\b(urgent(ly)?|asap|a\.s\.a\.p|immediately|right (now|away)|emergency|hurry|"
    r"need (it|this|access) now|as soon as possible|critical|time[- ]sensitive|"
    r"within the (hour|next hour)|before (my|the) (flight|meeting|board)|"
    r"the ceo|my boss will|you'?ll be (fired|in trouble)|don'?t have time|no time)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RiskResult:
    refuse: str | None = None  # the refusal trigger, if any
    escalate: list[str] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)


def unusual_activity(tenant: Tenant, user: User) -> tuple[bool, int]:
    """Several failed sign-ins in the window from IPs never seen in a successful sign-in."""
    hours = int(tenant.setting("unusual_activity_window_hours"))
    threshold = int(tenant.setting("unusual_activity_failed_signins"))
    failures = records.failed_signins_from_unknown_ips(user.id, hours)
    return failures >= threshold, failures


def is_urgent(*texts: str | None) -> bool:
    return any(t and _URGENCY.search(t) for t in texts)


def screen(tenant: Tenant, case: RecoveryCase, user: User) -> RiskResult:
    """Evaluate every signal for this case; the caller applies the outcome."""
    unusual, failures = unusual_activity(tenant, user)
    facts: dict[str, object] = {"failed_signins_from_unknown_ips": failures}
    if unusual:
        return RiskResult(refuse="unusual_activity", facts=facts)
    flags: list[str] = []
    # Every request of the case counts: a second ticket's "URGENT, skip the checks" too.
    joined = db.session.execute(select(CaseRequest.subject, CaseRequest.text).where(
        CaseRequest.case_id == case.id, CaseRequest.joined.is_(True))).all()
    if is_urgent(case.subject, case.text, *(t for row in joined for t in row)):
        flags.append("urgency")
    since = case.opened_at - timedelta(days=int(tenant.setting("recent_channel_change_days")))
    changed = records.channel_changes_since(user.id, since)
    if changed:
        flags.append("recent_channel_change")
    if user.privileged:
        flags.append("privileged")
    if user.status == "suspended":
        # A new case for a user suspended as a suspected attack (whose case expired, say):
        # carrying it through reactivates the user, and only a senior admin lifts a suspension.
        flags.append("suspended_user")
    repeat_since = case.opened_at - timedelta(days=int(tenant.setting("repeat_recovery_days")))
    earlier = db.session.scalar(
        select(func.count()).select_from(RecoveryCase).where(
            RecoveryCase.user_id == user.id, RecoveryCase.id != case.id,
            RecoveryCase.opened_at >= repeat_since,
        )
    ) or 0
    if earlier:
        flags.append("repeat_recovery")
    facts.update({"recent_channel_changes": changed, "earlier_cases": earlier})
    return RiskResult(escalate=flags, facts=facts)
