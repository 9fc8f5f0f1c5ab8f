"""Telling the real user: every reset, code generation, password set, enrolment and suspension
goes to every channel the user had before the case opened (never one added during it), with
the time, the action, no secret, and a single-use "this wasn't me" link of its own."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from app.accounts import records
from app.accounts.records import ChannelRecord as Channel
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import decrypt, encrypt
from app.extensions import db, utcnow
from app.jobs.services import claim_effect, enqueue
from app.recovery.models import CaseAction, RecoveryCase, RecoveryLink
from app.tenants.models import Tenant
from app.tenants.services import page_url

LINK_TTL = timedelta(days=7)

# event -> what the user is told happened (no secret is ever part of a notice).
NOTICES = {
    "mfa.factor_admin_reset": "An administrator removed the sign-in factors (MFA) on your account, "
                              "at a recovery request made in your name.",
    "mfa.backup_codes_generated": "An administrator generated new backup codes for your account and sent "
                                  "them over the channel used to verify you.",
    "user.password_set_by_admin": "An administrator had a temporary password issued for your account and "
                                  "sent over the channel used to verify you.",
    "user.suspended": "Your account was suspended to protect it: a recovery request in your name looked "
                      "like an attack. Support will contact you on a number or address already on file.",
    "mfa.factor_enrolled": "A new sign-in factor was enrolled on your account after an account recovery.",
    "reset.scheduled": "An administrator scheduled a reset of the sign-in factors on your account.",
    "backup_codes.scheduled": "An administrator scheduled new backup codes for your account, to be sent to the "
                              "phone verified in the recovery.",
    "temporary_password.scheduled": "An administrator scheduled a temporary password for your account, to be "
                                    "sent to the phone verified in the recovery.",
}
# A link issued before links remembered their notice.
UNKNOWN_NOTICE = "A security action was taken on your account during an account recovery."

# event -> what the user does next, with the tenant's sign-in page (none for the other events).
NEXT_STEPS = {
    "mfa.factor_admin_reset": "If this was you, sign in at {signin} with your email and password; you will "
                              "then set up a new sign-in factor.",
    "user.password_set_by_admin": "If this was you, sign in at {signin} with the temporary password sent to "
                                  "your verified phone; you will then choose a new password.",
}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_link(case: RecoveryCase, purpose: str, *, event: str, ttl: timedelta = LINK_TTL) -> RecoveryLink:
    """A single-use link about `event`: a random 256-bit token, of which only a SHA-256 is kept
    for good. The token itself is sealed (encrypted) on the row only until its notice is sent,
    then erased: a copy of the database never holds what a link needs (issue 8, item 9: the
    stored digest used to be the token's own MAC half, so any backup could suspend a user or
    cancel a reset)."""
    link_id = uuid.uuid4()
    token = f"{link_id.hex}.{secrets.token_hex(32)}"
    link = RecoveryLink(id=link_id, tenant_id=case.tenant_id, case_id=case.id, purpose=purpose, event=event,
                        digest=_digest(token), token_sealed=encrypt(token), created_at=utcnow(),
                        expires_at=utcnow() + ttl)
    db.session.add(link)
    db.session.flush()
    return link


def _link_url(case: RecoveryCase, link: RecoveryLink) -> tuple[str, RecoveryLink]:
    """The page URL of a link whose notice is being sent (`/t/<tenant>/links/<purpose>/<token>`:
    a GET shows what happened and a confirm button, so a mail scanner fetching it changes
    nothing; only the POST acts), and the link that carries it. A link whose token is no longer
    sealed (one from before tokens were sealed) is replaced by a fresh one."""
    if link.token_sealed is None:
        link = create_link(case, link.purpose, event=link.event or "",
                           ttl=max(link.expires_at - utcnow(), timedelta(0)))
    tenant = db.session.get(Tenant, link.tenant_id)
    assert tenant is not None  # a link cannot outlive its tenant (foreign key)
    return page_url(tenant, f"links/{link.purpose}/{decrypt(link.token_sealed or '')}"), link


def find_link(token: str, purpose: str, *, lock: bool = False) -> RecoveryLink | None:
    """The live (unused, unexpired) link of this purpose the token names, or None for any
    invalid, used or expired token. Reads only: a page showing the link changes nothing."""
    if not token.isascii() or len(token) > 200:
        return None
    # Found by the token's hash alone: an unknown id and a wrong secret look the same.
    stmt = select(RecoveryLink).where(RecoveryLink.digest == _digest(token))
    link = db.session.scalars(stmt.with_for_update() if lock else stmt).first()
    if link is None or link.purpose != purpose or link.used_at is not None or link.expires_at <= utcnow():
        return None
    return link


def redeem_link(token: str, purpose: str, *, tenant_id: uuid.UUID | None = None) -> RecoveryLink | None:
    """Use the live link this token names (locked, marked used), or None. With `tenant_id`, a
    link of another tenant is None too (a link page of tenant A cannot act on B's link)."""
    link = find_link(token, purpose, lock=True)
    if link is None or (tenant_id is not None and link.tenant_id != tenant_id):
        return None
    link.used_at = utcnow()
    return link


@dataclass(frozen=True)
class LinkNotice:
    """What a link's page shows: the notice's event and time and the case, nothing secret."""

    purpose: str
    what: str
    sent_at: datetime
    expires_at: datetime
    case_reference: str
    ticket_id: str | None
    ticket_subject: str | None
    requester_email: str | None
    account_name: str
    reset_runs_at: datetime | None


def describe_link(token: str, purpose: str, tenant_id: uuid.UUID) -> LinkNotice | None:
    """What the live link this token names was about, or None (invalid, used, expired, or
    another tenant's: one answer for all). Reads only."""
    link = find_link(token, purpose)
    if link is None or link.tenant_id != tenant_id:
        return None
    case = db.session.get(RecoveryCase, link.case_id)
    assert case is not None  # links belong to their case (foreign key)
    user = records.user_by_id(case.user_id)
    runs_at = None
    if purpose == "cancel":
        runs_at = db.session.scalar(select(CaseAction.execute_after).where(
            CaseAction.case_id == case.id, CaseAction.status == "scheduled"))
    return LinkNotice(purpose=purpose, what=NOTICES.get(link.event or "", UNKNOWN_NOTICE), sent_at=link.created_at,
                      expires_at=link.expires_at, case_reference=str(case.id), ticket_id=case.ticket_id,
                      ticket_subject=case.subject, requester_email=case.requester_email,
                      account_name=user.display_name if user else "", reset_runs_at=runs_at)


def link_tenant_slug(token: str, purpose: str) -> str | None:
    """The tenant of the live link this token names (for an old `/v1/recovery/...` link, which
    has no tenant in its path), or None. Reads only."""
    link = find_link(token, purpose)
    if link is None:
        return None
    tenant = db.session.get(Tenant, link.tenant_id)
    return tenant.slug if tenant else None


def channels_before(case: RecoveryCase) -> list[Channel]:
    """The user's channels as they stood when the case opened: added before it, and not removed
    before it (a channel an attacker removed during the case is still told)."""
    return records.channels_on_file_at(case.user_id, case.opened_at)


def announce(case: RecoveryCase, event: str, *, cancel_ttl: timedelta | None = None) -> int:
    """Queue one notice per pre-existing channel (each its own idempotent task), each with its
    own "this wasn't me" link and, with `cancel_ttl`, its own link cancelling a scheduled reset."""
    channels = channels_before(case)
    for channel in channels:
        report = create_link(case, "report", event=event)
        cancel = create_link(case, "cancel", event=event, ttl=cancel_ttl) if cancel_ttl else None
        enqueue("rekey.recovery.notify_channel", case_id=str(case.id), event=event,
                channel_id=str(channel.id), report_link_id=str(report.id),
                cancel_link_id=str(cancel.id) if cancel else None)
    return len(channels)


def deliver_notice(case_id: uuid.UUID, event: str, channel_id: uuid.UUID, report_link_id: uuid.UUID,
                   cancel_link_id: uuid.UUID | None) -> bool:
    """Send one notice to one channel, once (effect key: case, event, channel)."""
    from app.messaging import send

    case = db.session.get(RecoveryCase, case_id)
    channel = records.channel(channel_id)
    report = db.session.get(RecoveryLink, report_link_id)
    if case is None or channel is None or report is None:
        return False
    if not claim_effect(f"notify:{case_id}:{event}:{report_link_id}:{channel_id}"):
        return False
    when = utcnow().strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"{when}: {NOTICES[event]}"]
    sent_links = []
    cancel = db.session.get(RecoveryLink, cancel_link_id) if cancel_link_id else None
    if cancel is not None:
        url, cancel = _link_url(case, cancel)
        sent_links.append(cancel)
        lines.append(f"If you did not ask for this, cancel it before {_fmt(cancel.expires_at)}: {url}")
    url, report = _link_url(case, report)
    sent_links.append(report)
    lines.append(f"If this wasn't you, report it (no sign-in needed): {url}")
    if event in NEXT_STEPS:
        tenant = db.session.get(Tenant, case.tenant_id)
        assert tenant is not None
        lines.append(NEXT_STEPS[event].format(signin=page_url(tenant, "signin")))
    lines.append(f"Reference: case {case.id}. This action is recorded in the audit log.")
    send(channel.kind, channel.value, subject="Security notice about your account", body="\n".join(lines),
         key=f"notice:{case_id}:{event}:{report_link_id}:{channel_id}")
    for link in sent_links:
        # Delivered: from now on only the user holds the token. A retry after a lost commit
        # finds it still sealed and sends the very same message again.
        link.token_sealed = None
    record_event(Actor.system(case.tenant_id), AuditAction.USER_NOTIFIED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id,
                 details={"event": event, "channel_id": str(channel.id), "channel_kind": channel.kind})
    return True


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
