"""Sign-in: routing by the user's state, throttling per account and per IP, no enumeration."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import select, update

from app.accounts.models import PasswordIdentity, User, UserSession
from app.crypto import hash_password, token_digest
from app.extensions import db, utcnow
from tests.factories import PASSWORD
from tests.flows import (
    attempts,
    audit_rows,
    bearer,
    enrol_totp,
    issue_codes,
    session_token,
    signin,
)

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

WRONG = "not the password at all"


def _set_password_state(app, user, **values):
    with app.app_context():
        db.session.execute(
            update(PasswordIdentity).where(PasswordIdentity.user_id == user.id).values(**values)
        )
        db.session.commit()


class TestRouting:
    def test_signin_without_factors_routes_to_enrolment_with_short_restricted_session(
        self, app, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)

        r = signin(client, tenant, user.email)

        assert r.status_code == 200
        assert r.json["status"] == "enrolment_required"
        with app.app_context():
            session = db.session.scalars(
                select(UserSession).where(UserSession.digest == token_digest(r.json["token"]))
            ).one()
            assert session.scope == "restricted"
            assert session.expires_at - session.created_at <= timedelta(minutes=15)

    def test_restricted_session_may_enrol_and_change_password_but_nothing_else(
        self, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        token = signin(client, tenant, user.email).json["token"]

        assert client.post("/v1/auth/enrol/totp", headers=bearer(token)).status_code == 201
        r = client.post(
            "/v1/auth/password",
            headers=bearer(token),
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        )
        assert r.status_code == 200, r.json
        r = client.post("/v1/auth/backup-codes", headers=bearer(token))
        assert r.status_code == 403
        assert r.json["error"]["code"] == "restricted_session"

    def test_signin_with_must_change_password_routes_to_password_change(self, app, client, factory):
        tenant = factory.tenant()
        user = factory.user(tenant)
        _set_password_state(app, user, must_change=True)

        r = signin(client, tenant, user.email)

        assert r.status_code == 200
        assert r.json["status"] == "password_change_required"
        assert (
            client.post("/v1/auth/backup-codes", headers=bearer(r.json["token"])).status_code == 403
        )

    def test_signin_suspended_user_is_refused_and_its_sessions_stop_working(
        self, app, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        token = session_token(app, user)
        with app.app_context():
            db.session.execute(update(User).where(User.id == user.id).values(status="suspended"))
            db.session.commit()

        r = signin(client, tenant, user.email)

        assert r.status_code == 403
        assert r.json["error"]["code"] == "account_suspended"
        assert "token" not in r.json
        assert client.post("/v1/auth/enrol/totp", headers=bearer(token)).status_code == 401

    def test_signin_with_password_only_when_factor_enrolled_asks_for_the_factor(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)

        r = signin(client, tenant, user.email)

        assert r.status_code == 200
        assert r.json == {"status": "mfa_required", "token": None}

    def test_signin_with_totp_opens_full_session(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)

        r = signin(client, tenant, user.email, otp=pyotp.TOTP(secret).at(totp_clock.advance()))

        assert r.status_code == 200
        assert r.json["status"] == "ok"
        assert (
            client.post("/v1/auth/backup-codes", headers=bearer(r.json["token"])).status_code == 201
        )

    def test_signin_with_both_otp_and_backup_code_is_invalid(self, client, factory):
        tenant = factory.tenant()
        user = factory.user(tenant)

        r = signin(client, tenant, user.email, otp="123456", backup_code="abcde-fghij-klmno-pqrst")

        assert r.status_code == 400
        assert r.json["error"]["code"] == "validation_error"

    def test_signin_with_non_ascii_digits_as_otp_is_refused_not_an_error(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)

        r = signin(client, tenant, user.email, otp="\u0661\u0662\u0663\u0664\u0665\u0666")

        assert r.status_code == 401
        assert r.json["error"]["code"] == "invalid_credentials"


class TestNoEnumeration:
    def test_signin_unknown_email_and_wrong_password_answer_identically(self, client, factory):
        tenant = factory.tenant()
        user = factory.user(tenant)

        unknown = signin(client, tenant, "nobody-here@example.com", WRONG)
        wrong = signin(client, tenant, user.email, WRONG)

        assert unknown.status_code == wrong.status_code == 401
        assert unknown.json == wrong.json
        assert unknown.headers.get("WWW-Authenticate") == wrong.headers.get("WWW-Authenticate")

    def test_signin_unknown_tenant_answers_like_a_wrong_password(self, client, factory):
        tenant = factory.tenant()
        user = factory.user(tenant)
        wrong = signin(client, tenant, user.email, WRONG)

        r = client.post(
            "/v1/auth/signin",
            json={"email": user.email, "password": WRONG},
            headers={"X-Rekey-Tenant": "no-such-tenant"},
        )

        assert r.status_code == 401
        assert r.json == wrong.json

    def test_signin_wrong_totp_answers_like_a_wrong_password(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)
        wrong_password = signin(client, tenant, user.email, WRONG)

        r = signin(client, tenant, user.email, otp="000000")

        assert r.status_code == 401
        assert r.json == wrong_password.json

    def test_signin_unknown_email_costs_as_much_as_wrong_password(self, client, factory):
        # Without the dummy hash an unknown email answers ~20x faster (no argon2 work). The
        # samples are interleaved and the fastest of each kept, so load on the machine only
        # adds time to both sides and cannot fake a difference.
        tenant = factory.tenant()
        user = factory.user(tenant)
        known: list[float] = []
        unknown: list[float] = []
        for i in range(3):
            for email, samples in ((user.email, known), ("ghost@example.com", unknown)):
                start = time.perf_counter()
                signin(client, tenant, email, WRONG, ip=f"203.0.113.{i + 1}")
                samples.append(time.perf_counter() - start)

        assert min(unknown) > 0.6 * min(known)


class TestThrottling:
    def test_signin_locks_the_account_after_failures_from_many_ips(
        self, app, client, factory, tune
    ):
        tune(signin_max_failures=3, signin_lockout_seconds=600)
        tenant = factory.tenant()
        user = factory.user(tenant)
        for i in range(3):
            assert (
                signin(client, tenant, user.email, WRONG, ip=f"203.0.113.{i + 1}").status_code
                == 401
            )

        r = signin(client, tenant, user.email, ip="198.51.100.200")  # right password, fresh IP

        assert r.status_code == 429
        assert r.json["error"]["code"] == "account_locked"
        assert 0 < int(r.headers["Retry-After"]) <= 600
        assert "token" not in r.json
        locked = audit_rows(app, tenant.id, "auth.account_locked")
        assert [e.target_user_id for e in locked] == [user.id]

    def test_signin_unknown_email_locks_exactly_like_a_real_account(self, client, factory, tune):
        tune(signin_max_failures=2)
        tenant = factory.tenant()
        user = factory.user(tenant)
        for email in (user.email, "ghost@example.com"):
            for i in range(2):
                signin(client, tenant, email, WRONG, ip=f"203.0.113.{i + 1}")

        real = signin(client, tenant, user.email, ip="198.51.100.9")
        ghost = signin(client, tenant, "ghost@example.com", ip="198.51.100.9")

        assert real.status_code == ghost.status_code == 429
        assert real.json == ghost.json

    def test_signin_locks_an_ip_after_failures_across_accounts(self, client, factory, tune):
        tune(ip_max_failures=3, signin_max_failures=10)
        tenant = factory.tenant()
        user = factory.user(tenant)
        for i in range(3):
            signin(client, tenant, f"spray{i}@example.com", WRONG, ip="203.0.113.66")

        from_attacker = signin(client, tenant, user.email, ip="203.0.113.66")
        from_elsewhere = signin(client, tenant, user.email, ip="198.51.100.1")

        assert from_attacker.status_code == 429
        assert from_attacker.json["error"]["code"] == "rate_limited"
        assert int(from_attacker.headers["Retry-After"]) > 0
        assert from_elsewhere.status_code == 200

    def test_signin_success_resets_the_failure_count(self, client, factory, tune):
        tune(signin_max_failures=3)
        tenant = factory.tenant()
        user = factory.user(tenant)
        for _ in range(2):
            signin(client, tenant, user.email, WRONG)
        assert signin(client, tenant, user.email).status_code == 200
        for _ in range(2):
            signin(client, tenant, user.email, WRONG)

        assert signin(client, tenant, user.email).status_code == 200

    def test_signin_records_every_attempt_with_its_ip(self, app, client, factory, tune, totp_clock):
        tune(signin_max_failures=2)
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)
        signin(client, tenant, user.email, ip="198.51.100.1")  # mfa_required
        signin(client, tenant, user.email, WRONG, ip="198.51.100.2")
        signin(client, tenant, user.email, otp="000000", ip="198.51.100.3")
        signin(client, tenant, user.email, ip="198.51.100.4")  # locked by now
        signin(client, tenant, "ghost@example.com", WRONG, ip="198.51.100.5")

        seen = [(a.ip, a.result, a.user_id) for a in attempts(app, tenant.id)]

        assert seen == [
            ("198.51.100.1", "mfa_required", user.id),
            ("198.51.100.2", "bad_password", user.id),
            ("198.51.100.3", "bad_factor", user.id),
            ("198.51.100.4", "locked", user.id),
            ("198.51.100.5", "unknown_user", None),
        ]

    def test_signin_parallel_guesses_never_exceed_the_account_limit(self, app, factory, tune, pg):
        tune(signin_max_failures=4, ip_max_failures=1000)
        tenant = factory.tenant()
        user = factory.user(tenant)
        statuses: list[int] = []

        def guess(i: int, barrier: threading.Barrier) -> None:
            client = app.test_client()
            barrier.wait()
            r = signin(client, tenant, user.email, f"guess number {i:04d}", ip=f"203.0.113.{i + 1}")
            statuses.append(r.status_code)

        for wave in range(4):  # waves of 8 parallel guesses, 32 in all
            barrier = threading.Barrier(8)
            threads = [threading.Thread(target=guess, args=(wave * 8 + i, barrier)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        assert len(statuses) == 32
        assert set(statuses) <= {401, 429}
        assert statuses.count(401) <= 4  # each 401 is a password actually tried
        counted = [a for a in attempts(app, tenant.id) if a.result == "bad_password"]
        assert len(counted) == statuses.count(401)


class TestSigninAudit:
    def test_signin_success_is_audited_with_the_user_as_actor_request_id_and_ip(
        self, app, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)

        signin(
            client, tenant, user.email, ip="198.51.100.23", headers={"X-Request-Id": "req-signin-1"}
        )

        [event] = audit_rows(app, tenant.id, "auth.signin_succeeded")
        assert (event.actor_type, event.actor_id) == ("user", str(user.id))
        assert event.target_user_id == user.id
        assert event.request_id == "req-signin-1"
        assert event.source_ip == "198.51.100.23"
        assert event.details["status"] == "enrolment_required"

    def test_signin_failure_is_audited_against_the_user_with_request_id_and_ip(
        self, app, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)

        signin(
            client,
            tenant,
            user.email,
            WRONG,
            ip="203.0.113.9",
            headers={"X-Request-Id": "req-bad-1"},
        )

        [event] = audit_rows(app, tenant.id, "auth.signin_failed")
        assert event.actor_type == "anonymous"
        assert event.target_user_id == user.id
        assert (event.request_id, event.source_ip) == ("req-bad-1", "203.0.113.9")
        assert event.details == {"result": "bad_password", "method": "password"}

    def test_signin_with_a_replayed_totp_code_is_refused_and_audited(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        code = pyotp.TOTP(secret).at(totp_clock.advance())
        assert signin(client, tenant, user.email, otp=code).status_code == 200

        r = signin(client, tenant, user.email, otp=code, ip="203.0.113.77")

        assert r.status_code == 401
        [event] = audit_rows(app, tenant.id, "mfa.totp_replay_refused")
        assert event.target_user_id == user.id
        assert event.source_ip == "203.0.113.77"
        assert code not in str(event.details)

    def test_signin_with_backup_code_is_audited_with_remaining_count(
        self, app, client, factory, totp_clock
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)
        codes = issue_codes(app, user)

        r = signin(client, tenant, user.email, backup_code=codes[0])

        assert r.json["status"] == "ok"
        [event] = audit_rows(app, tenant.id, "mfa.backup_code_used")
        assert (event.actor_type, event.actor_id) == ("user", str(user.id))
        assert event.details == {"remaining": 9}


def test_temporary_password_works_once_and_not_after_expiry(app, client, factory):
    tenant = factory.tenant()
    user = factory.user(tenant)
    temporary = "Temporary-Pass-0001"
    _set_password_state(
        app,
        user,
        hash=hash_password(temporary),
        temporary=True,
        must_change=True,
        expires_at=utcnow() + timedelta(hours=1),
        set_at=utcnow(),
    )

    first = signin(client, tenant, user.email, temporary)
    second = signin(client, tenant, user.email, temporary)

    assert first.json["status"] == "password_change_required"
    assert second.status_code == 401
    _set_password_state(app, user, used_at=None, expires_at=utcnow() - timedelta(seconds=1))
    assert signin(client, tenant, user.email, temporary).status_code == 401
