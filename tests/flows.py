"""Shortcuts that put a user in a known state without the HTTP round trips (and argon2 work) a
test is not about, plus the few API calls many tests make."""

from __future__ import annotations

import uuid
from typing import Any

import pyotp
from sqlalchemy import Uuid, bindparam, select, text

from app.accounts.mfa import confirm_totp_enrolment, issue_backup_codes, start_totp_enrolment
from app.accounts.models import SigninAttempt, User
from app.accounts.services import open_session
from app.actor import Actor
from app.audit.models import AuditEvent
from app.extensions import db
from tests.factories import PASSWORD

TENANT_HEADER = "X-Rekey-Tenant"


def raw(statement: str, params: dict[str, Any]) -> Any:
    """Literal SQL whose UUID parameters bind as the dialect stores them (SQLite: hex text)."""
    typed = [bindparam(name, type_=Uuid) for name, value in params.items() if isinstance(value, uuid.UUID)]
    return text(statement).bindparams(*typed)


def user_actor(user: User, ip: str = "192.0.2.10") -> Actor:
    return Actor(type="user", id=str(user.id), tenant_id=user.tenant_id, ip=ip, request_id="test")


def enrol_totp(app: Any, user: User, clock: Any) -> str:
    """Give the user an active TOTP factor (its first code, at `clock`, is spent); returns the
    base32 secret."""
    with app.app_context():
        row = db.session.get(User, user.id)
        actor = user_actor(row)
        _, secret, _ = start_totp_enrolment(actor, row, issuer="Rekey (test)")
        confirm_totp_enrolment(actor, row, pyotp.TOTP(secret).at(clock.time()))
        db.session.commit()
    return secret


def issue_codes(app: Any, user: User) -> list[str]:
    with app.app_context():
        codes = issue_backup_codes(user_actor(user), db.session.get(User, user.id))
        db.session.commit()
    return codes


def session_token(app: Any, user: User, scope: str = "full") -> str:
    """A live session for the user, as a sign-in would open it."""
    with app.app_context():
        token = open_session(db.session.get(User, user.id), scope=scope, ip="192.0.2.10")
        db.session.commit()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def signin(
    client: Any,
    tenant: Any,
    email: str,
    password: str = PASSWORD,
    *,
    ip: str = "198.51.100.7",
    headers: dict[str, str] | None = None,
    **factor: str,
) -> Any:
    """POST /v1/auth/signin from `ip` for the tenant (by slug)."""
    return client.post(
        "/v1/auth/signin",
        json={"email": email, "password": password, **factor},
        headers={TENANT_HEADER: tenant.slug, **(headers or {})},
        environ_base={"REMOTE_ADDR": ip},
    )


def audit_rows(app: Any, tenant_id: uuid.UUID, action: str | None = None) -> list[AuditEvent]:
    with app.app_context():
        stmt = select(AuditEvent).where(AuditEvent.tenant_id == tenant_id).order_by(AuditEvent.seq)
        if action is not None:
            stmt = stmt.where(AuditEvent.action == action)
        rows = db.session.scalars(stmt).all()
        db.session.expunge_all()
        return list(rows)


def attempts(app: Any, tenant_id: uuid.UUID) -> list[SigninAttempt]:
    with app.app_context():
        rows = db.session.scalars(
            select(SigninAttempt)
            .where(SigninAttempt.tenant_id == tenant_id)
            .order_by(SigninAttempt.occurred_at)
        ).all()
        db.session.expunge_all()
        return list(rows)


# --- security keys and the two-step sign-in ---------------------------------------------------


def register_key(client: Any, token: str, key: Any, *, label: str | None = None, **answer: Any) -> Any:
    """Ask for registration options in the session and answer them with the software `key`
    (`answer` tampers: origin=, rp_id=, challenge=, kind=)."""
    r = client.post("/v1/auth/enrol/webauthn", headers=bearer(token))
    assert r.status_code == 200, r.json
    body: dict[str, Any] = {"credential": key.create(r.json["options"], **answer)}
    if label is not None:
        body["label"] = label
    return client.post("/v1/auth/enrol/webauthn/confirm", json=body, headers=bearer(token))


def signin_password(client: Any, tenant: Any, email: str, password: str = PASSWORD, *,
                    ip: str = "198.51.100.7") -> Any:
    """The two-step sign-in's password step."""
    return client.post("/v1/auth/signin/password", json={"email": email, "password": password},
                       headers={TENANT_HEADER: tenant.slug}, environ_base={"REMOTE_ADDR": ip})


def signin_step(client: Any, tenant: Any, path: str, body: dict[str, Any], *, ip: str = "198.51.100.7") -> Any:
    """POST one of the second steps (`second-factor`, `webauthn/options`, `webauthn/verify`)."""
    return client.post(f"/v1/auth/signin/{path}", json=body, headers={TENANT_HEADER: tenant.slug},
                       environ_base={"REMOTE_ADDR": ip})


def signin_with_key(client: Any, tenant: Any, pending: str, key: Any, *, ip: str = "198.51.100.7",
                    **answer: Any) -> Any:
    """Ask for the pending sign-in's request options and answer them with `key`."""
    r = signin_step(client, tenant, "webauthn/options", {"pending_token": pending}, ip=ip)
    assert r.status_code == 200, r.json
    return signin_step(client, tenant, "webauthn/verify",
                       {"pending_token": pending, "credential": key.get(r.json["options"], **answer)}, ip=ip)
