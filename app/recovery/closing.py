"""The end of a case: suspicion (suspend, the "this wasn't me" and cancel links), closing the
loop on enrolment, the follow-up of runbook step 5, the ticket comment, and closing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select

from app.accounts import records
from app.accounts.records import UserRecord as User
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.errors import NotFound
from app.extensions import db, utcnow
from app.jobs.services import claim_effect, enqueue
from app.recovery import models as m
from app.recovery.effects import directory_of_user, ref
from app.recovery.models import CaseAction, RecoveryCase, VerificationCall
from app.recovery.notify import announce, channels_before, redeem_link
from app.recovery.pending import cancel_pending
from app.recovery.rounds import accepted_types
from app.recovery.state import (
    ALLOWED_FROM,
    StateConflict,
    case_user,
    close_enrolment_window,
    effect_key,
    end_round,
    ensure_reason,
    load_case,
    move,
    require,
)

log = structlog.get_logger(__name__)


def _distrust_verified_phones(*cases: RecoveryCase) -> list[str]:
    """Mark the phones verified in these cases' last rounds as compromised: the round ends as
    a suspected attack, so whoever answered on them may be the attacker (a SIM swap). They
    stay on file (and keep getting notices) but verify nobody until a senior admin trusts one."""
    marked: list[str] = []
    for case in cases:
        # A refused case's last active round is the one its refusal ended.
        rounds = {case.round, case.round - 1} if case.state == m.REFUSED else {case.round}
        ids = db.session.scalars(select(VerificationCall.channel_id).where(
            VerificationCall.case_id == case.id, VerificationCall.status == "verified",
            VerificationCall.round.in_(rounds))).all()
        marked.extend(records.mark_channels_compromised(list(ids), case.id))
    return sorted(set(marked))


def _suspend(actor: Actor, case: RecoveryCase, user: User, reason: str, how: str,
             origin: RecoveryCase | None = None) -> None:
    """Suspend the user, cut every session, void pending work, distrust the phones the suspect
    verified, end the round, open an incident, tell the user. `origin` is the ended case whose
    notice raised the alarm, when the suspicion falls on another (open) case."""
    previous, evidence = case.state, accepted_types(case)  # what the suspect passed, for the incident
    distrusted = _distrust_verified_phones(case, *([origin] if origin is not None else []))
    sessions: int | str = records.live_sessions(user.id)
    if records.is_external(user):
        # Rekey refuses to act on the mirror at once; the directory is told by a task that
        # retries until it answers (the event when it confirms: `directory.user_suspended`).
        records.mirror_status(user, "suspended")
        sessions = "in_directory"
        enqueue("rekey.recovery.suspend_in_directory", case_id=str(case.id), user_id=str(user.id))
    else:
        directory_of_user(user).suspend(ref(user))  # status, every session and remembered device
    cancel_pending(actor, case, "suspected attack")
    ended = end_round(case)
    case.flags = sorted(set(case.flags) | {"suspected_attack"})
    case.closed_at = None
    move(case, m.SUSPECTED_ATTACK)
    record_event(actor, AuditAction.USER_SUSPENDED, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=reason, details={"sessions_revoked": sessions, "via": how})
    record_event(actor, AuditAction.SECURITY_INCIDENT_OPENED, tenant_id=case.tenant_id, target_user_id=user.id,
                 case_id=case.id, reason=reason,
                 details={"kind": "suspected_social_engineering", "from_state": previous, "via": how,
                          "evidence": evidence, "round": ended, "channels_distrusted": distrusted,
                          "required_to_recover": ["senior_admin_resume", "verification",
                                                  "force_mfa_reset", "set_temporary_password"]})
    close_enrolment_window(actor, case, reason)
    announce(case, "user.suspended")


def _other_open_case(case: RecoveryCase) -> RecoveryCase | None:
    """The user's open case (locked) when `case` itself has ended, if there is one."""
    if case.state in m.OPEN_STATES or case.user_id is None:
        return None
    return db.session.scalars(select(RecoveryCase).where(
        RecoveryCase.user_id == case.user_id, RecoveryCase.state.in_(m.OPEN_STATES)).with_for_update()).first()


def suspend_user(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> RecoveryCase:
    """The runbook's "it was a social-engineering attack": suspend and treat as an incident."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "suspend_user", actor)
    other = _other_open_case(case)
    if other is not None:
        # An ended case cannot come back as a second open case of the user (one open case per
        # user): the suspicion belongs on the open one.
        raise StateConflict("The user has another open case; suspend from that one.",
                            details={"state": case.state, "open_case_id": str(other.id)})
    _suspend(actor, case, case_user(case), reason, "agent")
    return case


def _suspicion_from_link(token: str, purpose: str, audited: AuditAction, reason: str, how: str,
                         ip: str | None, request_id: str | None, tenant_id: uuid.UUID | None) -> None:
    link = redeem_link(token, purpose, tenant_id=tenant_id)
    if link is None:
        raise NotFound("This link is not valid (used, expired or never issued).")
    case = db.session.scalars(select(RecoveryCase).where(RecoveryCase.id == link.case_id).with_for_update()).one()
    user = case_user(case)
    actor = Actor(type="user_report", id=str(user.id), tenant_id=case.tenant_id, ip=ip, request_id=request_id)
    # A notice's link may come from a case that has since ended while another is open: the
    # suspicion then falls on the open case (a user has one open case at most). It is locked
    # before any audit write, so the tenant's chain head is always taken last.
    target = _other_open_case(case) or case
    record_event(actor, audited, tenant_id=case.tenant_id, target_user_id=user.id, case_id=case.id,
                 details={"link_id": str(link.id)})
    if target.state != m.SUSPECTED_ATTACK:
        _suspend(actor, target, user, reason, how, origin=case if target is not case else None)


def report_not_me(token: str, ip: str | None, request_id: str | None = None, *,
                  tenant_id: uuid.UUID | None = None) -> None:
    """The notice's "this wasn't me" link: works without signing in, once. With `tenant_id`
    (the link page's tenant), another tenant's link is not found."""
    _suspicion_from_link(token, "report", AuditAction.RECOVERY_REPORTED_NOT_ME,
                         "The user reported the recovery was not them.", "report_link", ip, request_id, tenant_id)


def cancel_scheduled_reset(token: str, ip: str | None, request_id: str | None = None, *,
                           tenant_id: uuid.UUID | None = None) -> None:
    """The cooldown notice's cancel link: stop the reset, and treat the case as an attack.
    The use of the link is recorded even when the case is already treated as an attack."""
    _suspicion_from_link(token, "cancel", AuditAction.RECOVERY_RESET_CANCELLED,
                         "The user cancelled a scheduled reset from the notice.", "cancel_link", ip, request_id,
                         tenant_id)


def run_due_scheduled(limit: int = 100) -> int:
    """Beat: queue the scheduled resets whose cooldown has passed."""
    stmt = select(CaseAction).where(CaseAction.status == "scheduled",
                                    CaseAction.execute_after <= utcnow()).limit(limit)
    if db.engine.dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    rows = db.session.scalars(stmt).all()
    for row in rows:
        row.status, row.queued_at = "queued", utcnow()
        enqueue("rekey.recovery.execute_action", action_id=str(row.id))
    return len(rows)


STALLED_AFTER = timedelta(minutes=5)


def requeue_stalled(limit: int = 200) -> int:
    """Beat: queue again the work whose task vanished. A worker whose main process is killed
    leaves its unacknowledged message invisible in Redis for the whole visibility timeout (an
    hour); every task here is idempotent (state checks and effect keys), so a second copy is
    harmless and the user does not wait an hour.

    Each query asks for exactly the stalled work, oldest first, so what waited longest goes
    first and a busy history never hides it: reading any done action and filtering in Python
    past a limit of 200 could miss a stalled delivery for good. A delivery that failed for good
    (`delivery_state = 'failed'`) is not stalled: it waits for `rekey dlq retry`."""
    now = utcnow()
    cutoff = now - STALLED_AFTER
    work: list[tuple[str, str, Any]] = [
        ("rekey.recovery.execute_action", "action_id", select(CaseAction.id).where(
            CaseAction.status == "queued", CaseAction.queued_at < cutoff).order_by(CaseAction.queued_at)),
        ("rekey.recovery.deliver_secret", "action_id", select(CaseAction.id).where(
            CaseAction.delivery_state == "pending", CaseAction.done_at < cutoff).order_by(CaseAction.done_at)),
        ("rekey.recovery.screen_case", "case_id", select(RecoveryCase.id).where(
            RecoveryCase.state == m.RECEIVED, RecoveryCase.opened_at < cutoff).order_by(RecoveryCase.opened_at)),
        ("rekey.recovery.send_verification_code", "call_id", select(VerificationCall.id).where(
            VerificationCall.status == "pending", VerificationCall.created_at < now - timedelta(minutes=1),
            VerificationCall.expires_at > now).order_by(VerificationCall.created_at)),
    ]
    queued = 0
    for task, key, stmt in work:
        for found in db.session.scalars(stmt.limit(limit)).all():
            enqueue(task, **{key: str(found)})
            queued += 1
    return queued


def suspend_in_directory(case_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Tell an external directory about a suspension Rekey already recorded on the mirror: lock
    (or disable) the user there and end their sessions. Idempotent; a transient failure retries
    (the task), and `directory.user_suspended` is audited only once the backend confirmed. A user
    reactivated meanwhile is left alone."""
    case = db.session.get(RecoveryCase, case_id)
    user = records.user_by_id(user_id)
    if case is None or user is None or not records.is_external(user) or user.status != "suspended":
        return False
    if not claim_effect(f"directory-suspend:{case_id}:{user_id}:{user.suspended_at}"):
        return False
    directory = directory_of_user(user)
    directory.suspend(ref(user))
    ended = directory.revoke_sessions(ref(user))
    record_event(Actor.system(case.tenant_id), AuditAction.DIRECTORY_USER_SUSPENDED, tenant_id=case.tenant_id,
                 target_user_id=user.id, case_id=case.id, reason="Suspended in the directory after a suspected attack.",
                 details={"directory": directory.kind, "sessions_revoked": ended})
    return True


def poll_enrolments(limit: int = 200) -> int:
    """Beat: for external directories, which cannot call Rekey, ask whether each user awaiting
    enrolment enrolled a factor since the case was verified; an enrolment closes the loop as
    the built-in hook does (runbook step 4). A directory that does not answer is tried again at
    the next beat."""
    from integrations.directory import DirectoryError

    waiting = db.session.execute(select(RecoveryCase.id, RecoveryCase.user_id).where(
        RecoveryCase.state.in_(ALLOWED_FROM["record_enrolment"]), RecoveryCase.user_id.is_not(None))
        .order_by(RecoveryCase.updated_at)).all()
    closed = asked = 0
    for case_id, user_id in waiting:
        user = records.user_by_id(user_id)
        if user is None or not records.is_external(user):
            continue  # the built-in directory tells recovery through the accounts hook
        # The bound counts external cases only: built-in ones waiting longer must not crowd them out.
        asked += 1
        if asked > limit:
            break
        case = db.session.scalars(select(RecoveryCase).where(RecoveryCase.id == case_id).with_for_update()).first()
        if case is None or case.state not in ALLOWED_FROM["record_enrolment"]:
            continue
        since = case.verified_at or case.opened_at
        try:
            factors = directory_of_user(user).enrolled_since(ref(user), since)
        except DirectoryError as exc:
            log.warning("enrolment_poll_failed", case_id=str(case_id), error=type(exc).__name__)
            continue
        if factors:
            EnrolmentPort().factor_enrolled(case.id, user, Actor.system(case.tenant_id))
            closed += 1
    return closed


class EnrolmentPort:
    """The recovery side of `app.accounts.hooks.RecoveryPort`: an enrolment closes the loop."""

    def lock_case_for_enrolment(self, user: User) -> uuid.UUID | None:
        """The user's verified case that an enrolment now would complete (locked), if any."""
        return db.session.scalars(select(RecoveryCase.id).where(
            RecoveryCase.user_id == user.id, RecoveryCase.state.in_(ALLOWED_FROM["record_enrolment"])
        ).with_for_update()).first()

    def factor_enrolled(self, case_id: uuid.UUID, user: User, actor: Actor) -> None:
        """Close the loop: an enrolment during a verified case recovers it (runbook step 4)."""
        case = db.session.get(RecoveryCase, case_id)
        assert case is not None  # locked by lock_case_for_enrolment in this transaction
        known = records.known_signin_ips(user.id, case.opened_at)
        if actor.ip not in known:
            # Enrolment from an address never seen for this user: the agent should look again.
            case.flags = sorted(set(case.flags) | {"enrolment_from_new_ip"})
        move(case, m.RECOVERED)
        record_event(actor, AuditAction.RECOVERY_RECOVERED, tenant_id=case.tenant_id, target_user_id=user.id,
                     case_id=case.id, details={"new_ip": actor.ip not in known})
        announce(case, "mfa.factor_enrolled")
        enqueue("rekey.recovery.follow_up", case_id=str(case.id))

    def in_recovery(self, user: User) -> bool:
        """Whether the user has an open case."""
        return db.session.scalars(select(RecoveryCase.id).where(
            RecoveryCase.user_id == user.id, RecoveryCase.state.in_(m.OPEN_STATES))).first() is not None


FOLLOW_UP = ("Your account recovery is complete. At your request we verified your identity out of band"
             "{reset}, and you have enrolled a new sign-in factor. Please generate backup codes now and "
             "store them somewhere safe: they let you recover on your own next time. Every step of this "
             "recovery is recorded in our audit log for review. Case {case}.")


def send_follow_up(case_id: uuid.UUID) -> bool:
    """Runbook step 5, once: the brief follow-up to the user, then the ticket comment, then close."""
    from app.messaging import send

    case = db.session.scalars(select(RecoveryCase).where(RecoveryCase.id == case_id).with_for_update()).first()
    # Once per round: a case recovered again after a suspicion gets its own follow-up and closes.
    if (case is None or case.state not in (m.RECOVERED, m.CLOSED)
            or not claim_effect(effect_key(case.id, case.round, "follow_up"))):
        return False
    reset = db.session.scalars(select(CaseAction.id).where(
        CaseAction.case_id == case.id, CaseAction.action == "force_mfa_reset", CaseAction.status == "done",
        CaseAction.round == case.round)).first()
    text = FOLLOW_UP.format(reset=" and removed your old MFA factors" if reset else "", case=case.id)
    emails = [c for c in channels_before(case) if c.kind == "email"]
    prefix = f"follow-up:{case.id}" if case.round == 1 else f"follow-up:{case.id}:r{case.round}"
    for channel in emails:
        send("email", channel.value, subject="Your account recovery is complete", body=text,
             key=f"{prefix}:{channel.id}")
    record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_FOLLOW_UP_SENT, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, details={"emails": len(emails)})
    if case.integration_id and case.ticket_id:
        enqueue("rekey.recovery.post_ticket_comment", case_id=str(case.id))
    # Every ticket that joined the case hears the same (issue 8, item 11).
    for request_id in db.session.scalars(select(m.CaseRequest.id).where(
            m.CaseRequest.case_id == case.id, m.CaseRequest.joined.is_(True),
            m.CaseRequest.ticket_id.is_not(None)).order_by(m.CaseRequest.received_at)):
        enqueue("rekey.recovery.post_ticket_comment", case_id=str(case.id), request_id=str(request_id))
    if case.state == m.RECOVERED:
        move(case, m.CLOSED)
        record_event(Actor.system(case.tenant_id), AuditAction.RECOVERY_CLOSED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, reason="Recovered; follow-up sent.")
    return True


def request_follow_up(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> RecoveryCase:
    """Queue the follow-up (sent at most once per case, whoever asks)."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "send_follow_up", actor)
    # The agent's request and reason are part of the record, even when the follow-up already went.
    record_event(actor, AuditAction.RECOVERY_FOLLOW_UP_REQUESTED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, reason=reason)
    enqueue("rekey.recovery.follow_up", case_id=str(case.id))
    return case


def close_case(actor: Actor, case_id: uuid.UUID | str, *, reason: str) -> RecoveryCase:
    """Close a recovered case by hand."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "close", actor)
    move(case, m.CLOSED)
    record_event(actor, AuditAction.RECOVERY_CLOSED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                 case_id=case.id, reason=reason)
    return case

