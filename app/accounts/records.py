"""The local account record, as the layers above accounts may read and mark it.

Recovery never imports the account models nor writes the account tables: it reads the user row
(a built-in user, or the mirror of an external directory's user, so cases keep their foreign key),
their channels and sign-in history through these functions, and acts on the user through the
`Directory` seam (app/accounts/directory.py, integrations/directory/). What is marked here are
Rekey's own facts about the record (a channel distrusted after a suspected attack, the enrolment
window, the mirror's status), never an effect on the user's factors.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import TypeAlias

from sqlalchemy import func, select

from app.accounts.models import Channel, FederatedIdentity, SigninAttempt, User, UserSession
from app.accounts.services import active_factors, revoke_sessions
from app.extensions import db, utcnow
from integrations.directory.registry import BUILTIN

# The row recovery holds for a case's user: read it, never write it.
UserRecord: TypeAlias = User
ChannelRecord: TypeAlias = Channel

_FAILED = ("bad_password", "bad_factor")


def user_by_id(user_id: uuid.UUID | None) -> User | None:
    return db.session.get(User, user_id) if user_id else None


def find_user(tenant_id: uuid.UUID, *, email: str | None = None, external_id: str | None = None) -> User | None:
    """The tenant's user by (normalised) email, else by the HR external id or the directory's id."""
    if email:
        user = db.session.scalars(select(User).where(User.tenant_id == tenant_id, User.email == email)).first()
        if user is not None:
            return user
    if external_id:
        return db.session.scalars(select(User).where(
            User.tenant_id == tenant_id,
            (User.external_id == external_id) | (User.directory_ref == external_id))).first()
    return None


def directory_ref(user: User) -> str:
    """The user's id in their directory (the built-in one knows them by the local id)."""
    return user.directory_ref if user.directory_kind != BUILTIN and user.directory_ref else str(user.id)


def is_external(user: User) -> bool:
    return user.directory_kind != BUILTIN


def has_active_factor(user: User) -> bool:
    return bool(active_factors(user))


def channel(channel_id: uuid.UUID | str | None) -> Channel | None:
    try:
        cid = channel_id if isinstance(channel_id, uuid.UUID) else uuid.UUID(str(channel_id))
    except ValueError:
        return None
    return db.session.get(Channel, cid)


def channels(ids: list[uuid.UUID]) -> list[Channel]:
    return list(db.session.scalars(select(Channel).where(Channel.id.in_(ids))).all()) if ids else []


def phones_added_before(user_id: uuid.UUID | None, cutoff: datetime) -> list[Channel]:
    """The user's phones on file since before `cutoff` (the channel-age rule)."""
    return list(db.session.scalars(select(Channel).where(
        Channel.user_id == user_id, Channel.kind == "phone", Channel.removed_at.is_(None),
        Channel.added_at < cutoff)).all())


def channels_on_file_at(user_id: uuid.UUID | None, at: datetime) -> list[Channel]:
    """Channels added before `at` and not removed by then, oldest first."""
    return list(db.session.scalars(select(Channel).where(
        Channel.user_id == user_id, Channel.added_at < at,
        (Channel.removed_at.is_(None)) | (Channel.removed_at > at),
    ).order_by(Channel.added_at)).all())


def channel_changes_since(user_id: uuid.UUID, since: datetime) -> int:
    return db.session.scalar(select(func.count()).select_from(Channel).where(
        Channel.user_id == user_id, (Channel.added_at >= since) | (Channel.removed_at >= since))) or 0


def mark_channels_compromised(ids: list[uuid.UUID], case_id: uuid.UUID) -> list[str]:
    """Distrust these channels (verified in a round that ended as a suspected attack)."""
    marked = []
    for row in channels(ids):
        row.compromised_at, row.compromised_case_id = utcnow(), case_id
        marked.append(str(row.id))
    return marked


def federated_identity(user_id: uuid.UUID, issuer: str, subject: str) -> FederatedIdentity | None:
    return db.session.scalars(select(FederatedIdentity).where(
        FederatedIdentity.user_id == user_id, FederatedIdentity.issuer == issuer,
        FederatedIdentity.subject == subject)).first()


def failed_signins_from_unknown_ips(user_id: uuid.UUID, hours: float) -> int:
    """Failed sign-ins in the last `hours` from addresses the user never signed in from."""
    known_ips = select(SigninAttempt.ip).where(
        SigninAttempt.user_id == user_id, SigninAttempt.result == "succeeded", SigninAttempt.ip.is_not(None))
    return db.session.scalar(select(func.count()).select_from(SigninAttempt).where(
        SigninAttempt.user_id == user_id, SigninAttempt.result.in_(_FAILED),
        SigninAttempt.occurred_at >= utcnow() - timedelta(hours=hours),
        SigninAttempt.ip.not_in(known_ips))) or 0


def known_signin_ips(user_id: uuid.UUID, before: datetime) -> set[str | None]:
    return set(db.session.scalars(select(SigninAttempt.ip).where(
        SigninAttempt.user_id == user_id, SigninAttempt.result == "succeeded",
        SigninAttempt.occurred_at < before)).all())


def live_sessions(user_id: uuid.UUID) -> int:
    return db.session.scalar(select(func.count()).select_from(UserSession).where(
        UserSession.user_id == user_id, UserSession.revoked_at.is_(None))) or 0


def close_enrolment(user: User) -> int | None:
    """Close the user's enrolment window (no factor left, case refused or suspected): restricted
    sessions revoked; returns how many, or None when already closed or a factor remains."""
    if user.enrolment_closed_at is not None or active_factors(user):
        return None
    user.enrolment_closed_at = utcnow()
    return revoke_sessions(user.id, scope="restricted")


def reopen_enrolment(user: User) -> bool:
    if user.enrolment_closed_at is None:
        return False
    user.enrolment_closed_at = None
    return True


def mirror_status(user: User, status: str) -> None:
    """Record on an external user's mirror what the directory was told (suspended or active),
    so the local rules (the sign-in pages, the risk screen) see it at once."""
    user.status = status
    user.suspended_at = utcnow() if status == "suspended" else None
