"""External directory users mirrored as local user rows (issue 11).

A case keeps its foreign key to a local user: an external directory's user gets a row of its own
(`directory_kind`, `directory_ref`, email), and their contact channels are mirrored with the day
Rekey first saw each one (`first_seen_at`). A directory that keeps no date for a channel gives
`added_at = first_seen_at`, so the channel-age rule (a phone added on or after the case's day
could be the attacker's) treats every channel of a newly connected tenant as recent until the
recent-change window has passed, or until an admin imports the backend's own dates
(`import_channel_dates`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import phonenumbers
from sqlalchemy import select

from app.accounts.models import Channel, FederatedIdentity, User
from app.accounts.services import normalize_phone
from app.emails import normalize_email
from app.errors import ValidationFailed
from app.extensions import db, utcnow
from integrations.directory import ContactChannel, UserDescription


def _channel_value(channel: ContactChannel) -> str | None:
    try:
        if channel.kind == "phone":
            return normalize_phone(channel.value)
        if channel.kind == "email":
            return normalize_email(channel.value)
    except (ValidationFailed, phonenumbers.NumberParseException):
        return None
    return None


def mirror_user(tenant_id: uuid.UUID, kind: str, description: UserDescription) -> User:
    """The local row of an external user (created on first sight), with its channels synced."""
    found = description.user
    email = normalize_email(found.email)
    user = db.session.scalars(select(User).where(
        User.tenant_id == tenant_id, User.directory_kind == kind, User.directory_ref == found.external_id)).first()
    if user is None:
        user = db.session.scalars(select(User).where(User.tenant_id == tenant_id, User.email == email)).first()
    now = utcnow()
    if user is None:
        user = User(id=uuid.uuid4(), tenant_id=tenant_id, email=email, display_name=found.display_name[:200],
                    created_at=now)
        db.session.add(user)
    user.directory_kind, user.directory_ref = kind, found.external_id
    if found.suspended and user.status != "suspended":
        user.status, user.suspended_at = "suspended", now
    db.session.flush()
    sync_channels(user, description, now=now)
    return user


def sync_channels(user: User, description: UserDescription, *, now: datetime | None = None) -> dict[str, int]:
    """Mirror the directory's channels: a new one is recorded with the day first seen (or the
    backend's own date when it keeps one); one gone from the directory is marked removed."""
    now = now or utcnow()
    live = {(c.kind, c.value): c for c in db.session.scalars(select(Channel).where(
        Channel.user_id == user.id, Channel.removed_at.is_(None))).all()}
    seen: set[tuple[str, str]] = set()
    added = 0
    for remote in description.channels:
        value = _channel_value(remote)
        if value is None or (remote.kind, value) in seen:
            continue
        seen.add((remote.kind, value))
        if (remote.kind, value) in live:
            continue
        first = remote.added_at or now
        db.session.add(Channel(user_id=user.id, kind=remote.kind, value=value, added_at=first,
                               verified_at=first, first_seen_at=now))
        added += 1
    removed = 0
    for key, row in live.items():
        if key not in seen and not (row.kind == "email" and row.value == user.email):
            row.removed_at = now
            removed += 1
    if ("email", user.email) not in seen and ("email", user.email) not in live:
        db.session.add(Channel(user_id=user.id, kind="email", value=user.email, added_at=now, verified_at=now,
                               first_seen_at=now))
        added += 1
    for issuer, subject in description.federated:
        if db.session.scalars(select(FederatedIdentity.id).where(
                FederatedIdentity.tenant_id == user.tenant_id, FederatedIdentity.issuer == issuer,
                FederatedIdentity.subject == subject)).first() is None:
            db.session.add(FederatedIdentity(tenant_id=user.tenant_id, user_id=user.id, issuer=issuer,
                                             subject=subject, linked_at=now))
    db.session.flush()
    return {"added": added, "removed": removed}


def mirrored_users(tenant_id: uuid.UUID, kind: str) -> list[User]:
    return list(db.session.scalars(select(User).where(
        User.tenant_id == tenant_id, User.directory_kind == kind).order_by(User.created_at)).all())


def import_channel_dates(tenant_id: uuid.UUID, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Backfill `added_at` from the backend's own records: rows of (email or external id,
    channel, added_at). Only a mirrored channel Rekey first saw itself is changed, and only to
    an earlier date (an import never makes a channel look newer); unknown rows are reported."""
    updated, unknown = 0, []
    for number, row in enumerate(rows, start=1):
        who, value = str(row.get("user") or "").strip(), str(row.get("channel") or "").strip()
        when = row.get("added_at")
        if not who or not value or not isinstance(when, datetime):
            unknown.append({"row": number, "why": "needs user, channel and added_at"})
            continue
        try:
            email = normalize_email(who) if "@" in who else None
        except ValidationFailed:
            email = None
        user = db.session.scalars(select(User).where(
            User.tenant_id == tenant_id,
            (User.email == email) if email else (User.directory_ref == who))).first()
        kind = "email" if "@" in value else "phone"
        try:
            normalized = normalize_email(value) if kind == "email" else normalize_phone(value)
        except (ValidationFailed, phonenumbers.NumberParseException):
            normalized = None
        channel = None if user is None or normalized is None else db.session.scalars(select(Channel).where(
            Channel.user_id == user.id, Channel.kind == kind, Channel.value == normalized,
            Channel.removed_at.is_(None), Channel.first_seen_at.is_not(None))).first()
        if channel is None:
            unknown.append({"row": number, "why": "no mirrored channel of a user of this tenant"})
            continue
        if when < channel.added_at:
            channel.added_at = when
            updated += 1
    db.session.flush()
    return {"updated": updated, "skipped": unknown}
