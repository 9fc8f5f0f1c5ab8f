"""Step 1 of the runbook: out-of-band verification evidence, and Rekey's own callback to a
known number. A case is verified only by acceptable evidence; phishing-trivial evidence is
refused with the runbook's reason, and the attempt is audited."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import current_app
from sqlalchemy import select, update

from app.accounts import records
from app.accounts.records import ChannelRecord as Channel
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import encrypt
from app.emails import same_mailbox
from app.errors import NotFound, RuleRefused
from app.extensions import db, utcnow
from app.jobs.services import enqueue
from app.recovery import models as m
from app.recovery.limits import check_verification_limits
from app.recovery.models import Evidence, RecoveryCase, VerificationCall
from app.recovery.rounds import accepted_types, evidence_sufficient
from app.recovery.state import ensure_reason, load_case, move, reopen_enrolment_window, require
from app.tenants.models import Tenant

ACCEPTABLE = ("video_call", "known_number_callback", "hr_attestation", "federated_signin")
# The runbook's "NOT acceptable verification", with its reasons.
REFUSED_TYPES = {
    "email_match": "Matching an email address is phishing-trivial: anyone can say it.",
    "knowledge_based": "Knowledge-based answers (birthday, SSN digits) are widely known; attackers find them.",
    "recovery_email_code": "If the user's email is compromised, the attacker reads the code.",
    "chat_message": "Chat accounts are stolen; a message claiming to be the user is not out-of-band.",
}
# Only Rekey's own machinery may record these; an agent's say-so is not the evidence.
SYSTEM_ONLY = {"known_number_callback": "recorded by confirming a verification call",
               "hr_attestation": "recorded from a signed HR integration webhook",
               # Issue 8, item 5: what an agent typed (an issuer, a subject, a time) proves nothing; the
               # issuer and subject are on the user's own detail page. Only a sign-in Rekey observed counts.
               "federated_signin": "recorded by the system from an OpenID Connect sign-in it observed "
                                   "(send_federated_signin_link, or the user's federated sign-in page)"}
CODE_TTL = timedelta(minutes=10)
CODE_ATTEMPTS = 5
COMPROMISED_REASON = ("This phone was verified in a round that ended as a suspected attack; a senior admin "
                      "must mark it trusted again before it can verify anyone.")


class UnacceptableEvidence(RuleRefused):
    code = "unacceptable_evidence"
    keep_changes = True  # the rejected attempt is audited


class ChannelTooNew(RuleRefused):
    code = "channel_too_new"


class ChannelCompromised(RuleRefused):
    code = "channel_compromised"


class InvalidVerificationCode(RuleRefused):
    code = "invalid_code"
    keep_changes = True  # the attempt counter must survive the refusal


def _reject(actor: Actor, case: RecoveryCase, type_: str, reason: str, message: str,
            details: dict[str, Any] | None = None) -> UnacceptableEvidence:
    db.session.add(Evidence(tenant_id=case.tenant_id, case_id=case.id, type=type_[:40], accepted=False,
                            details=details or {}, rejection_reason=message, recorded_by_type=actor.type,
                            recorded_by_id=actor.id, reason=reason, round=case.round))
    record_event(actor, AuditAction.RECOVERY_EVIDENCE_REJECTED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, reason=reason,
                 details={"type": type_[:40], "rejection": message})
    return UnacceptableEvidence(message, details={"type": type_[:40], "reason": message})


def _check_video_call(details: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    # That the agent is not the user was settled by `require` (state.is_own_account).
    result = details.get("result")
    if result != "match":
        return f"A video call with result {result!r} does not verify (only 'match' does).", {}
    if details.get("matched_against") not in ("hr_photo", "government_id"):
        return "A video call must be matched against the HR photo or a government ID.", {}
    reference = details.get("reference")
    if not isinstance(reference, str) or not reference.strip():
        return "A video call needs a reference (ticket, recording-free log entry).", {}
    return None, {"result": "match", "matched_against": details["matched_against"],
                  "reference": reference.strip()[:200]}


def record_evidence(actor: Actor, case_id: uuid.UUID | str, *, type_: str, details: dict[str, Any],
                    reason: str) -> Evidence:
    """Record evidence an agent collected; refuse the unacceptable with the runbook's reason."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "record_evidence", actor)
    user = records.user_by_id(case.user_id)
    if type_ in REFUSED_TYPES:
        raise _reject(actor, case, type_, reason, REFUSED_TYPES[type_])
    if type_ not in ACCEPTABLE:
        raise _reject(actor, case, type_, reason, "Unknown evidence type; only out-of-band verification counts.")
    if type_ in SYSTEM_ONLY:
        raise _reject(actor, case, type_, reason, f"{type_} is {SYSTEM_ONLY[type_]}, not entered by hand.")
    assert user is not None  # cases without a user are refused before they can take evidence
    problem, kept = _check_video_call(details)
    if problem:
        raise _reject(actor, case, type_, reason, problem)
    return accept_evidence(actor, case, type_, kept, reason)


def accept_evidence(actor: Actor, case: RecoveryCase, type_: str, details: dict[str, Any],
                    reason: str | None) -> Evidence:
    """Store acceptable evidence and verify the case once the tenant's policy is met."""
    evidence = Evidence(tenant_id=case.tenant_id, case_id=case.id, type=type_, accepted=True, details=details,
                        recorded_by_type=actor.type, recorded_by_id=actor.id, reason=reason, round=case.round)
    db.session.add(evidence)
    db.session.flush()
    record_event(actor, AuditAction.RECOVERY_EVIDENCE_RECORDED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id, reason=reason,
                 details={"evidence_id": str(evidence.id), "type": type_, **details})
    if case.state == m.AWAITING_VERIFICATION and evidence_sufficient(case):
        case.verified_at = utcnow()
        move(case, m.VERIFIED)
        record_event(actor, AuditAction.RECOVERY_VERIFIED, tenant_id=case.tenant_id, target_user_id=case.user_id,
                     case_id=case.id, reason=reason, details={"types": accepted_types(case), "round": case.round})
        reopen_enrolment_window(actor, case, reason)
    return evidence


# --- verification calls to a known number ---------------------------------------------------


def _code_digest(call_id: uuid.UUID, code: str) -> str:
    pepper = current_app.extensions["rekey.settings"].code_pepper.encode()
    return hmac.new(pepper, f"{call_id}:{code}".encode(), hashlib.sha256).hexdigest()


def start_of_case_day(case: RecoveryCase) -> datetime:
    """Midnight of the day the case opened, on the tenant's clock (`time_zone`), in UTC. The
    runbook's "before today" is the tenant's day: with the UTC day, a tenant eight hours from UTC
    would accept a phone added that local morning (a fresh SIM swap) as on file "before today"."""
    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    zone = ZoneInfo(tenant.setting("time_zone"))
    local_day = case.opened_at.astimezone(zone).date()
    # On a day whose midnight a clock change skips, this is the moment the day began.
    return datetime.combine(local_day, time.min, tzinfo=zone).astimezone(UTC)


def eligible_channels(case: RecoveryCase) -> list[Channel]:
    """Phones on the account since before the start of the day the case opened (tenant's clock)."""
    cutoff = start_of_case_day(case)
    return records.phones_added_before(case.user_id, cutoff)


def place_verification_call(actor: Actor, case_id: uuid.UUID | str, *, channel_id: str,
                            method: str) -> VerificationCall:
    """Send a one-time code to a phone that predates the case; the agent never types a number."""
    case = load_case(actor, case_id, lock=True)
    require(case, "place_verification_call", actor)
    channel = records.channel(channel_id)
    if channel is None or channel.user_id != case.user_id or channel.kind != "phone" or channel.removed_at:
        raise NotFound("No such phone channel on this user.")
    day_started = start_of_case_day(case)
    if channel.added_at >= day_started:
        raise ChannelTooNew(
            "This number was added on or after the day the case opened; it could be the attacker's.",
            details={"channel_id": str(channel.id), "added_at": channel.added_at.isoformat(),
                     "case_day_started_at": day_started.isoformat()})
    if channel.compromised_at is not None:
        # Verified in a round that ended as a suspected attack: a SIM-swapped number would
        # verify the attacker again. Only a senior admin's trust makes it callable again.
        raise ChannelCompromised(COMPROMISED_REASON, details={
            "channel_id": str(channel.id), "compromised_at": channel.compromised_at.isoformat(),
            "compromised_case_id": str(channel.compromised_case_id) if channel.compromised_case_id else None})
    check_verification_limits(actor, case)
    # A new call supersedes any earlier pending one, so only one code is live at a time.
    db.session.execute(update(VerificationCall).where(
        VerificationCall.case_id == case.id, VerificationCall.status.in_(("pending", "sent"))
    ).values(status="expired", code_encrypted=None).execution_options(synchronize_session=False))
    call_id = uuid.uuid4()
    code = f"{secrets.randbelow(10**8):08d}"
    call = VerificationCall(id=call_id, tenant_id=case.tenant_id, case_id=case.id, channel_id=channel.id,
                            method=method, status="pending", code_digest=_code_digest(call_id, code),
                            code_encrypted=encrypt(code), attempts=0, max_attempts=CODE_ATTEMPTS,
                            placed_by=actor.id or actor.type, created_at=utcnow(),
                            expires_at=utcnow() + CODE_TTL, round=case.round)
    db.session.add(call)
    db.session.flush()
    record_event(actor, AuditAction.RECOVERY_VERIFICATION_CALL_PLACED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id,
                 details={"call_id": str(call.id), "channel_id": str(channel.id), "method": method})
    enqueue("rekey.recovery.send_verification_code", call_id=str(call.id))
    return call


def confirm_verification_call(actor: Actor, case_id: uuid.UUID | str, call_id: str, code: str) -> VerificationCall:
    """Check the code the user read back; five wrong tries lock the call."""
    case = load_case(actor, case_id, lock=True)
    require(case, "confirm_verification_call", actor)
    try:
        call = db.session.get(VerificationCall, uuid.UUID(str(call_id)), with_for_update=True)
    except ValueError:
        call = None
    if call is None or call.case_id != case.id:
        raise NotFound("No such verification call on this case.")
    if call.status in ("pending", "sent") and call.expires_at <= utcnow():
        call.status, call.code_encrypted = "expired", None
    if call.status not in ("pending", "sent"):
        raise InvalidVerificationCode(f"This verification call is {call.status}; place a new one.",
                                      details={"status": call.status, "attempts_left": 0})
    call.attempts += 1
    if not hmac.compare_digest(call.code_digest, _code_digest(call.id, code.strip())):
        left = call.max_attempts - call.attempts
        if left <= 0:
            call.status, call.code_encrypted = "locked", None
        record_event(actor, AuditAction.RECOVERY_VERIFICATION_CODE_REJECTED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id,
                     details={"call_id": str(call.id), "attempts": call.attempts, "locked": left <= 0})
        raise InvalidVerificationCode("The code is not correct.",
                                      details={"attempts_left": max(left, 0), "status": call.status})
    call.status, call.verified_at, call.code_encrypted = "verified", utcnow(), None
    accept_evidence(actor, case, "known_number_callback",
                    {"call_id": str(call.id), "channel_id": str(call.channel_id), "method": call.method},
                    reason="Code read back from a known number")
    return call




# --- arriving by webhook ----------------------------------------------------------------------


def record_hr_attestation(tenant: Tenant, integration: Any, actor: Actor, data: dict[str, Any]) -> RecoveryCase:
    """The manager/HR corroboration of runbook step 1, from a signed HR integration of the
    case's own tenant. The voucher must not be the user (nor the requester)."""
    from app.accounts.services import normalize_email
    from app.errors import ValidationFailed

    if integration.kind != "hr":
        raise UnacceptableEvidence("Only an HR integration may attest.", details={"kind": integration.kind})
    case = None
    if data.get("case_id"):
        try:
            case = db.session.scalars(select(RecoveryCase).where(
                RecoveryCase.id == uuid.UUID(str(data["case_id"])),
                RecoveryCase.tenant_id == tenant.id).with_for_update()).first()
        except ValueError:
            case = None
    elif data.get("user_email"):
        try:
            user = records.find_user(tenant.id, email=normalize_email(str(data["user_email"])))
        except ValidationFailed:
            user = None
        if user is not None:
            case = db.session.scalars(select(RecoveryCase).where(
                RecoveryCase.user_id == user.id, RecoveryCase.state.in_(m.OPEN_STATES)).with_for_update()).first()
    if case is None:
        # Another tenant's case id lands here too: it does not exist for this integration.
        raise NotFound("No open case matches the attestation.")
    require(case, "record_evidence", actor)
    user = records.user_by_id(case.user_id)
    assert user is not None
    try:
        voucher = normalize_email(str(data.get("voucher_email") or ""))
    except ValidationFailed:
        voucher = ""
    relation = data.get("relation")
    reason = f"HR attestation {data.get('reference') or ''}".strip()
    if data.get("case_id") and data.get("user_email"):
        try:
            named = normalize_email(str(data["user_email"]))
        except ValidationFailed:
            named = ""
        if named != user.email:
            # HR vouched for someone else: a mistyped case id must not verify this user.
            raise _reject(actor, case, "hr_attestation", reason,
                          "The attestation names another user than the case's; it corroborates nobody here.")
    if not voucher or relation not in ("manager", "hr"):
        raise _reject(actor, case, "hr_attestation", reason,
                      "The attestation must name a voucher who is the user's manager or HR.")
    if any(same_mailbox(voucher, address) for address in (user.email, case.requester_email)):
        raise _reject(actor, case, "hr_attestation", reason,
                      "The voucher is the user (or the requester); nobody vouches for themselves.")
    accept_evidence(actor, case, "hr_attestation",
                    {"voucher_email": voucher, "relation": relation,
                     "reference": str(data.get("reference") or "")[:200],
                     "integration_id": str(integration.id)}, reason)
    return case


def record_callback_result(tenant: Tenant, actor: Actor, data: dict[str, Any]) -> VerificationCall:
    """A provider's report on a verification call: delivered, answered, or failed."""
    try:
        call = db.session.scalars(select(VerificationCall).where(
            VerificationCall.id == uuid.UUID(str(data.get("call_id"))),
            VerificationCall.tenant_id == tenant.id).with_for_update()).first()
    except ValueError:
        call = None
    if call is None:
        raise NotFound("No such verification call.")
    return _apply_provider_status(call, actor, str(data.get("status") or ""))


def record_provider_status(provider_id: str, status: str | None) -> VerificationCall | None:
    """Twilio's signed status callback, matched to the call by the provider's id."""
    call = db.session.scalars(select(VerificationCall).where(
        VerificationCall.provider_id == provider_id).with_for_update()).first()
    if call is None or status is None:
        return call
    return _apply_provider_status(call, Actor(type="provider", id="twilio", tenant_id=call.tenant_id), status)


def _apply_provider_status(call: VerificationCall, actor: Actor, status: str) -> VerificationCall:
    tenant = db.session.get(Tenant, call.tenant_id)
    assert tenant is not None
    if status in ("failed", "no_answer") and call.status in ("pending", "sent"):
        call.status, call.code_encrypted = "failed", None
        record_event(actor, AuditAction.RECOVERY_VERIFICATION_CALL_FAILED, tenant_id=tenant.id,
                     case_id=call.case_id, details={"call_id": str(call.id), "provider_status": status})
    elif status in ("delivered", "answered") and call.status == "pending":
        call.status = "sent"
    return call


def deliver_verification_code(call_id: uuid.UUID) -> VerificationCall | None:
    """Send the call's code to its phone (the task's one service call). Safe to run twice: only
    a pending call is sent, and the provider dedupes on the call id as idempotency key."""
    from app.crypto import decrypt
    from app.messaging import send
    from integrations.base import PermanentDeliveryError

    call = db.session.get(VerificationCall, call_id, with_for_update=True)
    if call is None or call.status != "pending" or call.code_encrypted is None:
        return call
    if call.expires_at <= utcnow():
        call.status, call.code_encrypted = "expired", None
        return call
    channel = records.channel(call.channel_id)
    assert channel is not None
    code = decrypt(call.code_encrypted)
    spaced = " ".join(code) if call.method == "voice" else code
    body = (f"Your account recovery code is {spaced}. Read it to the support agent who called you. "
            "Nobody else needs it, and support will never ask you for a sign-in code.")
    try:
        sent = send("phone", channel.value, subject="Account recovery code", body=body,
                    key=f"verification-call:{call.id}", method=call.method)
    except PermanentDeliveryError as exc:
        call.status, call.code_encrypted = "failed", None
        record_event(Actor.system(call.tenant_id), AuditAction.RECOVERY_VERIFICATION_CALL_FAILED,
                     tenant_id=call.tenant_id, case_id=call.case_id,
                     details={"call_id": str(call.id), "error": type(exc).__name__})
        return call
    # The code now lives only with the user; keep just its digest.
    call.status, call.sent_at, call.provider_id, call.code_encrypted = "sent", utcnow(), sent.provider_id, None
    return call
