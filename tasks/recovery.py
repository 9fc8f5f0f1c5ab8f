"""Recovery tasks: ids in, one service call each (the service is idempotent)."""

from __future__ import annotations

import uuid

from celery import shared_task

from app.intake.services import purge_old_deliveries
from app.recovery import cases, evidence


@shared_task(name="rekey.recovery.screen_case")
def screen_case(case_id: str) -> str | None:
    """Run the intake risk screen on a received case."""
    case = cases.screen_case(uuid.UUID(case_id))
    return case.state if case else None


@shared_task(name="rekey.recovery.send_verification_code")
def send_verification_code(call_id: str) -> str | None:
    """Send a verification call's one-time code to its known phone."""
    call = evidence.deliver_verification_code(uuid.UUID(call_id))
    return call.status if call else None


@shared_task(name="rekey.recovery.notify_senior_admins")
def notify_senior_admins(case_id: str) -> int:
    """Tell the senior admins about an automatic refusal."""
    return cases.notify_senior_admins(uuid.UUID(case_id))


@shared_task(name="rekey.recovery.expire_cases")
def expire_cases() -> int:
    """Beat: expire unverified cases past their TTL."""
    return cases.expire_overdue()


@shared_task(name="rekey.intake.purge_deliveries")
def purge_deliveries() -> int:
    """Beat: forget webhook deliveries past their retention."""
    return purge_old_deliveries()
