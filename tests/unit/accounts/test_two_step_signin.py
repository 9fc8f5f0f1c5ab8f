"""The two-step sign-in: the password step hands out a pending sign-in, a second step finishes it
with a TOTP code, a backup code or a security key. Single use, short-lived, bound to its user
and tenant, counted toward the lockout; unknown accounts look like wrong passwords; and the
attacks on a key's assertion (replay, another origin or relying party, a clone, another
sign-in's or ceremony's challenge, an expired one) are refused."""

from __future__ import annotations

from datetime import timedelta

import pyotp
import pytest
from sqlalchemy import select, update

from app.accounts.models import PasswordIdentity, PendingSignin, User, UserSession, WebAuthnChallenge
from app.crypto import token_digest
from app.extensions import db, utcnow
from tests.authenticator import SoftKey
from tests.factories import PASSWORD
from tests.flows import (
    attempts,
    audit_rows,
    bearer,
    enrol_totp,
    issue_codes,
    register_key,
    session_token,
    signin,
    signin_password,
    signin_step,
    signin_with_key,
)

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

WRONG = "not the password at all"


def _with_key(app, client, factory, **user_kw):
    """A tenant and a user whose one factor is the returned software key."""
    tenant = factory.tenant()
    user = factory.user(tenant, **user_kw)
    key = SoftKey()
    assert register_key(client, session_token(app, user, scope="restricted"), key).status_code == 201
    return tenant, user, key


def _pending(client, tenant, user, **kw) -> str:
    r = signin_password(client, tenant, user.email, **kw)
    assert r.status_code == 200 and r.json["status"] == "mfa_required", r.json
    return r.json["pending_token"]


def _session_scope(app, token) -> str:
    with app.app_context():
        return db.session.scalars(select(UserSession.scope).where(UserSession.digest == token_digest(token))).one()


def _expire(app, model, user) -> None:
    with app.app_context():
        db.session.execute(update(model).where(model.user_id == user.id)
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()


class TestPasswordStep:
    def test_password_step_gives_a_pending_sign_in_and_the_accounts_methods(self, app, client, factory,
                                                                           totp_clock):
        tenant, user, _ = _with_key(app, client, factory)
        enrol_totp(app, user, totp_clock)
        issue_codes(app, user)

        r = signin_password(client, tenant, user.email)

        assert r.status_code == 200
        assert r.json["status"] == "mfa_required" and r.json["token"] is None
        assert r.json["methods"] == ["totp", "webauthn", "backup_code"]
        assert r.json["expires_in"] == 300 and r.json["pending_token"].startswith("rk_pend_")
        with app.app_context():  # only a digest of the token is kept
            row = db.session.scalars(select(PendingSignin).where(PendingSignin.user_id == user.id)).one()
            assert row.digest == token_digest(r.json["pending_token"])
            assert r.json["pending_token"] not in str([getattr(row, c.name) for c in PendingSignin.__table__.c])
            assert row.expires_at - row.created_at == timedelta(minutes=5)

    def test_password_step_without_a_factor_opens_the_enrolment_session(self, app, client, factory):
        tenant = factory.tenant()
        user = factory.user(tenant)

        r = signin_password(client, tenant, user.email)

        assert r.json["status"] == "enrolment_required" and r.json["pending_token"] is None
        assert r.json["methods"] == [] and _session_scope(app, r.json["token"]) == "restricted"

    def test_unknown_account_answers_exactly_like_a_wrong_password(self, app, client, factory):
        tenant, user, _ = _with_key(app, client, factory)

        unknown = signin_password(client, tenant, "nobody@example.com")
        wrong = signin_password(client, tenant, user.email, WRONG)
        other_tenant = client.post("/v1/auth/signin/password", json={"email": user.email, "password": PASSWORD},
                                   headers={"X-Rekey-Tenant": "no-such-tenant"})

        assert unknown.status_code == wrong.status_code == other_tenant.status_code == 401
        assert unknown.json == wrong.json == other_tenant.json
        assert unknown.json["error"]["code"] == "invalid_credentials"
        assert [a.result for a in attempts(app, tenant.id)] == ["unknown_user", "bad_password"]
        with app.app_context():
            assert db.session.scalars(select(PendingSignin).where(PendingSignin.tenant_id == tenant.id)).all() == []

    def test_unknown_account_locks_after_as_many_failures_as_a_real_one(self, client, factory, tune):
        tune(signin_max_failures=3)
        tenant = factory.tenant()
        user = factory.user(tenant)
        for email in ("ghost@example.com", user.email):
            answers = [signin_password(client, tenant, email, WRONG).status_code for _ in range(4)]
            assert answers == [401, 401, 401, 429], email


class TestSecondStepWithCodes:
    def test_totp_code_finishes_the_sign_in_with_a_full_session(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)

        r = signin_step(client, tenant, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 200 and r.json["status"] == "ok", r.json
        assert _session_scope(app, r.json["token"]) == "full"
        (event,) = audit_rows(app, tenant.id, "auth.signin_succeeded")
        assert event.details == {"method": "totp", "status": "ok", "session_scope": "full", "two_step": True}
        assert [a.result for a in attempts(app, tenant.id)] == ["mfa_required", "succeeded"]

    def test_backup_code_finishes_the_sign_in_and_is_spent(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)
        codes = issue_codes(app, user)

        r = signin_step(client, tenant, "second-factor", {"pending_token": _pending(client, tenant, user),
                                                          "backup_code": codes[0]})
        again = signin_step(client, tenant, "second-factor", {"pending_token": _pending(client, tenant, user),
                                                              "backup_code": codes[0]})

        assert r.status_code == 200 and r.json["status"] == "ok", r.json
        assert again.status_code == 401 and again.json["error"]["code"] == "invalid_credentials"
        assert audit_rows(app, tenant.id, "mfa.backup_code_used")[0].details == {"remaining": 9}

    @pytest.mark.parametrize("body", [{}, {"otp": "123456", "backup_code": "abcde-fghij-klmno-pqrst"}])
    def test_the_second_step_takes_exactly_one_code(self, client, factory, body):
        tenant = factory.tenant()

        r = signin_step(client, tenant, "second-factor", {"pending_token": "rk_pend_x", **body})

        assert r.status_code == 400 and r.json["error"]["code"] == "validation_error"

    def test_a_pending_sign_in_cannot_be_used_twice(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)
        first = signin_step(client, tenant, "second-factor",
                            {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})
        assert first.status_code == 200

        r = signin_step(client, tenant, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 401 and r.json["error"]["code"] == "signin_expired", r.json
        assert len(audit_rows(app, tenant.id, "auth.signin_succeeded")) == 1

    def test_a_pending_sign_in_expires(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)
        _expire(app, PendingSignin, user)

        r = signin_step(client, tenant, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 401 and r.json["error"]["code"] == "signin_expired"

    def test_a_pending_sign_in_works_only_in_its_own_tenant(self, app, client, factory, totp_clock):
        tenant, elsewhere = factory.tenant(), factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)

        r = signin_step(client, elsewhere, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 401 and r.json["error"]["code"] == "signin_expired"
        assert signin_step(client, tenant, "second-factor",
                           {"pending_token": pending,
                            "otp": pyotp.TOTP(secret).at(totp_clock.advance())}).status_code == 200

    def test_wrong_codes_count_toward_the_account_lockout(self, app, client, factory, tune, totp_clock):
        tune(signin_max_failures=3)
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user, ip="198.51.100.1")

        answers = [signin_step(client, tenant, "second-factor", {"pending_token": pending, "otp": "000000"},
                               ip=f"198.51.100.{i}").status_code for i in (2, 3)]
        answers.append(signin_step(client, tenant, "second-factor",
                                   {"pending_token": _pending(client, tenant, user), "otp": "000000"}).status_code)
        late = signin_password(client, tenant, user.email)
        right = signin(client, tenant, user.email, otp=pyotp.TOTP(secret).at(totp_clock.advance()))

        assert answers == [401, 401, 401]
        assert late.status_code == 429 and late.json["error"]["code"] == "account_locked"
        assert right.status_code == 429  # the one-shot door shares the same count
        assert len(audit_rows(app, tenant.id, "auth.account_locked")) == 1
        assert [a.method for a in attempts(app, tenant.id) if a.result == "bad_factor"] == ["totp"] * 3

    def test_a_pending_sign_in_ends_after_three_wrong_codes(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)
        for _ in range(3):
            signin_step(client, tenant, "second-factor", {"pending_token": pending, "otp": "000000"})

        r = signin_step(client, tenant, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 401 and r.json["error"]["code"] == "signin_expired"

    def test_a_password_changed_after_the_password_step_voids_the_pending_sign_in(self, app, client, factory,
                                                                                   totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)
        with app.app_context():  # e.g. an admin's temporary password, or the owner's own change
            db.session.execute(update(PasswordIdentity).where(PasswordIdentity.user_id == user.id)
                               .values(set_at=utcnow()))
            db.session.commit()

        r = signin_step(client, tenant, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 401 and r.json["error"]["code"] == "signin_expired"

    def test_a_user_suspended_between_the_steps_is_refused(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        secret = enrol_totp(app, user, totp_clock)
        pending = _pending(client, tenant, user)
        with app.app_context():
            db.session.execute(update(User).where(User.id == user.id).values(status="suspended"))
            db.session.commit()

        r = signin_step(client, tenant, "second-factor",
                        {"pending_token": pending, "otp": pyotp.TOTP(secret).at(totp_clock.advance())})

        assert r.status_code == 403 and r.json["error"]["code"] == "account_suspended"


class TestSecondStepWithAKey:
    def test_a_key_finishes_the_sign_in_and_records_its_use(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)

        r = signin_with_key(client, tenant, _pending(client, tenant, user), key)

        assert r.status_code == 200 and r.json["status"] == "ok", r.json
        assert _session_scope(app, r.json["token"]) == "full"
        (event,) = audit_rows(app, tenant.id, "auth.signin_succeeded")
        assert (event.details["method"], event.details["user_verified"]) == ("webauthn", True)
        keys = client.get("/v1/auth/security-keys", headers=bearer(r.json["token"])).json
        assert keys[0]["last_used_at"] is not None

    def test_request_options_name_only_this_accounts_keys(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        _with_key(app, client, factory)  # someone else's key, elsewhere

        r = signin_step(client, tenant, "webauthn/options", {"pending_token": _pending(client, tenant, user)})

        options = r.json["options"]
        assert [c["id"] for c in options["allowCredentials"]] == [key.id]
        assert options["rpId"] == "localhost" and options["userVerification"] == "preferred"

    def test_each_of_several_keys_signs_in(self, app, client, factory):
        tenant, user, first = _with_key(app, client, factory)
        second = SoftKey()
        register_key(client, session_token(app, user), second)

        for key in (first, second, first):
            assert signin_with_key(client, tenant, _pending(client, tenant, user), key).status_code == 200

    def test_a_replayed_assertion_is_refused(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        pending = _pending(client, tenant, user)
        options = signin_step(client, tenant, "webauthn/options", {"pending_token": pending}).json["options"]
        assertion = key.get(options)
        assert signin_step(client, tenant, "webauthn/verify",
                           {"pending_token": pending, "credential": assertion}).status_code == 200

        # Captured assertion, fresh pending sign-in (the attacker knows the password).
        again = _pending(client, tenant, user)
        signin_step(client, tenant, "webauthn/options", {"pending_token": again})
        r = signin_step(client, tenant, "webauthn/verify", {"pending_token": again, "credential": assertion})

        assert r.status_code == 401 and r.json["error"]["code"] == "invalid_credentials"
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "challenge"
        assert len(audit_rows(app, tenant.id, "auth.signin_succeeded")) == 1

    def test_a_failed_assertion_spends_the_challenge(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        pending = _pending(client, tenant, user)
        options = signin_step(client, tenant, "webauthn/options", {"pending_token": pending}).json["options"]
        assertion = key.get(options, origin="https://evil.example")  # fails once, and burns the challenge
        signin_step(client, tenant, "webauthn/verify", {"pending_token": pending, "credential": assertion})

        r = signin_step(client, tenant, "webauthn/verify",
                        {"pending_token": pending, "credential": key.get(options)})

        assert r.status_code == 401
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "no_challenge"

    @pytest.mark.parametrize(("answer", "problem"), [
        ({"origin": "https://rekey-login.example"}, "origin"),
        ({"origin": "http://localhost:5001"}, "origin"),
        ({"rp_id": "rekey-login.example"}, "rp_id"),
        ({"kind": "webauthn.create"}, "ceremony"),
    ])
    def test_an_assertion_made_for_another_site_or_ceremony_is_refused(self, app, client, factory, answer,
                                                                       problem):
        tenant, user, key = _with_key(app, client, factory)

        r = signin_with_key(client, tenant, _pending(client, tenant, user), key, **answer)

        assert r.status_code == 401 and r.json["error"]["code"] == "invalid_credentials", r.json
        (failed,) = audit_rows(app, tenant.id, "auth.signin_failed")
        assert failed.details == {"result": "bad_factor", "method": "webauthn", "problem": problem}
        assert audit_rows(app, tenant.id, "auth.signin_succeeded") == []

    def test_a_cloned_key_is_refused_and_audited(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        clone = key.clone()  # extracted once, when the counter stood at 0
        for _ in range(2):
            assert signin_with_key(client, tenant, _pending(client, tenant, user), key).status_code == 200

        r = signin_with_key(client, tenant, _pending(client, tenant, user), clone)

        assert r.status_code == 401 and r.json["error"]["code"] == "invalid_credentials"
        (suspected,) = audit_rows(app, tenant.id, "mfa.key_clone_suspected")
        assert suspected.details["stored_count"] == 2 and suspected.details["presented_count"] == 1
        assert suspected.target_user_id == user.id
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "sign_count"
        # The real key, further along, still signs in.
        assert signin_with_key(client, tenant, _pending(client, tenant, user), key).status_code == 200

    def test_a_key_that_keeps_no_counter_is_accepted(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        for _ in range(2):
            key.sign_count = -1  # the next assertion reports 0, as counter-less passkeys do
            assert signin_with_key(client, tenant, _pending(client, tenant, user), key).status_code == 200

    def test_a_challenge_of_another_pending_sign_in_is_refused(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        mine, theirs = _pending(client, tenant, user), _pending(client, tenant, user)
        their_options = signin_step(client, tenant, "webauthn/options", {"pending_token": theirs}).json["options"]
        signin_step(client, tenant, "webauthn/options", {"pending_token": mine})

        r = signin_step(client, tenant, "webauthn/verify",
                        {"pending_token": mine, "credential": key.get(their_options)})

        assert r.status_code == 401
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "challenge"

    def test_a_registration_challenge_cannot_sign_in(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        token = session_token(app, user)
        registration = client.post("/v1/auth/enrol/webauthn", headers=bearer(token)).json["options"]
        pending = _pending(client, tenant, user)
        options = signin_step(client, tenant, "webauthn/options", {"pending_token": pending}).json["options"]

        r = signin_step(client, tenant, "webauthn/verify",
                        {"pending_token": pending,
                         "credential": key.get(options, challenge=registration["challenge"])})

        assert r.status_code == 401
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "challenge"

    def test_an_expired_challenge_is_refused(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        pending = _pending(client, tenant, user)
        options = signin_step(client, tenant, "webauthn/options", {"pending_token": pending}).json["options"]
        _expire(app, WebAuthnChallenge, user)

        r = signin_step(client, tenant, "webauthn/verify", {"pending_token": pending, "credential": key.get(options)})

        assert r.status_code == 401
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "challenge_expired"

    def test_another_users_key_cannot_finish_this_sign_in(self, app, client, factory):
        tenant, user, _ = _with_key(app, client, factory)
        other = factory.user(tenant)
        theirs = SoftKey()
        register_key(client, session_token(app, other), theirs)
        pending = _pending(client, tenant, user)
        options = signin_step(client, tenant, "webauthn/options", {"pending_token": pending}).json["options"]

        r = signin_step(client, tenant, "webauthn/verify",
                        {"pending_token": pending, "credential": theirs.get({**options, "allowCredentials": []})})

        assert r.status_code == 401
        assert audit_rows(app, tenant.id, "auth.signin_failed")[-1].details["problem"] == "unknown_key"

    def test_failed_assertions_count_toward_the_account_lockout(self, app, client, factory, tune):
        tune(signin_max_failures=2)
        tenant, user, key = _with_key(app, client, factory)
        for _ in range(2):
            signin_with_key(client, tenant, _pending(client, tenant, user), key, origin="https://evil.example")

        r = signin_password(client, tenant, user.email)

        assert r.status_code == 429 and r.json["error"]["code"] == "account_locked"

    def test_a_locked_account_gets_no_key_options(self, app, client, factory, tune):
        tune(signin_max_failures=2)
        tenant, user, key = _with_key(app, client, factory)
        pending = _pending(client, tenant, user)
        for _ in range(2):
            signin_password(client, tenant, user.email, WRONG)

        r = signin_step(client, tenant, "webauthn/options", {"pending_token": pending})

        assert r.status_code == 429 and r.json["error"]["code"] == "account_locked"
        with app.app_context():
            assert db.session.scalars(select(WebAuthnChallenge).where(
                WebAuthnChallenge.pending_signin_id.is_not(None), WebAuthnChallenge.user_id == user.id)).all() == []

    def test_key_options_for_an_account_without_keys_is_422(self, app, client, factory, totp_clock):
        tenant = factory.tenant()
        user = factory.user(tenant)
        enrol_totp(app, user, totp_clock)

        r = signin_step(client, tenant, "webauthn/options", {"pending_token": _pending(client, tenant, user)})

        assert r.status_code == 422 and r.json["error"]["code"] == "no_security_key"

    def test_key_steps_without_a_live_pending_sign_in_are_401(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        options = signin_step(client, tenant, "webauthn/options",
                              {"pending_token": _pending(client, tenant, user)}).json["options"]

        for path, body in (("webauthn/options", {"pending_token": "rk_pend_made_up"}),
                           ("webauthn/verify", {"pending_token": "rk_pend_made_up", "credential": key.get(options)})):
            r = signin_step(client, tenant, path, body)
            assert r.status_code == 401 and r.json["error"]["code"] == "signin_expired"


class TestHousekeeping:
    def test_expired_pending_sign_ins_and_challenges_are_purged_and_live_ones_kept(self, app, client, factory):
        tenant, user, key = _with_key(app, client, factory)
        old = _pending(client, tenant, user)
        signin_step(client, tenant, "webauthn/options", {"pending_token": old})
        with app.app_context():
            long_ago = utcnow() - timedelta(hours=2)
            for model in (PendingSignin, WebAuthnChallenge):
                db.session.execute(update(model).where(model.user_id == user.id).values(expires_at=long_ago))
            db.session.commit()
        live = _pending(client, tenant, user)
        purge = app.extensions["celery"].tasks["rekey.accounts.purge_signins"]

        assert purge() == 3  # the old sign-in, its challenge, the registration's challenge
        assert purge() == 0  # safe to run twice

        with app.app_context():
            assert db.session.scalars(select(PendingSignin.id).where(PendingSignin.user_id == user.id)).all() != []
        assert signin_step(client, tenant, "webauthn/options", {"pending_token": old}).status_code == 401
        assert signin_with_key(client, tenant, live, key).status_code == 200
