"""Telling the real user: every reset, code generation, password set, enrolment and suspension
goes to every channel the user had before the case opened (never one added during it), with
the time, the action, no secret, and a signed single-use "this wasn't me" link."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import select

from app.accounts.models import Channel
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.extensions import db, utcnow
from app.jobs.services import claim_effect, enqueue
from app.recovery.models import RecoveryCase, RecoveryLink

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


def _link_key() -> bytes:
    return hashlib.sha256(b"rekey-links:" + current_app.config["SECRET_KEY"].encode()).digest()


def link_token(link_id: uuid.UUID) -> str:
    """The link's bearer token: its id and an HMAC of it, so no token is ever stored."""
    mac = hmac.new(_link_key(), str(link_id).encode(), hashlib.sha256).hexdigest()
    return f"{link_id.hex}.{mac}"


def link_url(link: RecoveryLink) -> str:
    base = current_app.extensions["rekey.settings"].public_url.rstrip("/")
    return f"{base}/v1/recovery/{link.purpose}/{link_token(link.id)}"


def create_link(case: RecoveryCase, purpose: str, *, ttl: timedelta = LINK_TTL) -> RecoveryLink:
    link_id = uuid.uuid4()
    link = RecoveryLink(id=link_id, tenant_id=case.tenant_id, case_id=case.id, purpose=purpose,
                        digest=link_token(link_id).split(".")[1], created_at=utcnow(),
                        expires_at=utcnow() + ttl)
    db.session.add(link)
    db.session.flush()
    return link


def redeem_link(token: str, purpose: str) -> RecoveryLink | None:
    """The live link this token names (locked), or None for any invalid, used or expired token."""
    if not token.isascii():
        # A real token is hex; `compare_digest` raises on non-ASCII text (a 500, not a 404).
        return None
    link_hex, _, mac = token.partition(".")
    try:
        link_id = uuid.UUID(hex=link_hex)
    except ValueError:
        return None
    if not hmac.compare_digest(link_token(link_id), f"{link_hex}.{mac}"):
        return None
    link = db.session.scalars(select(RecoveryLink).where(RecoveryLink.id == link_id).with_for_update()).first()
    if link is None or link.purpose != purpose or link.used_at is not None or link.expires_at <= utcnow():
        return None
    link.used_at = utcnow()
    return link


def channels_before(case: RecoveryCase) -> list[Channel]:
    """The user's channels as they stood when the case opened: added before it, and not removed
    before it (a channel an attacker removed during the case is still told)."""
    return list(db.session.scalars(select(Channel).where(
        Channel.user_id == case.user_id, Channel.added_at < case.opened_at,
        (Channel.removed_at.is_(None)) | (Channel.removed_at > case.opened_at),
    ).order_by(Channel.added_at)).all())


def announce(case: RecoveryCase, event: str, *, cancel_link: RecoveryLink | None = None) -> int:
    """Queue one notice per pre-existing channel (each its own idempotent task)."""
    report = create_link(case, "report")
    channels = channels_before(case)
    for channel in channels:
        enqueue("rekey.recovery.notify_channel", case_id=str(case.id), event=event,
                channel_id=str(channel.id), report_link_id=str(report.id),
                cancel_link_id=str(cancel_link.id) if cancel_link else None)
    return len(channels)


def deliver_notice(case_id: uuid.UUID, event: str, channel_id: uuid.UUID, report_link_id: uuid.UUID,
                   cancel_link_id: uuid.UUID | None) -> bool:
    """Send one notice to one channel, once (effect key: case, event, channel)."""
    from app.messaging import send

    case = db.session.get(RecoveryCase, case_id)
    channel = db.session.get(Channel, channel_id)
    report = db.session.get(RecoveryLink, report_link_id)
    if case is None or channel is None or report is None:
        return False
    if not claim_effect(f"notify:{case_id}:{event}:{report_link_id}:{channel_id}"):
        return False
    when = utcnow().strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"{when}: {NOTICES[event]}"]
    if cancel_link_id:
        cancel = db.session.get(RecoveryLink, cancel_link_id)
        if cancel is not None:
            lines.append(f"If you did not ask for this, cancel it before {_fmt(cancel.expires_at)}: "
                         f"{link_url(cancel)}")
    lines.append(f"If this wasn't you, report it (no sign-in needed): {link_url(report)}")
    lines.append(f"Reference: case {case.id}. This action is recorded in the audit log.")
    send(channel.kind, channel.value, subject="Security notice about your account", body="\n".join(lines),
         key=f"notice:{case_id}:{event}:{report_link_id}:{channel_id}")
    record_event(Actor.system(case.tenant_id), AuditAction.USER_NOTIFIED, tenant_id=case.tenant_id,
                 target_user_id=case.user_id, case_id=case.id,
                 details={"event": event, "channel_id": str(channel.id), "channel_kind": channel.kind})
    return True


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
