"""Factors: TOTP (replay, window, enrolment expiry, seed at rest), backup codes, password change."""

from __future__ import annotations

import threading
from datetime import timedelta

import pyotp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from app.accounts import mfa
from app.accounts.models import BackupCode, MfaFactor, PasswordIdentity, User
from app.accounts.services import backup_codes_remaining
from app.crypto import decrypt, hash_password
from app.errors import RuleRefused
from app.extensions import db, utcnow
from tests.factories import PASSWORD
from tests.flows import (
    audit_rows,
    bearer,
    enrol_totp,
    issue_codes,
    raw,
    session_token,
    signin,
    user_actor,
)

pytestmark = pytest.mark.usefixtures("cached_password_hashes")


def _factor(user: User) -> MfaFactor:
    return db.session.scalars(
        select(MfaFactor).where(MfaFactor.user_id == user.id, MfaFactor.status == "active")
    ).one()


def _consume(app, user, code: str) -> bool:
    with app.app_context():
        ok = mfa.consume_totp(_factor(user), code)
        db.session.commit()
        return ok


def _use_backup(app, user, code: str) -> bool:
    with app.app_context():
        ok = mfa.consume_backup_code(db.session.get(User, user.id), code)
        db.session.commit()
        return ok


def _race(n: int, attempt) -> list[bool]:
    """Run `attempt()` in n threads released together; each runs in its own app context."""
    barrier = threading.Barrier(n)
    results: list[bool] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(attempt())
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


class TestTotp:
    def test_totp_replay_of_a_used_step_is_refused(self, app, factory, totp_clock):
        user = factory.user(factory.tenant())
        totp = pyotp.TOTP(enrol_totp(app, user, totp_clock))
        code = totp.at(totp_clock.advance())

        assert _consume(app, user, code) is True
        assert _consume(app, user, code) is False

    def test_totp_code_of_an_earlier_step_is_refused_after_a_later_one(
        self, app, factory, totp_clock
    ):
        user = factory.user(factory.tenant())
        totp = pyotp.TOTP(enrol_totp(app, user, totp_clock))
        now = totp_clock.advance(2)

        assert _consume(app, user, totp.at(now + 30)) is True  # next step, within the window
        assert _consume(app, user, totp.at(now)) is False  # current step: earlier than used
        assert _consume(app, user, totp.at(now - 30)) is False

    def test_totp_accepts_one_step_either_side_and_no_more(self, app, factory, totp_clock):
        user = factory.user(factory.tenant())
        totp = pyotp.TOTP(enrol_totp(app, user, totp_clock))
        now = totp_clock.advance(5)

        assert _consume(app, user, totp.at(now - 60)) is False
        assert _consume(app, user, totp.at(now + 60)) is False
        assert _consume(app, user, totp.at(now - 30)) is True
        assert _consume(app, user, totp.at(now + 30)) is True

    def test_totp_enrolment_confirms_within_ten_minutes(self, app, client, factory, totp_clock):
        user = factory.user(factory.tenant())
        token = session_token(app, user, scope="restricted")
        secret = client.post("/v1/auth/enrol/totp", headers=bearer(token)).json["secret"]
        with app.app_context():
            db.session.execute(
                update(MfaFactor)
                .where(MfaFactor.user_id == user.id)
                .values(created_at=utcnow() - timedelta(minutes=9, seconds=50))
            )
            db.session.commit()

        r = client.post(
            "/v1/auth/enrol/totp/confirm",
            headers=bearer(token),
            json={"code": pyotp.TOTP(secret).at(totp_clock.time())},
        )

        assert r.status_code == 200
        assert r.json["status"] == "active"

    def test_totp_enrolment_expires_after_ten_minutes(self, app, client, factory, totp_clock):
        user = factory.user(factory.tenant())
        token = session_token(app, user, scope="restricted")
        secret = client.post("/v1/auth/enrol/totp", headers=bearer(token)).json["secret"]
        with app.app_context():
            db.session.execute(
                update(MfaFactor)
                .where(MfaFactor.user_id == user.id)
                .values(created_at=utcnow() - timedelta(minutes=10, seconds=1))
            )
            db.session.commit()

        r = client.post(
            "/v1/auth/enrol/totp/confirm",
            headers=bearer(token),
            json={"code": pyotp.TOTP(secret).at(totp_clock.time())},
        )

        assert r.status_code == 422
        assert r.json["error"]["code"] == "enrolment_expired"
        with app.app_context():
            statuses = db.session.scalars(
                select(MfaFactor.status).where(MfaFactor.user_id == user.id)
            ).all()
        assert statuses == ["removed"]
        assert audit_rows(app, user.tenant_id, "mfa.factor_enrolled") == []

    def test_totp_seed_is_encrypted_at_rest(self, app, factory, totp_clock):
        user = factory.user(factory.tenant())
        secret = enrol_totp(app, user, totp_clock)

        with app.app_context():
            stored = db.session.execute(
                raw("SELECT secret_encrypted FROM mfa_factors WHERE user_id = :u", {"u": user.id}), {"u": user.id}
            ).scalar_one()
            assert decrypt(stored) == secret
        assert len(secret) >= 32  # 160 bits
        assert secret not in stored and secret.lower() not in stored.lower()

    def test_totp_code_with_other_scripts_digits_is_refused(self, app, factory, totp_clock):
        user = factory.user(factory.tenant())
        enrol_totp(app, user, totp_clock)

        assert _consume(app, user, "\u0661\u0662\u0663\u0664\u0665\u0666") is False
        assert _consume(app, user, "12345") is False

    def test_totp_concurrent_use_of_one_code_succeeds_once(self, app, factory, totp_clock, pg):
        user = factory.user(factory.tenant())
        code = pyotp.TOTP(enrol_totp(app, user, totp_clock)).at(totp_clock.advance())

        results = _race(8, lambda: _consume(app, user, code))

        assert sorted(results) == [False] * 7 + [True]


class TestBackupCodes:
    def test_backup_codes_are_ten_distinct_codes_of_at_least_64_secret_bits(self, app, factory):
        user = factory.user(factory.tenant())

        codes = issue_codes(app, user)

        assert len(codes) == 10 == len(set(codes))
        with app.app_context():
            lookups = db.session.scalars(
                select(BackupCode.lookup).where(BackupCode.user_id == user.id)
            ).all()
        for code in codes:
            compact = code.replace("-", "")
            assert set(compact) <= set("abcdefghijklmnopqrstuvwxyz234567")  # 5 bits a character
            lookup = next(prefix for prefix in lookups if compact.startswith(prefix))
            # The lookup prefix is stored in the clear, so only the rest counts as secret.
            assert (len(compact) - len(lookup)) * 5 >= 64

    def test_backup_codes_are_stored_as_argon2id_hashes_with_a_lookup_prefix(self, app, factory):
        user = factory.user(factory.tenant())
        codes = issue_codes(app, user)

        with app.app_context():
            rows = (
                db.session.execute(
                    raw("SELECT * FROM backup_codes WHERE user_id = :u", {"u": user.id}), {"u": user.id}
                )
                .mappings()
                .all()
            )
        assert len(rows) == 10
        stored = " ".join(str(value) for row in rows for value in row.values())
        for code in codes:
            assert code not in stored and code.replace("-", "") not in stored
        by_lookup = {row["lookup"]: row["hash"] for row in rows}
        for code in codes:
            digest = by_lookup[code[: len(rows[0]["lookup"])]]
            assert digest.startswith("$argon2id$")
            assert PasswordHasher().verify(digest, code)

    def test_backup_code_works_once(self, app, factory):
        user = factory.user(factory.tenant())
        codes = issue_codes(app, user)

        assert _use_backup(app, user, codes[3]) is True
        assert _use_backup(app, user, codes[3]) is False
        with app.app_context():
            assert backup_codes_remaining(user.id) == 9

    def test_backup_code_typed_with_spaces_and_capitals_works(self, app, factory):
        user = factory.user(factory.tenant())
        codes = issue_codes(app, user)

        assert _use_backup(app, user, "  " + codes[0].upper().replace("-", " ") + " ") is True
        assert _use_backup(app, user, codes[1].replace("-", "")) is True
        assert _use_backup(app, user, codes[2][:-1] + "1") is False  # not the alphabet

    def test_backup_codes_regenerated_revoke_the_old_ones(self, app, factory):
        user = factory.user(factory.tenant())
        old = issue_codes(app, user)
        new = issue_codes(app, user)

        assert _use_backup(app, user, old[0]) is False
        assert _use_backup(app, user, new[0]) is True
        with app.app_context():
            assert backup_codes_remaining(user.id) == 9
        generated = audit_rows(app, user.tenant_id, "mfa.backup_codes_generated")
        assert len(generated) == 2
        assert all(code not in str(e.details) for e in generated for code in old + new)

    def test_backup_code_twenty_concurrent_uses_succeed_once(self, app, factory, pg):
        user = factory.user(factory.tenant())
        code = issue_codes(app, user)[0]

        results = _race(20, lambda: _use_backup(app, user, code))

        assert sorted(results) == [False] * 19 + [True]
        with app.app_context():
            assert backup_codes_remaining(user.id) == 9


class TestPasswordChange:
    NEW = "a different long passphrase"

    def _change(self, client, token, **body):
        return client.post("/v1/auth/password", headers=bearer(token), json=body)

    def test_password_change_must_differ_from_the_current_one(self, app, client, factory):
        user = factory.user(factory.tenant())
        token = session_token(app, user)

        r = self._change(client, token, current_password=PASSWORD, new_password=PASSWORD)

        assert r.status_code == 422
        assert "differ" in r.json["error"]["message"]

    def test_password_change_needs_a_minimum_length(self, app, client, factory):
        user = factory.user(factory.tenant())
        token = session_token(app, user)

        r = self._change(client, token, current_password=PASSWORD, new_password="short pass1")

        assert r.status_code == 422
        assert r.json["error"]["details"] == {"min_length": 12}

    def test_password_change_needs_the_current_password(self, app, client, factory):
        user = factory.user(factory.tenant())
        token = session_token(app, user)

        missing = self._change(client, token, new_password=self.NEW)
        wrong = self._change(
            client, token, current_password="wrong guess here", new_password=self.NEW
        )

        assert missing.status_code == wrong.status_code == 422
        assert wrong.json["error"]["code"] == "invalid_credentials"
        assert audit_rows(app, user.tenant_id, "user.password_changed") == []

    def test_password_change_revokes_other_sessions_and_is_audited(self, app, client, factory):
        tenant = factory.tenant()
        user = factory.user(tenant)
        current, other = session_token(app, user), session_token(app, user)

        r = self._change(client, current, current_password=PASSWORD, new_password=self.NEW)

        assert r.status_code == 200
        assert client.post("/v1/auth/enrol/totp", headers=bearer(other)).status_code == 401
        assert client.post("/v1/auth/enrol/totp", headers=bearer(current)).status_code == 201
        [event] = audit_rows(app, tenant.id, "user.password_changed")
        assert (event.actor_type, event.actor_id) == ("user", str(user.id))
        assert event.details == {"forced": False, "other_sessions_revoked": 1}
        assert signin(client, tenant, user.email, self.NEW).status_code == 200

    def test_password_forced_change_after_temporary_password_needs_no_current(
        self, app, client, factory
    ):
        tenant = factory.tenant()
        user = factory.user(tenant)
        temporary = "Temporary-Pass-0002"
        earlier = session_token(app, user, scope="restricted")
        with app.app_context():
            db.session.execute(
                update(PasswordIdentity)
                .where(PasswordIdentity.user_id == user.id)
                .values(
                    hash=hash_password(temporary),
                    must_change=True,
                    temporary=True,
                    set_at=utcnow(),
                    expires_at=utcnow() + timedelta(hours=1),
                )
            )
            db.session.commit()

        # A session from before the temporary password proves nothing about it.
        refused = self._change(client, earlier, new_password=self.NEW)
        token = signin(client, tenant, user.email, temporary).json["token"]
        forced = self._change(client, token, new_password=self.NEW)

        assert refused.status_code == 422
        assert refused.json["error"]["code"] == "invalid_credentials"
        assert forced.status_code == 200
        [event] = audit_rows(app, tenant.id, "user.password_changed")
        assert event.details["forced"] is True
        with app.app_context():
            identity = db.session.get(PasswordIdentity, user.id)
            assert (identity.must_change, identity.temporary) == (False, False)

    def test_password_containing_the_email_name_is_refused_but_a_letter_of_it_is_not(self, factory):
        tenant = factory.tenant()

        with pytest.raises(RuleRefused):
            factory.user(tenant, email="alexandra@example.com", password="my name is Alexandra ok")
        assert factory.user(tenant, email="a@example.com", password="a long enough password")


def test_enrolment_start_replaces_an_abandoned_one(app, factory):
    user = factory.user(factory.tenant())
    with app.app_context():
        row = db.session.get(User, user.id)
        mfa.start_totp_enrolment(user_actor(row), row, issuer="t")
        mfa.start_totp_enrolment(user_actor(row), row, issuer="t")
        db.session.commit()
        statuses = sorted(
            db.session.scalars(select(MfaFactor.status).where(MfaFactor.user_id == user.id)).all()
        )
    assert statuses == ["pending", "removed"]
