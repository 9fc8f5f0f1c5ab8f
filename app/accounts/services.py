"""Users, their channels and identities, sessions, notes and the admin's view of a user."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from flask import current_app
from sqlalchemy import and_, func, select, update

from app.accounts.models import (
    BackupCode,
    Channel,
    FederatedIdentity,
    MfaFactor,
    Note,
    PasswordIdentity,
    SigninAttempt,
    User,
    UserSession,
)
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import hash_password, new_token, token_digest
from app.emails import normalize_email, same_mailbox
from app.errors import Conflict, Forbidden, NotFound, RuleRefused, Unauthenticated, ValidationFailed
from app.extensions import db, rows_changed, utcnow
from app.tenants.models import Agent, AgentIdentity, Tenant

# A note that looks like a one-time code or a backup code is refused: agents must never paste a
# secret into the permanent record. Codes are matched in every form sign-in accepts them: a
# TOTP code as apps display it ("492 817"), a backup code with dashes, spaces or none.
_OTP_LIKE = re.compile(r"(?<![\w-])(?:\d{6,8}|\d{3} \d{3}|\d{4} \d{4})(?![\w-])")
_BACKUP_CODE_LIKE = re.compile(r"(?<![\w-])[a-z2-7]{5}(?:[ -]?[a-z2-7]{5}){3}(?![\w-])", re.I)
MIN_PASSWORD_LENGTH = 12


def normalize_phone(raw: str, region: str | None = None) -> str:
    """E.164 form of a phone number; numbers are compared only in this form."""
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValidationFailed("Not a valid phone number.", details={"field": "phone"}) from exc
    if not phonenumbers.is_valid_number(number):
        raise ValidationFailed("Not a valid phone number.", details={"field": "phone"})
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(e164: str) -> str:
    """`+4477******89`: enough to tell numbers apart, not enough to dial."""
    return e164[:4] + "*" * max(len(e164) - 6, 0) + e164[-2:]


def check_new_password(password: str, *, email: str) -> None:
    """Length and obviousness rules for a password a user chooses."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise RuleRefused(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.",
                          details={"min_length": MIN_PASSWORD_LENGTH})
    if len(password) > 256:
        raise RuleRefused("A password may have at most 256 characters.")
    # The name part of the address is guessable context (NIST 800-63B 3.1.1.2); a name of one or
    # two characters is not, and would refuse most passwords for no gain.
    name = email.split("@")[0]
    if len(name) >= 3 and name in password.lower():
        raise RuleRefused("A password may not contain the email address.")


@dataclass(frozen=True)
class PhoneSpec:
    number: str
    added_at: datetime | None = None


@dataclass(frozen=True)
class FederatedSpec:
    issuer: str
    subject: str
    linked_at: datetime | None = None


def create_user(
    tenant: Tenant,
    *,
    email: str,
    actor: Actor,
    password: str | None = None,
    display_name: str = "",
    phones: list[PhoneSpec] | None = None,
    federated: list[FederatedSpec] | None = None,
    privileged: bool = False,
    external_id: str | None = None,
    email_added_at: datetime | None = None,
) -> User:
    """Provision a user with an email channel, optional password, phones and federated links."""
    email = normalize_email(email)
    if db.session.scalars(select(User).where(User.tenant_id == tenant.id, User.email == email)).first():
        raise ValidationFailed("A user with this email exists in the tenant.", details={"field": "email"})
    now = utcnow()
    user = User(id=uuid.uuid4(), tenant_id=tenant.id, email=email, display_name=display_name,
                privileged=privileged, external_id=external_id, created_at=now)
    db.session.add(user)
    if password is not None:
        check_new_password(password, email=email)
        db.session.add(PasswordIdentity(user=user, hash=hash_password(password), set_at=now))
    db.session.add(Channel(user=user, kind="email", value=email, added_at=email_added_at or now,
                           verified_at=email_added_at or now))
    for phone in phones or []:
        added = phone.added_at or now
        db.session.add(Channel(user=user, kind="phone", value=normalize_phone(phone.number),
                               added_at=added, verified_at=added))
    for link in federated or []:
        db.session.add(FederatedIdentity(tenant_id=tenant.id, user=user, issuer=link.issuer,
                                         subject=link.subject, linked_at=link.linked_at or now))
    db.session.flush()
    record_event(actor, AuditAction.USER_CREATED, tenant_id=tenant.id, target_user_id=user.id,
                 details={"phones": len(phones or []), "federated": len(federated or []),
                          "privileged": privileged, "has_password": password is not None})
    return user


def get_user(tenant_id: uuid.UUID, user_id: uuid.UUID | str) -> User:
    """The tenant's user with this id; another tenant's user is NotFound, never Forbidden."""
    try:
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError as exc:
        raise NotFound("No such user.") from exc
    user = db.session.get(User, uid)
    if user is None or user.tenant_id != tenant_id:
        raise NotFound("No such user.")
    return user


def find_user_by_email(tenant_id: uuid.UUID, email: str) -> User | None:
    return db.session.scalars(select(User).where(User.tenant_id == tenant_id, User.email == email)).first()


def active_factors(user: User) -> list[MfaFactor]:
    return [f for f in user.factors if f.status == "active"]


def backup_codes_remaining(user_id: uuid.UUID) -> int:
    return db.session.scalar(
        select(func.count()).select_from(BackupCode).where(
            BackupCode.user_id == user_id, BackupCode.used_at.is_(None), BackupCode.revoked_at.is_(None)
        )
    ) or 0


# --- sessions -------------------------------------------------------------------------------


SESSION_KINDS = ("api", "browser")


def open_session(user: User, *, scope: str, ip: str | None, kind: str = "api") -> str:
    """Issue a session token (returned once; only its digest is kept). `kind` is `api` (a bearer
    token) or `browser` (carried in a cookie; ends after `web_idle_timeout_seconds` unused)."""
    assert kind in SESSION_KINDS
    settings = current_app.extensions["rekey.settings"]
    ttl = settings.session_ttl_seconds if scope == "full" else settings.restricted_session_ttl_seconds
    token = new_token("rk_sess" if kind == "api" else "rk_web")
    now = utcnow()
    db.session.add(UserSession(tenant_id=user.tenant_id, user_id=user.id, digest=token_digest(token),
                               scope=scope, kind=kind, ip=ip, created_at=now, last_seen_at=now,
                               expires_at=now + timedelta(seconds=ttl)))
    db.session.flush()
    return token


def authenticate_session(token: str, *, restricted_ok: bool, kind: str = "api") -> UserSession:
    """The live session of this kind for this token; a restricted one only where `restricted_ok`.
    A browser session also ends when idle too long; each use moves its idle clock on."""
    session = db.session.scalars(select(UserSession).where(UserSession.digest == token_digest(token))).first()
    now = utcnow()
    # Each door takes only its own kind: a cookie copied into a bearer header (or the reverse)
    # would otherwise escape the idle timeout.
    if session is None or session.kind != kind or session.revoked_at is not None or session.expires_at <= now:
        raise Unauthenticated("The session is not valid.")
    if kind == "browser":
        idle = timedelta(seconds=current_app.extensions["rekey.settings"].web_idle_timeout_seconds)
        if (session.last_seen_at or session.created_at) + idle <= now:
            raise Unauthenticated("The session ended after a time without use.")
        session.last_seen_at = now
    user = db.session.get(User, session.user_id)
    if user is None or user.status != "active":
        raise Unauthenticated("The session is not valid.")
    if session.scope != "full" and not restricted_ok:
        raise Forbidden("This session may only enrol a factor and change the password.",
                        code="restricted_session")
    return session


def require_live_session(session_id: uuid.UUID) -> None:
    """Read the session again (past any lock just taken): revoked or expired meanwhile is a 401."""
    session = db.session.scalars(select(UserSession).where(UserSession.id == session_id)
                                 .execution_options(populate_existing=True)).first()
    if session is None or session.revoked_at is not None or session.expires_at <= utcnow():
        raise Unauthenticated("The session is not valid.")


def end_session(token: str) -> bool:
    """Sign out: revoke the one session this token names; False when it was not live."""
    return rows_changed(update(UserSession).where(
        UserSession.digest == token_digest(token), UserSession.revoked_at.is_(None)
    ).values(revoked_at=utcnow())) > 0


def revoke_sessions(user_id: uuid.UUID, *, except_id: uuid.UUID | None = None, scope: str | None = None) -> int:
    """Revoke every live session of the user (but `except_id`; only `scope` ones if given);
    returns how many."""
    stmt = update(UserSession).where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
    if except_id is not None:
        stmt = stmt.where(UserSession.id != except_id)
    if scope is not None:
        stmt = stmt.where(UserSession.scope == scope)
    return rows_changed(stmt.values(revoked_at=utcnow())) or 0


# --- the admin's view ----------------------------------------------------------------------


def describe_user(actor: Actor, user_id: uuid.UUID | str) -> dict[str, Any]:
    """The runbook's user detail / MFA tab: factors, codes remaining, identities, channels with
    when each was added, and recent sign-in activity with IPs."""
    assert actor.tenant_id is not None
    user = get_user(actor.tenant_id, user_id)
    remaining = backup_codes_remaining(user.id)
    attempts = db.session.scalars(
        select(SigninAttempt).where(SigninAttempt.user_id == user.id)
        .order_by(SigninAttempt.occurred_at.desc()).limit(50)
    ).all()
    return {
        "id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "status": user.status,
        "enrolment_closed_at": user.enrolment_closed_at,
        "privileged": user.privileged,
        "created_at": user.created_at,
        "password": {
            "set": user.password is not None,
            "must_change": bool(user.password and user.password.must_change),
            "set_at": user.password.set_at if user.password else None,
        },
        "factors": [
            {"id": f.id, "kind": f.kind, "status": f.status, "created_at": f.created_at,
             "activated_at": f.activated_at, "removed_at": f.removed_at,
             "label": f.credential.label if f.credential else None,
             "last_used_at": f.credential.last_used_at if f.credential else None}
            for f in user.factors if f.status != "pending"
        ],
        "backup_codes": {"remaining": remaining, "label": f"{remaining} remaining"},
        "identities": [
            {"id": i.id, "issuer": i.issuer, "subject": i.subject, "linked_at": i.linked_at}
            for i in user.identities
        ],
        "channels": [channel_view(c) for c in user.channels],
        "recent_signins": [
            {"occurred_at": a.occurred_at, "ip": a.ip, "result": a.result, "method": a.method}
            for a in attempts
        ],
    }


def channel_view(channel: Channel) -> dict[str, Any]:
    """A channel as an agent sees it: phones masked, with when it was added and whether a
    suspected attack left it compromised."""
    return {"id": channel.id, "kind": channel.kind,
            "value": mask_phone(channel.value) if channel.kind == "phone" else channel.value,
            "added_at": channel.added_at, "verified_at": channel.verified_at, "removed_at": channel.removed_at,
            "compromised_at": channel.compromised_at, "compromised_case_id": channel.compromised_case_id}


def _looks_like_secret(text: str) -> bool:
    if _OTP_LIKE.search(text):
        return True
    for match in _BACKUP_CODE_LIKE.finditer(text):
        found = match.group(0)
        # Four five-letter words in a row are ordinary prose ("users think these codes"); a
        # code with dashes, with one of the digits 2-7 (98% of codes) or in capitals is not.
        if "-" in found or any(c in "234567" for c in found) or found.isupper():
            return True
    return False


def add_note(actor: Actor, user_id: uuid.UUID | str, body: str) -> Note:
    """Record a manual note on the user (and in the audit trail)."""
    assert actor.tenant_id is not None and actor.id is not None
    user = get_user(actor.tenant_id, user_id)
    # Control characters are removed so a note can never forge a line in any log or export.
    clean = "".join(ch if ch == "\n" or unicodedata.category(ch)[0] != "C" else " " for ch in body).strip()
    if not clean:
        raise ValidationFailed("A note needs text.", details={"field": "body"})
    if _looks_like_secret(clean):
        raise RuleRefused("The note looks like it contains a code; never record secrets in notes.")
    # The note is copied into the audit trail, which must never hold a full phone number.
    if any(True for _ in phonenumbers.PhoneNumberMatcher(clean, None)):
        raise RuleRefused("The note contains a full phone number; refer to the channel by its masked "
                          "form as the user detail shows it.")
    note = Note(tenant_id=user.tenant_id, user_id=user.id, author_id=uuid.UUID(actor.id), body=clean)
    db.session.add(note)
    db.session.flush()
    record_event(actor, AuditAction.NOTE_ADDED, target_user_id=user.id, reason=clean,
                 details={"note_id": str(note.id)})
    return note


def agent_owns_user(agent: Agent, user: User) -> bool:
    """Whether the agent is this user: the same mailbox (however it is spelt: Unicode width, case,
    a plus-alias) as the user's address or an email channel, the user's external id, or a
    federated subject linked to both. Any one is enough: a full-width copy of an agent's own
    address once passed a raw compare."""
    addresses = [user.email, *db.session.scalars(select(Channel.value).where(
        Channel.user_id == user.id, Channel.kind == "email")).all()]
    if any(same_mailbox(agent.email, address) for address in addresses):
        return True
    if agent.external_id and user.external_id and _id_key(agent.external_id) == _id_key(user.external_id):
        return True
    return db.session.scalars(select(AgentIdentity.id).join(FederatedIdentity, and_(
        FederatedIdentity.issuer == AgentIdentity.issuer, FederatedIdentity.subject == AgentIdentity.subject,
        FederatedIdentity.tenant_id == AgentIdentity.tenant_id)).where(
        AgentIdentity.agent_id == agent.id, FederatedIdentity.user_id == user.id)).first() is not None


def _id_key(external_id: str) -> str:
    return unicodedata.normalize("NFKC", external_id).casefold().strip()


def trust_channel(actor: Actor, user_id: uuid.UUID | str, channel_id: uuid.UUID | str, *, reason: str) -> Channel:
    """A senior admin marks a compromised channel trusted again, with a reason (audited)."""
    assert actor.tenant_id is not None
    user = get_user(actor.tenant_id, user_id)
    try:
        cid = uuid.UUID(str(channel_id))
    except ValueError as exc:
        raise NotFound("No such channel on this user.") from exc
    channel = db.session.scalars(select(Channel).where(Channel.id == cid, Channel.user_id == user.id)
                                 .with_for_update()).first()
    if channel is None:
        raise NotFound("No such channel on this user.")
    if not actor.is_senior_admin:
        raise Forbidden("Only a senior admin may trust a channel again.", details={"required_roles": ["senior_admin"]})
    if not reason or not reason.strip():
        raise ValidationFailed("A reason is required.", details={"field": "reason"})
    agent = db.session.get(Agent, uuid.UUID(actor.id or ""))
    if agent is not None and agent_owns_user(agent, user):
        # Separation of duties: nobody vouches for a channel of their own account.
        raise Forbidden("Agents cannot trust a channel of their own account.", code="own_account")
    if channel.compromised_at is None:
        raise Conflict("This channel is not marked compromised.", details={"channel_id": str(channel.id)})
    was = {"compromised_at": channel.compromised_at.isoformat(),
           "compromised_case_id": str(channel.compromised_case_id) if channel.compromised_case_id else None}
    channel.compromised_at, channel.compromised_case_id = None, None
    record_event(actor, AuditAction.USER_CHANNEL_TRUSTED, target_user_id=user.id, reason=reason.strip(),
                 details={"channel_id": str(channel.id), "kind": channel.kind, **was})
    return channel
