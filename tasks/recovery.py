"""Recovery tasks: ids in, one service call each (the service is idempotent)."""

from __future__ import annotations

import uuid

from celery import shared_task

from app.intake import comments
from app.intake.services import purge_old_deliveries
from app.recovery import actions, cases, closing, delivery, evidence, notify


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
def notify_senior_admins(case_id: str, case_round: int = 1, why: str = "refused") -> int:
    """Tell the senior admins about an automatic refusal or an expired escalation."""
    return cases.notify_senior_admins(uuid.UUID(case_id), case_round, why)


@shared_task(name="rekey.recovery.expire_cases")
def expire_cases() -> int:
    """Beat: expire unverified cases, and escalated ones nobody took up, past their TTL."""
    return cases.expire_overdue()


@shared_task(name="rekey.intake.purge_deliveries")
def purge_deliveries() -> int:
    """Beat: forget webhook deliveries past their retention."""
    return purge_old_deliveries()


@shared_task(name="rekey.recovery.execute_action")
def execute_action(action_id: str) -> str | None:
    """Carry out a decided destructive action (reset, codes, temporary password) once."""
    row = actions.execute_action(uuid.UUID(action_id))
    return row.status if row else None


@shared_task(name="rekey.recovery.deliver_secret")
def deliver_secret(action_id: str) -> bool:
    """Text the backup codes or temporary password an action generated to the phone verified in
    the case's current round, or discard them when the case no longer allows it."""
    return delivery.deliver_secret(uuid.UUID(action_id))


@shared_task(name="rekey.recovery.expire_sealed_secrets")
def expire_sealed_secrets() -> int:
    """Beat: erase secrets still undelivered after 24 hours."""
    return delivery.expire_sealed_secrets()


@shared_task(name="rekey.recovery.notify_channel")
def notify_channel(case_id: str, event: str, channel_id: str, report_link_id: str,
                   cancel_link_id: str | None = None) -> bool:
    """Tell one pre-existing channel what happened, with the "this wasn't me" link."""
    return notify.deliver_notice(uuid.UUID(case_id), event, uuid.UUID(channel_id), uuid.UUID(report_link_id),
                                 uuid.UUID(cancel_link_id) if cancel_link_id else None)


@shared_task(name="rekey.recovery.follow_up")
def follow_up(case_id: str) -> bool:
    """Runbook step 5: the follow-up to the user, then the ticket comment, then close."""
    return closing.send_follow_up(uuid.UUID(case_id))


@shared_task(name="rekey.recovery.post_ticket_comment")
def post_ticket_comment(case_id: str, request_id: str | None = None) -> str | None:
    """Post the status comment to the originating ticket (or to the joining ticket `request_id`)."""
    return comments.post_ticket_comment(uuid.UUID(case_id), uuid.UUID(request_id) if request_id else None)


@shared_task(name="rekey.recovery.run_scheduled")
def run_scheduled() -> int:
    """Beat: queue resets whose cooldown has passed."""
    return closing.run_due_scheduled()


@shared_task(name="rekey.recovery.requeue_stalled")
def requeue_stalled() -> int:
    """Beat: queue again actions, screens, codes and secret deliveries whose task vanished."""
    return closing.requeue_stalled()


@shared_task(name="rekey.recovery.send_federated_signin_link")
def send_federated_signin_link(signin_id: str) -> bool:
    """Text or email the single-use federated sign-in link an agent asked for."""
    from app.recovery.federated import deliver_federated_signin_link

    return deliver_federated_signin_link(uuid.UUID(signin_id))
@shared_task(name="rekey.recovery.suspend_in_directory")
def suspend_in_directory(case_id: str, user_id: str) -> bool:
    """Suspend in an external directory a user Rekey suspended (retried until it answers)."""
    return closing.suspend_in_directory(uuid.UUID(case_id), uuid.UUID(user_id))


@shared_task(name="rekey.recovery.poll_enrolments")
def poll_enrolments() -> int:
    """Beat: close the cases whose external-directory users enrolled a new factor."""
    return closing.poll_enrolments()


@shared_task(name="rekey.directory.sync")
def sync_directories() -> int:
    """Beat: mirror the channels of external directories' users (first sightings recorded)."""
    from app.accounts.sync import sync_all

    return sync_all()
