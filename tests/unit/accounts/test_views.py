"""The auth API (enrolment, backup codes) and the admin's user detail and notes over HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pyotp
import pytest
from sqlalchemy import func, select

from app.accounts.models import Note
from app.extensions import db
from tests.factories import PHONE
from tests.flows import audit_rows, bearer, enrol_totp, issue_codes, session_token, signin

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

ADDED = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)


def _notes(app, user) -> int:
    with app.app_context():
        return db.session.scalar(
            select(func.count()).select_from(Note).where(Note.user_id == user.id)
        )


class TestEnrolment:
    def test_enrol_totp_shows_the_secret_once_and_confirms_with_a_code(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        token = session_token(app, user, scope="restricted")

        start = client.post(
            "/v1/auth/enrol/totp",
            headers=bearer(token),
            environ_base={"REMOTE_ADDR": "198.51.100.31"},
        )
        totp = pyotp.TOTP(start.json["secret"])
        wrong = client.post(
            "/v1/auth/enrol/totp/confirm", headers=bearer(token), json={"code": "000000"}
        )
        ok = client.post(
            "/v1/auth/enrol/totp/confirm",
            headers=bearer(token),
            json={"code": totp.at(totp_clock.time())},
            environ_base={"REMOTE_ADDR": "198.51.100.31"},
        )

        assert start.status_code == 201
        assert start.json["otpauth_uri"].startswith("otpauth://totp/")
        assert wrong.status_code == 422
        assert wrong.json["error"]["code"] == "invalid_code"
        assert ok.status_code == 200
        assert ok.json["status"] == "active"
        [event] = audit_rows(app, tenant.id, "mfa.factor_enrolled")
        assert (event.actor_type, event.actor_id) == ("user", str(user.id))
        assert event.source_ip == "198.51.100.31"
        assert start.json["secret"] not in str(event.details)

    def test_enrol_confirm_without_a_pending_enrolment_is_a_conflict(self, app, client, factory):
        user = factory.user(factory.tenant())
        token = session_token(app, user)

        r = client.post(
            "/v1/auth/enrol/totp/confirm", headers=bearer(token), json={"code": "123456"}
        )

        assert r.status_code == 409

    def test_enrol_without_a_session_is_unauthenticated(self, client):
        r = client.post("/v1/auth/enrol/totp")

        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"

    def test_backup_codes_regenerated_over_the_api_are_shown_once_and_audited(
        self, app, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        token = session_token(app, user)

        r = client.post("/v1/auth/backup-codes", headers=bearer(token))

        assert r.status_code == 201
        assert len(r.json["codes"]) == 10
        assert r.json["remaining"] == 10
        [event] = audit_rows(app, tenant.id, "mfa.backup_codes_generated")
        assert event.details["count"] == 10
        assert not any(code in str(event.details) for code in r.json["codes"])


class TestUserDetail:
    def test_user_detail_shows_factor_codes_left_phone_and_signins_with_ips(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        agent = factory.agent(tenant)
        user = factory.user(tenant, phones=[(PHONE, ADDED)])
        enrol_totp(app, user, totp_clock)
        codes = issue_codes(app, user)
        assert (
            signin(client, tenant, user.email, backup_code=codes[0], ip="198.51.100.61").status_code
            == 200
        )
        signin(client, tenant, user.email, "wrong password here", ip="203.0.113.62")

        r = client.get(f"/v1/admin/users/{user.id}", headers=agent.headers)

        assert r.status_code == 200
        body = r.json
        assert [(f["kind"], f["status"]) for f in body["factors"]] == [("totp", "active")]
        assert body["backup_codes"] == {"remaining": 9, "label": "9 remaining"}
        [phone] = [c for c in body["channels"] if c["kind"] == "phone"]
        assert phone["value"] == "+141******71"
        assert datetime.fromisoformat(phone["added_at"]) == ADDED
        assert PHONE not in r.get_data(as_text=True)
        assert [(s["ip"], s["result"]) for s in body["recent_signins"]] == [
            ("203.0.113.62", "bad_password"),
            ("198.51.100.61", "succeeded"),
        ]
        assert "secret" not in r.get_data(as_text=True)

    def test_user_detail_of_another_tenant_is_not_found_like_a_missing_one(self, client, factory):
        user = factory.user(factory.tenant())
        stranger = factory.agent(factory.tenant(), role="senior_admin")

        theirs = client.get(f"/v1/admin/users/{user.id}", headers=stranger.headers)
        missing = client.get(f"/v1/admin/users/{uuid.uuid4()}", headers=stranger.headers)

        assert theirs.status_code == missing.status_code == 404
        assert theirs.json == missing.json

    @pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "%00", "' OR 1=1 --"])
    def test_user_detail_with_a_malformed_id_is_not_found(self, client, world, bad_id):
        r = client.get(f"/v1/admin/users/{bad_id}", headers=world.agent.headers)

        assert r.status_code == 404
        assert r.json["error"]["code"] == "not_found"

    @pytest.mark.parametrize(
        "headers",
        [{}, {"Authorization": "Bearer rk_agent_nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    )
    def test_user_detail_without_a_valid_agent_token_is_unauthenticated(
        self, client, world, headers
    ):
        r = client.get(f"/v1/admin/users/{world.user.id}", headers=headers)

        assert r.status_code == 401
        assert r.json["error"]["code"] == "unauthenticated"

    def test_user_detail_refuses_an_end_user_session_token(self, app, client, factory):
        user = factory.user(factory.tenant())

        r = client.get(f"/v1/admin/users/{user.id}", headers=bearer(session_token(app, user)))

        assert r.status_code == 401


class TestNotes:
    def test_note_posted_by_an_agent_is_stored_and_audited(self, app, client, factory):
        tenant = factory.tenant()
        agent = factory.agent(tenant)
        user = factory.user(tenant)

        r = client.post(
            f"/v1/admin/users/{user.id}/notes",
            headers={**agent.headers, "X-Request-Id": "req-n1"},
            json={"body": "Refused: caller could not answer the callback."},
            environ_base={"REMOTE_ADDR": "192.0.2.77"},
        )

        assert r.status_code == 201
        assert r.json["body"] == "Refused: caller could not answer the callback."
        assert r.json["author_id"] == str(agent.agent.id)
        [event] = audit_rows(app, tenant.id, "note.added")
        assert (event.actor_type, event.actor_id) == ("agent", str(agent.agent.id))
        assert (event.request_id, event.source_ip) == ("req-n1", "192.0.2.77")
        assert event.details == {"note_id": r.json["id"]}

    @pytest.mark.parametrize("body", ["he read 492817 to me", "codes: ABCD2-FGHIJ-KLMN3-PQRST"])
    def test_note_that_contains_a_code_is_refused_and_nothing_is_written(
        self, app, client, world, body
    ):
        tenant, agent, user = world.tenant, world.agent, world.user

        r = client.post(
            f"/v1/admin/users/{user.id}/notes", headers=agent.headers, json={"body": body}
        )

        assert r.status_code == 422
        assert body not in r.get_data(as_text=True)
        assert _notes(app, user) == 0
        assert audit_rows(app, tenant.id, "note.added") == []

    def test_note_on_another_tenants_user_is_not_found(self, app, client, factory):
        user = factory.user(factory.tenant())
        stranger = factory.agent(factory.tenant())

        r = client.post(
            f"/v1/admin/users/{user.id}/notes", headers=stranger.headers, json={"body": "hi"}
        )

        assert r.status_code == 404
        assert _notes(app, user) == 0
