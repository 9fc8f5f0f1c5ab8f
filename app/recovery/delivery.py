"""Delivering the secrets an action generated (admin backup codes, a temporary password).

The action generates the secret once and seals it (encrypted, on the action); a separate task
texts it to the phone verified in the case's current round, then forgets it. Under the case's
lock the delivery checks again that the case still allows it: a case refused or suspected
between the action and its delivery (the owner tapped "this wasn't me"), a user suspended since
the decision, a round that ended or a phone no longer verified in it, and the secret is
discarded instead, with an audit event and no text. A sealed secret never delivered expires
with the secret itself after 24 hours and is erased (beat's `expire_sealed_secrets`).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import structlog
from sqlalchemy import select

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import UnreadableCiphertext, decrypt, encrypt
from app.extensions import db, utcnow
from app.jobs.services import enqueue, record_dead_letter
from app.recovery import models as m
from app.recovery.models import CaseAction, RecoveryCase
from app.recovery.rounds import verified_phone
from app.tenants.models import Tenant
from app.tenants.services import page_url
from integrations.base import PermanentDeliveryError

log = structlog.get_logger(__name__)

SEAL_TTL = timedelta(hours=24)  # as long as the temporary password itself lives
DELIVERABLE_FROM = (m.VERIFIED, m.AWAITING_ENROLMENT)


def seal_for_delivery(row: CaseAction, user: User, secret: list[str] | str, *, reference: str | None = None) -> None:
    """Keep the secret this action generated (encrypted, on the action) until a separate task
    has texted it. The text cannot go out from the action's own transaction: if it were lost
    after the send (a dropped connection, a killed worker), the retry would generate a different
    secret, and the provider, deduplicating on the action's key, would never deliver it: the
    user would hold a password or codes that do not work. Generate once, store, then deliver as
    often as it takes."""
    options = {**row.options, "sealed": encrypt(json.dumps(secret))}
    if row.action == "generate_backup_codes":
        # The directory's name for the codes just issued, so codes that never reach the user can
        # be revoked.
        options["batch_id"] = reference
    elif reference is not None:
        options["secret_reference"] = reference
    row.options, row.sealed_until, row.delivery_state = options, utcnow() + SEAL_TTL, "pending"
    enqueue("rekey.recovery.deliver_secret", action_id=str(row.id))


def _delivery_text(action: str, secret: list[str] | str, signin: str) -> str:
    if action == "generate_backup_codes":
        return ("Your new backup codes (each works once; store them safely): " + ", ".join(secret)
                + f". Sign in at {signin} with your email, password and one code, then enrol a new factor.")
    return (f"Your one-time temporary password is {secret} . It works once, for 24 hours; sign in at "
            f"{signin} and you will choose a new password.")


def _locked(action_id: uuid.UUID) -> tuple[RecoveryCase | None, CaseAction | None]:
    """The action's case, then the action, locked in that order (as every request that
    decides, refuses or suspends takes them)."""
    case = db.session.scalars(select(RecoveryCase).select_from(CaseAction)
                              .join(RecoveryCase, RecoveryCase.id == CaseAction.case_id)
                              .where(CaseAction.id == action_id).with_for_update(of=RecoveryCase)).first()
    if case is None:
        return None, None
    return case, db.session.get(CaseAction, action_id, with_for_update=True)


def _undeliverable(case: RecoveryCase, user: User, row: CaseAction) -> tuple[str, AuditAction] | None:
    """Why the secret may no longer go out, with the event that records it; None if it may."""
    if case.state not in DELIVERABLE_FROM:
        return f"the case is {case.state}", AuditAction.RECOVERY_SECRET_DISCARDED
    if row.round != case.round:
        return "the round it was decided in has ended", AuditAction.RECOVERY_SECRET_DISCARDED
    if user.status != "active" and (user.suspended_at is None or user.suspended_at >= row.created_at):
        # A suspension older than the decision is the one this round recovers from.
        return "the user was suspended after it was decided", AuditAction.RECOVERY_SECRET_DISCARDED
    if row.sealed_until is not None and row.sealed_until <= utcnow():
        return "undelivered for 24 hours", AuditAction.RECOVERY_SECRET_EXPIRED
    if verified_phone(case) is None:
        return "no phone is verified in the case's current round", AuditAction.RECOVERY_SECRET_DISCARDED
    return None


def _discard(case: RecoveryCase, user: User, row: CaseAction, why: str, event: AuditAction) -> None:
    """Erase the sealed secret and make the secret itself useless (nobody ever received it)."""
    withdraw_secret(case, user, row)
    row.options = {**{k: v for k, v in row.options.items() if k != "sealed"}, "undelivered": why}
    row.sealed_until, row.delivery_state = None, "discarded"
    record_event(Actor.system(case.tenant_id), event, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=f"Not delivered: {why}.",
                 details={"action_id": str(row.id), "action": row.action, "round": row.round})


def withdraw_secret(case: RecoveryCase, user: User, row: CaseAction) -> None:
    """Make a secret nobody received useless. The built-in directory revokes the batch's unused
    codes or ends the temporary password; an external one, which offers no withdrawal, is asked
    to issue again under the same reference, which replaces the undelivered secret with one that
    nobody will ever see (a directory that refuses is logged: the sealed copy is erased anyway)."""
    from app.recovery.effects import directory_of_user, ref
    from integrations.directory import DirectoryError

    directory = directory_of_user(user)
    reference = row.options.get("batch_id") if row.action == "generate_backup_codes" \
        else row.options.get("secret_reference")
    withdraw = getattr(directory, "withdraw_secret", None)
    if withdraw is not None:
        if row.action == "generate_backup_codes" and not reference:
            return
        withdraw(ref(user), kind="backup_codes" if row.action == "generate_backup_codes" else "temporary_password",
                 reference=reference or "")
        return
    try:
        if row.action == "generate_backup_codes":
            directory.issue_backup_codes(ref(user), reference=str(row.id), count=len(json.loads(
                decrypt(row.options["sealed"]))) if row.options.get("sealed") else 10)
        else:
            directory.set_temporary_password(ref(user), reference=str(row.id))
    except (DirectoryError, UnreadableCiphertext) as exc:
        log.warning("secret_withdrawal_failed", action_id=str(row.id), error=type(exc).__name__)


def deliver_secret(action_id: uuid.UUID) -> bool:
    """Text the secret a done action generated to the phone verified in its case's current
    round, then forget it; or discard it when the case no longer allows delivery. A second run
    (retry, redelivery) sends the same secret under the same key, or nothing."""
    from app.messaging import send

    case, row = _locked(action_id)
    if case is None or row is None or not row.options.get("sealed"):
        return False
    user = records.user_by_id(case.user_id)
    assert user is not None  # an action exists only on a case that names its user
    refused = _undeliverable(case, user, row)
    if refused is not None:
        _discard(case, user, row, *refused)
        return False
    # The tenant before the phone: the e2e kill tests find this task by its last query before
    # the send, the phone's.
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    channel = records.channel(verified_phone(case))
    assert channel is not None
    try:
        secret = json.loads(decrypt(row.options["sealed"]))
        send("phone", channel.value, subject="Account recovery",
             body=_delivery_text(row.action, secret, signin=page_url(tenant, "signin")),
             key=f"action:{row.id}", method="sms")
    except (PermanentDeliveryError, UnreadableCiphertext) as exc:
        _delivery_failed(case, row, exc)
        return False
    row.options = {k: v for k, v in row.options.items() if k != "sealed"}
    row.sealed_until, row.delivery_state = None, "sent"
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_SECRET_DELIVERED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id,
                 details={"action_id": str(row.id), "action": row.action, "channel_id": str(channel.id),
                          "round": row.round})
    return True


def _delivery_failed(case: RecoveryCase, row: CaseAction, exc: Exception) -> None:
    """A secret that can never go out as things stand (the number refused it for good, a key
    gone): stop trying, and say why where people look. The sweep re-queued such a delivery every
    five minutes, each time into a new dead letter. The secret stays sealed (until it expires)
    so that `rekey dlq retry` sends it once the cause is fixed."""
    row.delivery_state = "failed"
    what = "backup codes" if row.action == "generate_backup_codes" else "temporary password"
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_SECRET_DELIVERY_FAILED,
                 tenant_id=case.tenant_id, target_user_id=case.user_id, case_id=case.id,
                 reason=f"The {what} could not be texted to the verified phone and were not sent: "
                        f"{type(exc).__name__}. Fix the cause, then replay the dead letter (rekey dlq retry).",
                 details={"action_id": str(row.id), "action": row.action, "error": type(exc).__name__,
                          "message": str(exc)[:200]})
    record_dead_letter("rekey.recovery.deliver_secret", {"action_id": str(row.id)}, None, exc, 0)


def expire_sealed_secrets(limit: int = 200) -> int:
    """Beat: erase the sealed secrets still undelivered 24 hours after they were generated,
    oldest first (each audited); the secrets themselves stop working."""
    due = db.session.scalars(select(CaseAction.id).where(CaseAction.sealed_until <= utcnow())
                             .order_by(CaseAction.sealed_until).limit(limit)).all()
    erased = 0
    for action_id in due:
        case, row = _locked(action_id)
        if case is None or row is None or row.sealed_until is None or row.sealed_until > utcnow():
            continue  # delivered or discarded meanwhile
        user = records.user_by_id(case.user_id)
        assert user is not None
        _discard(case, user, row, "undelivered for 24 hours", AuditAction.RECOVERY_SECRET_EXPIRED)
        erased += 1
    return erased
