"""One error shape for every failure, and a failed request changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from app.accounts import services, views
from app.accounts.models import Note
from app.audit.models import AuditEvent
from app.extensions import db
from tests.flows import TENANT_HEADER

pytestmark = pytest.mark.usefixtures("cached_password_hashes")


def _counts(app, tenant) -> tuple[int, int]:
    with app.app_context():
        return (db.session.scalar(select(func.count()).select_from(Note).where(Note.tenant_id == tenant.id)),
                db.session.scalar(select(func.count()).select_from(AuditEvent)
                                  .where(AuditEvent.tenant_id == tenant.id)))


def test_schema_failure_is_400_naming_each_field(client, world):
    r = client.post("/v1/auth/signin", json={"email": "x@example.com", "password": 7, "extra": 1},
                    headers={TENANT_HEADER: world.tenant.slug})

    assert r.status_code == 400
    assert r.json["error"]["code"] == "validation_error"
    assert set(r.json["error"]["details"]["fields"]) == {"password", "extra"}


def test_unexpected_error_is_500_in_the_error_shape_and_rolls_back_what_was_written(
    app, client, world, monkeypatch
):
    def add_note_then_fail(actor, user_id, body):
        services.add_note(actor, user_id, body)  # the note and its audit row are flushed...
        raise RuntimeError("boom: secret detail that must not leak")  # ...then something breaks

    monkeypatch.setattr(views, "add_note", add_note_then_fail)
    before = _counts(app, world.tenant)

    r = client.post(f"/v1/admin/users/{world.user.id}/notes", headers=world.agent.headers,
                    json={"body": "a note"})

    assert r.status_code == 500
    assert r.json == {"error": {"code": "internal_error", "details": {},
                                "message": "An internal error occurred; nothing was changed."}}
    assert "boom" not in r.get_data(as_text=True)
    assert _counts(app, world.tenant) == before


def test_database_outage_is_503_with_retry_after_and_rolls_back(app, client, world, monkeypatch):
    def add_note_then_lose_the_database(actor, user_id, body):
        services.add_note(actor, user_id, body)
        raise OperationalError("INSERT ...", {}, Exception("server closed the connection"))

    monkeypatch.setattr(views, "add_note", add_note_then_lose_the_database)
    before = _counts(app, world.tenant)

    r = client.post(f"/v1/admin/users/{world.user.id}/notes", headers=world.agent.headers,
                    json={"body": "a note"})

    assert r.status_code == 503
    assert set(r.json["error"]) == {"code", "message", "details"}
    assert r.headers["Retry-After"]
    assert _counts(app, world.tenant) == before


def test_missing_credential_is_401_with_a_bearer_challenge(client, world):
    r = client.get(f"/v1/admin/users/{world.user.id}")

    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json["error"]["code"] == "unauthenticated"


def test_refusal_by_rule_is_422_and_writes_nothing(app, client, world):
    before = _counts(app, world.tenant)

    r = client.post(f"/v1/admin/users/{world.user.id}/notes", headers=world.agent.headers,
                    json={"body": "one-time code 112233"})

    assert r.status_code == 422
    assert r.json["error"]["code"] == "rule_refused"
    assert _counts(app, world.tenant) == before
