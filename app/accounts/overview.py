"""What a signed-in user sees of their own account's security (the account page): their factors
with labels and last use, backup codes remaining, and their recent sign-ins. Read only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from app.accounts.mfa import TOTP_PERIOD
from app.accounts.models import SigninAttempt, User
from app.accounts.services import active_factors, backup_codes_remaining
from app.extensions import db

RECENT_SIGNINS = 10


@dataclass(frozen=True)
class FactorView:
    id: str
    kind: str  # totp | webauthn
    label: str
    added_at: datetime | None
    last_used_at: datetime | None
    removable: bool


def _totp_last_used(step: int) -> datetime | None:
    return datetime.fromtimestamp(step * TOTP_PERIOD, tz=UTC) if step else None


def security_overview(user: User) -> dict[str, Any]:
    """The user's factors (keys removable only while another factor remains), backup codes
    remaining and recent sign-ins, newest first."""
    factors = sorted(active_factors(user), key=lambda f: f.activated_at or f.created_at)
    views = []
    for factor in factors:
        key = factor.credential
        views.append(FactorView(
            id=str(factor.id), kind=factor.kind,
            label=key.label if key is not None else "Authenticator app",
            added_at=factor.activated_at or factor.created_at,
            last_used_at=key.last_used_at if key is not None else _totp_last_used(factor.last_used_step),
            # The last factor cannot go (remove_key refuses it too); the page offers no button.
            removable=factor.kind == "webauthn" and len(factors) > 1))
    attempts = db.session.scalars(
        select(SigninAttempt).where(SigninAttempt.user_id == user.id,
                                    SigninAttempt.result.notin_(("mfa_required",)))
        .order_by(SigninAttempt.occurred_at.desc()).limit(RECENT_SIGNINS)).all()
    return {
        "factors": views,
        "backup_codes_remaining": backup_codes_remaining(user.id),
        "recent_signins": [{"at": a.occurred_at, "ip": a.ip, "method": a.method, "result": a.result}
                           for a in attempts],
    }
