"""Two tenants with every kind of object, for the fuzzer, the bad-input tests and the tenant
isolation matrix; plus the contract checks they share (the error shape, a snapshot of a
tenant's rows)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyotp
import pytest
from sqlalchemy import Table, or_, select

from app.extensions import db
from app.tenants.models import Tenant
from tests.authenticator import SoftKey
from tests.factories import PASSWORD, AgentLogin, RecoveryFactory
from tests.flows import register_key
from tests.signing import body_of, standard_headers

TENANT_HEADER = "X-Rekey-Tenant"
VIDEO_CALL = {"result": "match", "matched_against": "hr_photo", "reference": "VC-1"}


@dataclass
class Side:
    """One tenant and one of each object an attacker from another tenant might aim at."""

    tenant: Tenant
    support: AgentLogin
    senior: AgentLogin
    user: Any
    user_token: str
    integration: Any
    secret: str
    hr: Any
    hr_secret: str
    case_id: str = ""
    call_id: str = ""
    channel_id: str = ""
    evidence_ids: list[str] = field(default_factory=list)
    note_id: str = ""
    key_id: str = ""  # the user's security key (a factor of kind webauthn)

    @property
    def user_id(self) -> str:
        return str(self.user.id)

    @property
    def session_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user_token}"}

    def ids(self) -> dict[str, set[uuid.UUID]]:
        """This tenant's ids by the column names that point at them."""
        return {
            "tenant_id": {self.tenant.id},
            "user_id": {self.user.id},
            "agent_id": {self.support.agent.id, self.senior.agent.id},
            "integration_id": {self.integration.id, self.hr.id},
        }

    def id_strings(self) -> set[str]:
        """Every id of this tenant an answer to another tenant must never contain."""
        values = {str(v) for group in self.ids().values() for v in group}
        values |= {self.case_id, self.call_id, self.channel_id, self.note_id, self.key_id, *self.evidence_ids}
        return {v for v in values if v} | {self.user.email}


def post_signed(client: Any, integration: Any, secret: str, payload: Any, **kw: Any) -> Any:
    body = payload if isinstance(payload, bytes) else body_of(payload)
    return client.post(f"/v1/webhooks/{integration.id}", data=body,
                       headers=standard_headers(secret, body, **kw))


def _full_session(app: Any, user: Any) -> str:
    """Give the user an active TOTP factor and a full session, as a sign-in with a code would."""
    from app.accounts.mfa import confirm_totp_enrolment, start_totp_enrolment
    from app.accounts.models import User
    from app.accounts.services import open_session
    from app.actor import Actor

    with app.app_context():
        row = db.session.get(User, user.id)
        actor = Actor(type="user", id=str(row.id), tenant_id=row.tenant_id, ip="192.0.2.10")
        _, secret, _ = start_totp_enrolment(actor, row, issuer="Rekey (adversarial)")
        confirm_totp_enrolment(actor, row, pyotp.TOTP(secret).now())
        token = open_session(row, scope="full", ip="192.0.2.10")
        db.session.commit()
        return token


def build_side(app: Any, client: Any, factory: RecoveryFactory, name: str, *, verify: bool) -> Side:
    """A tenant with agents, a user (phone on file for years, TOTP, a security key, a live
    session), a standard and an HR integration, and an open case with a verification call,
    evidence (refused, and accepted when `verify`, which verifies the case) and a note."""
    tenant = factory.tenant()
    user = factory.settled_user(tenant, email=f"{name}-{uuid.uuid4().hex[:6]}@example.com")
    integration, secret = factory.integration(tenant)
    hr, hr_secret = factory.integration(tenant, kind="hr")
    side = Side(tenant=tenant, support=factory.agent(tenant), senior=factory.agent(tenant, "senior_admin"),
                user=user, user_token=_full_session(app, user), integration=integration, secret=secret,
                hr=hr, hr_secret=hr_secret)
    key = register_key(client, side.user_token, SoftKey(), label=f"{name}'s key")
    assert key.status_code == 201, key.get_json()
    side.key_id = key.get_json()["id"]
    answer = factory.request_recovery(client, integration, secret, user.email)
    assert answer.status_code == 202, answer.get_json()
    side.case_id = answer.get_json()["case_id"]
    factory.drain_tasks()
    case = client.get(f"/v1/admin/cases/{side.case_id}", headers=side.support.headers).get_json()
    assert case["state"] == "awaiting_verification", case
    side.channel_id = case["callable_channels"][0]["id"]
    call = client.post(f"/v1/admin/cases/{side.case_id}/verification-calls", headers=side.support.headers,
                       json={"channel_id": side.channel_id, "method": "sms"})
    assert call.status_code == 202, call.get_json()
    side.call_id = call.get_json()["id"]
    refused = client.post(f"/v1/admin/cases/{side.case_id}/evidence", headers=side.support.headers,
                          json={"type": "email_match", "details": {}, "reason": "the ticket's address matches"})
    assert refused.status_code == 422, refused.get_json()
    if verify:
        accepted = client.post(f"/v1/admin/cases/{side.case_id}/evidence", headers=side.support.headers,
                               json={"type": "video_call", "details": VIDEO_CALL, "reason": "seen on video"})
        assert accepted.status_code == 201, accepted.get_json()
    note = client.post(f"/v1/admin/users/{side.user_id}/notes", headers=side.support.headers,
                       json={"body": "Called the user back on the number on file."})
    assert note.status_code == 201, note.get_json()
    side.note_id = note.get_json()["id"]
    factory.drain_tasks()
    detail = client.get(f"/v1/admin/cases/{side.case_id}", headers=side.support.headers).get_json()
    side.evidence_ids = [e["id"] for e in detail["evidence"]]
    assert detail["state"] == ("verified" if verify else "awaiting_verification"), detail
    return side


@dataclass
class World:
    """A's case is verified (most actions are open to it); B's still awaits verification (so a
    call on B's case naming A's phone reaches the phone lookup)."""

    a: Side
    b: Side
    factory: RecoveryFactory


def make_world(app: Any) -> World:
    client = app.test_client()
    factory = RecoveryFactory(app)
    return World(a=build_side(app, client, factory, "alice", verify=True),
                 b=build_side(app, client, factory, "bob", verify=False), factory=factory)


@pytest.fixture(scope="module")
def world(app: Any) -> World:
    """Tenants A and B, shared by a module's tests (which must not change A, but the last)."""
    return make_world(app)


# --- the contract's error shape ---------------------------------------------------------------


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is `status` with `{"error": {"code", "message", "details"}}` and nothing else."""
    body = response.get_json(silent=True)
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json", response.mimetype
    assert_error_shape(body)
    if code is not None:
        assert body["error"]["code"] == code, body
    return body  # type: ignore[no-any-return]


def assert_error_shape(body: Any) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"code", "message", "details"}, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["details"], dict), body


# --- what a tenant has, to compare before and after -------------------------------------------

# Tables with no tenant column: their rows belong to a tenant when they name one of its ids.
GLOBAL_TABLES = ("outbox", "effects", "dead_letters", "ops_marks")
_OWNER_COLUMNS = ("tenant_id", "user_id", "agent_id", "integration_id")


def _tables() -> list[Table]:
    import app.accounts.models  # noqa: F401  (every model registers its table)
    import app.audit.models  # noqa: F401
    import app.intake.models  # noqa: F401
    import app.recovery.models  # noqa: F401

    return list(db.metadata.sorted_tables)


def snapshot(app: Any, side: Side) -> dict[str, Any]:
    """Every row that belongs to `side`'s tenant: by tenant, user, agent or integration, or, in the
    tables with no such column (the outbox, effects, dead letters), by naming one of its ids."""
    ids = side.ids()
    names = side.id_strings()
    found: dict[str, Any] = {}
    with app.app_context():
        for table in _tables():
            if table.name in GLOBAL_TABLES:
                texts = (json.dumps([str(v) for v in row]) for row in db.session.execute(select(table)))
                found[table.name] = sorted(t for t in texts if any(n in t for n in names))
                continue
            owners = [table.c[col].in_(ids[col]) for col in _OWNER_COLUMNS if col in table.c]
            if table.name == "tenants":
                owners.append(table.c.id == side.tenant.id)
            assert owners, f"table {table.name} has no tenant owner: classify it in GLOBAL_TABLES"
            rows = db.session.execute(select(table).where(or_(*owners))).all()
            found[table.name] = sorted(json.dumps([str(v) for v in row]) for row in rows)
        db.session.rollback()
    return found


def assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    changed = {name: (before[name], after[name]) for name in before if before[name] != after[name]}
    assert not changed, f"rows changed: {sorted(changed)}"


@pytest.fixture
def unchanged(app: Any) -> Iterator[Any]:
    """`with unchanged(side):` fails if anything of the side's tenant changed inside."""
    from contextlib import contextmanager

    @contextmanager
    def watch(side: Side) -> Iterator[None]:
        before = snapshot(app, side)
        yield
        assert_unchanged(before, snapshot(app, side))

    yield watch


__all__ = ["PASSWORD", "TENANT_HEADER", "Side", "World", "assert_error", "assert_error_shape",
           "post_signed", "snapshot"]
