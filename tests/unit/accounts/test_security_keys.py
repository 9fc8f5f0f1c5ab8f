"""Security keys: registration with py_webauthn against a software authenticator, the attacks on
a registration ceremony (replay, another origin or relying party, another session's or
ceremony's challenge, an expired one), and the user's list of keys (rename, remove, never the
last factor)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.accounts.models import MfaFactor, WebAuthnChallenge, WebAuthnCredential
from app.extensions import db, utcnow
from tests.authenticator import SoftKey, unb64url
from tests.flows import (
    audit_rows,
    bearer,
    enrol_totp,
    register_key,
    session_token,
    signin_password,
    signin_with_key,
)

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

AAGUID = "cb69481e-8ff7-4039-93ec-0a2729a154a8"


def _keys(app, user) -> list[tuple[str, str]]:
    with app.app_context():
        rows = db.session.execute(select(MfaFactor.status, WebAuthnCredential.label).join(
            WebAuthnCredential).where(MfaFactor.user_id == user.id).order_by(MfaFactor.created_at)).all()
        return [tuple(r) for r in rows]


def _options(client, token) -> dict:
    r = client.post("/v1/auth/enrol/webauthn", headers=bearer(token))
    assert r.status_code == 200, r.json
    return r.json["options"]


def _confirm(client, token, credential, **extra):
    return client.post("/v1/auth/enrol/webauthn/confirm", json={"credential": credential, **extra},
                       headers=bearer(token))


@pytest.fixture
def person(app, factory):
    """A tenant, a user with no factor yet, and a session of theirs."""
    tenant = factory.tenant()
    user = factory.user(tenant)
    return tenant, user, session_token(app, user)


class TestRegistration:
    def test_register_key_adds_an_active_key_and_audits_the_enrolment(self, app, client, person):
        tenant, user, token = person

        r = register_key(client, token, SoftKey(), label="Blue key")

        assert r.status_code == 201, r.json
        assert (r.json["label"], r.json["aaguid"], r.json["transports"]) == ("Blue key", AAGUID, ["usb", "nfc"])
        assert r.json["last_used_at"] is None
        assert _keys(app, user) == [("active", "Blue key")]
        (event,) = audit_rows(app, tenant.id, "mfa.factor_enrolled")
        assert (event.actor_type, event.actor_id, event.source_ip) == ("user", str(user.id), "127.0.0.1")
        assert event.details == {"factor_id": r.json["id"], "kind": "webauthn", "aaguid": AAGUID,
                                 "user_verified": True, "backed_up": False}

    def test_registration_options_ask_for_no_attestation_and_prefer_resident_keys_and_uv(self, client, person):
        _, user, token = person

        options = _options(client, token)

        assert options["rp"]["id"] == "localhost"
        assert options["user"]["name"] == user.email
        assert unb64url(options["user"]["id"]) == user.id.bytes
        assert options["attestation"] == "none"
        assert options["authenticatorSelection"]["residentKey"] == "preferred"
        assert options["authenticatorSelection"]["userVerification"] == "preferred"
        assert len(unb64url(options["challenge"])) == 32  # 256 bits (R20 asks for 64 at least)
        assert options["timeout"] == 300_000
        assert options["excludeCredentials"] == []

    def test_several_keys_are_kept_and_the_next_registration_excludes_them(self, app, client, person):
        _, user, token = person
        first, second = SoftKey(), SoftKey()

        assert register_key(client, token, first).status_code == 201
        assert register_key(client, token, second).status_code == 201

        assert _keys(app, user) == [("active", "Security key"), ("active", "Security key 2")]
        assert {c["id"] for c in _options(client, token)["excludeCredentials"]} == {first.id, second.id}

    def test_the_same_key_registered_twice_is_409(self, app, client, person):
        _, user, token = person
        key = SoftKey()
        assert register_key(client, token, key).status_code == 201

        r = register_key(client, token, key)

        assert r.status_code == 409 and r.json["error"]["code"] == "security_key_registered"
        assert len(_keys(app, user)) == 1

    def test_a_replayed_registration_answer_is_refused(self, app, client, person):
        _, user, token = person
        answer = SoftKey().create(_options(client, token))
        assert _confirm(client, token, answer).status_code == 201

        r = _confirm(client, token, answer)

        assert r.status_code == 422 and r.json["error"]["code"] == "challenge_invalid", r.json
        assert len(_keys(app, user)) == 1

    def test_an_answer_for_another_origin_is_refused_and_spends_the_challenge(self, app, client, person):
        _, user, token = person
        key, options = SoftKey(), _options(client, token)

        # A phishing page at another origin relays our options to the user's real key.
        r = _confirm(client, token, key.create(options, origin="https://rekey-login.example"))

        assert r.status_code == 422 and r.json["error"]["code"] == "security_key_refused", r.json
        assert r.json["error"]["details"] == {"problem": "origin"}
        # The refused answer used the challenge up: not even a right answer to it works now.
        r = _confirm(client, token, key.create(options))
        assert r.status_code == 422 and r.json["error"]["code"] == "challenge_invalid"
        assert _keys(app, user) == []

    def test_an_answer_for_another_relying_party_is_refused(self, app, client, person):
        _, user, token = person

        r = register_key(client, token, SoftKey(), rp_id="rekey-login.example")

        assert r.status_code == 422 and r.json["error"]["details"] == {"problem": "rp_id"}, r.json
        assert _keys(app, user) == []

    def test_a_challenge_from_another_session_is_refused(self, app, client, person):
        _, user, token = person
        other = session_token(app, user)
        key, options = SoftKey(), _options(client, other)

        # No request is waiting in this session at all...
        r = _confirm(client, token, key.create(options))
        assert r.status_code == 422 and r.json["error"]["code"] == "challenge_invalid"
        # ...and one that is waiting is not the other session's.
        _options(client, token)
        r = _confirm(client, token, key.create(options))
        assert r.status_code == 422 and r.json["error"]["details"] == {"problem": "challenge"}, r.json
        assert _keys(app, user) == []

    def test_a_sign_in_challenge_cannot_register_a_key(self, app, client, person):
        tenant, user, token = person
        enrolled = SoftKey()
        assert register_key(client, token, enrolled).status_code == 201
        pending = signin_password(client, tenant, user.email).json["pending_token"]
        sign_in_options = client.post("/v1/auth/signin/webauthn/options", json={"pending_token": pending},
                                      headers={"X-Rekey-Tenant": tenant.slug}).json["options"]
        registration_options = _options(client, token)

        answer = SoftKey().create(registration_options, challenge=sign_in_options["challenge"])
        r = _confirm(client, token, answer)

        assert r.status_code == 422 and r.json["error"]["details"] == {"problem": "challenge"}, r.json
        assert len(_keys(app, user)) == 1

    def test_a_sign_in_answer_cannot_register_a_key(self, app, client, person):
        _, user, token = person

        r = register_key(client, token, SoftKey(), kind="webauthn.get")

        assert r.status_code == 422 and r.json["error"]["details"] == {"problem": "ceremony"}, r.json
        assert _keys(app, user) == []

    def test_an_expired_challenge_is_refused(self, app, client, person):
        _, user, token = person
        options = _options(client, token)
        with app.app_context():
            db.session.execute(update(WebAuthnChallenge).where(WebAuthnChallenge.user_id == user.id)
                               .values(expires_at=utcnow() - timedelta(seconds=1)))
            db.session.commit()

        r = _confirm(client, token, SoftKey().create(options))

        assert r.status_code == 422 and r.json["error"]["code"] == "challenge_expired", r.json
        assert _keys(app, user) == []

    def test_asking_again_replaces_the_earlier_challenge_in_one_row(self, app, client, person):
        _, user, token = person
        first = _options(client, token)
        for _ in range(20):  # a client asking in a loop rewrites one row, it fills no table
            _options(client, token)

        r = _confirm(client, token, SoftKey().create(first))

        assert r.status_code == 422 and r.json["error"]["details"] == {"problem": "challenge"}
        with app.app_context():
            rows = db.session.scalars(select(WebAuthnChallenge).where(WebAuthnChallenge.user_id == user.id)).all()
        assert [row.used_at is not None for row in rows] == [True]

    @pytest.mark.parametrize("tamper", [
        lambda c: c["response"].update(attestationObject="AAAA"),
        lambda c: c["response"].update(clientDataJSON="bm90IGpzb24"),
        lambda c: c["response"].update(attestationObject=c["response"]["attestationObject"][:40]),
        lambda c: c.update(rawId="AAAA"),
        lambda c: c.update(type="password"),
        lambda c: c["response"].update(transports=["usb", "telepathy"]),
    ])
    def test_a_malformed_answer_is_refused_never_a_500(self, app, client, person, tamper):
        _, user, token = person
        credential = SoftKey().create(_options(client, token))
        tamper(credential)

        r = _confirm(client, token, credential)

        if credential["response"]["transports"] == ["usb", "telepathy"]:
            assert r.status_code == 201  # an unknown transport is dropped, not fatal
            assert r.json["transports"] == ["usb"]
        else:
            assert r.status_code in (400, 422), r.json
            assert _keys(app, user) == []

    def test_an_ip_address_public_url_refuses_keys_with_a_clear_message_and_nothing_else(
            self, client, person, tune):
        tenant, user, token = person
        tune(public_url="http://127.0.0.1:5000")

        r = client.post("/v1/auth/enrol/webauthn", headers=bearer(token))

        assert r.status_code == 422 and r.json["error"]["code"] == "security_keys_unavailable", r.json
        assert "host name" in r.json["error"]["message"] and "REKEY_PUBLIC_URL" in r.json["error"]["message"]
        # Everything else keeps working on the IP address.
        assert client.post("/v1/auth/enrol/totp", headers=bearer(token)).status_code == 201
        assert signin_password(client, tenant, user.email).json["status"] == "enrolment_required"

    def test_a_key_registers_under_the_host_of_the_public_url(self, app, client, person, tune):
        _, user, token = person
        tune(public_url="https://id.example.com:8443/rekey/")
        options = _options(client, token)
        assert options["rp"]["id"] == "id.example.com"

        wrong_port = register_key(client, token, SoftKey(origin="https://id.example.com"))
        right = register_key(client, token, SoftKey(origin="https://id.example.com:8443"))

        assert wrong_port.json["error"]["details"] == {"problem": "origin"}
        assert right.status_code == 201, right.json


class TestKeyList:
    def test_the_user_lists_renames_and_removes_keys_with_audit(self, app, client, person, totp_clock):
        tenant, user, token = person
        enrol_totp(app, user, totp_clock)
        blue = register_key(client, token, SoftKey(), label="Blue").json
        register_key(client, token, SoftKey(), label="Spare")

        listed = client.get("/v1/auth/security-keys", headers=bearer(token))
        assert [k["label"] for k in listed.json] == ["Blue", "Spare"]
        r = client.patch(f"/v1/auth/security-keys/{blue['id']}", json={"label": "  Blue\x07 key\n on keyring "},
                         headers=bearer(token))
        assert r.status_code == 200 and r.json["label"] == "Blue key on keyring", r.json
        r = client.delete(f"/v1/auth/security-keys/{blue['id']}", headers=bearer(token))
        assert r.status_code == 204

        assert _keys(app, user) == [("removed", "Blue key on keyring"), ("active", "Spare")]
        assert [k["label"] for k in client.get("/v1/auth/security-keys", headers=bearer(token)).json] == ["Spare"]
        (renamed,) = audit_rows(app, tenant.id, "mfa.factor_renamed")
        assert renamed.details == {"factor_id": blue["id"], "kind": "webauthn"}
        (removed,) = audit_rows(app, tenant.id, "mfa.factor_removed")
        assert (removed.actor_type, removed.actor_id) == ("user", str(user.id))
        assert removed.details == {"factor_id": blue["id"], "kind": "webauthn", "aaguid": AAGUID,
                                   "factors_left": 2}

    def test_a_removed_key_no_longer_signs_in(self, app, client, person, totp_clock):
        tenant, user, token = person
        enrol_totp(app, user, totp_clock)
        key = SoftKey()
        removed = register_key(client, token, key).json
        spare = SoftKey()
        register_key(client, token, spare)
        assert client.delete(f"/v1/auth/security-keys/{removed['id']}", headers=bearer(token)).status_code == 204

        pending = signin_password(client, tenant, user.email).json["pending_token"]
        r = client.post("/v1/auth/signin/webauthn/options", json={"pending_token": pending},
                        headers={"X-Rekey-Tenant": tenant.slug})
        assert [c["id"] for c in r.json["options"]["allowCredentials"]] == [spare.id]
        r = client.post("/v1/auth/signin/webauthn/verify", headers={"X-Rekey-Tenant": tenant.slug},
                        json={"pending_token": pending,
                              "credential": key.get({**r.json["options"], "allowCredentials": []})})
        assert r.status_code == 401 and r.json["error"]["code"] == "invalid_credentials"
        (failed,) = audit_rows(app, tenant.id, "auth.signin_failed")
        assert failed.details == {"result": "bad_factor", "method": "webauthn", "problem": "unknown_key"}

    def test_removing_the_last_factor_is_refused(self, app, client, person):
        tenant, user, token = person
        only = register_key(client, token, SoftKey()).json

        r = client.delete(f"/v1/auth/security-keys/{only['id']}", headers=bearer(token))

        assert r.status_code == 422 and r.json["error"]["code"] == "last_factor", r.json
        assert _keys(app, user) == [("active", "Security key")]
        assert audit_rows(app, tenant.id, "mfa.factor_removed") == []

    def test_the_last_key_may_go_while_a_totp_factor_stays(self, app, client, person, totp_clock):
        _, user, token = person
        only = register_key(client, token, SoftKey()).json
        enrol_totp(app, user, totp_clock)

        assert client.delete(f"/v1/auth/security-keys/{only['id']}", headers=bearer(token)).status_code == 204

    def test_another_users_key_is_not_found(self, app, client, factory, person):
        tenant, _, token = person
        other = factory.user(tenant)
        other_token = session_token(app, other)
        theirs = register_key(client, other_token, SoftKey()).json
        register_key(client, other_token, SoftKey())

        for r in (client.patch(f"/v1/auth/security-keys/{theirs['id']}", json={"label": "mine"},
                               headers=bearer(token)),
                  client.delete(f"/v1/auth/security-keys/{theirs['id']}", headers=bearer(token)),
                  client.delete("/v1/auth/security-keys/not-a-key", headers=bearer(token))):
            assert r.status_code == 404 and r.json["error"]["code"] == "not_found", r.json
        assert _keys(app, other) == [("active", "Security key"), ("active", "Security key 2")]

    def test_a_recovery_session_may_register_but_not_list_or_remove(self, app, client, person):
        _, user, _ = person
        restricted = session_token(app, user, scope="restricted")
        key = register_key(client, restricted, SoftKey())
        assert key.status_code == 201

        for r in (client.get("/v1/auth/security-keys", headers=bearer(restricted)),
                  client.delete(f"/v1/auth/security-keys/{key.json['id']}", headers=bearer(restricted))):
            assert r.status_code == 403 and r.json["error"]["code"] == "restricted_session"

    def test_the_agents_user_detail_lists_keys_with_label_created_and_last_use(self, app, client, factory,
                                                                               person):
        tenant, user, token = person
        key = SoftKey()
        register_key(client, token, key, label="Desk key")
        pending = signin_password(client, tenant, user.email).json["pending_token"]
        assert signin_with_key(client, tenant, pending, key).status_code == 200
        agent = factory.agent(tenant)

        detail = client.get(f"/v1/admin/users/{user.id}", headers=agent.headers).json

        (factor,) = detail["factors"]
        assert (factor["kind"], factor["status"], factor["label"]) == ("webauthn", "active", "Desk key")
        assert factor["created_at"] and factor["last_used_at"] >= factor["created_at"]
        assert key.id not in str(detail)  # no credential material for agents
