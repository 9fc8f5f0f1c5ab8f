"""KeycloakDirectory against the local fake of Keycloak's Admin REST API (integrations/fakes/keycloak.py)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from integrations.directory import Directory, PermanentDirectoryError, TransientDirectoryError
from integrations.directory.keycloak import KeycloakDirectory
from integrations.fakes.keycloak import FakeKeycloak
from integrations.fakes.server import Reply
from integrations.http import OutboundPolicy


@pytest.fixture
def directory(fake_keycloak: FakeKeycloak, outbound_policy: OutboundPolicy) -> KeycloakDirectory:
    return KeycloakDirectory(url=fake_keycloak.url, realm=fake_keycloak.realm, client_id=fake_keycloak.client_id,
                             client_secret=fake_keycloak.client_secret, policy=outbound_policy)


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def test_the_adapter_is_a_directory(directory: KeycloakDirectory) -> None:
    assert isinstance(directory, Directory)
    assert directory.kind == "keycloak"
    assert directory.client_secret not in repr(directory)


def test_find_user_and_describe(fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("ada", "Ada@Example.com", phone="+4915112345678", first_name="Ada",
                                  last_name="Lovelace")
    otp = fake_keycloak.add_credential(user.id, "otp", "Phone app")
    fake_keycloak.add_credential(user.id, "recovery-authn-codes", data={"totalCodes": 12, "remainingCodes": 9})
    user.federated.append({"identityProvider": "google", "userId": "g-123", "userName": "ada"})
    fake_keycloak.add_login_event(user.id, "203.0.113.9")
    fake_keycloak.add_login_event(user.id, "198.51.100.7", error="invalid_user_credentials")

    found = directory.find_user(email="ada@example.COM")

    assert found is not None and found.external_id == user.id and found.display_name == "Ada Lovelace"
    assert directory.find_user(external_id=user.id) == found
    assert directory.find_user(external_id="00000000-0000-0000-0000-000000000000") is None
    assert directory.find_user(email="nobody@example.com") is None
    described = directory.describe(user.id)
    assert {(f.reference, f.kind, f.label) for f in described.factors} >= {(otp, "otp", "Phone app")}
    assert all(f.kind != "password" for f in described.factors)
    assert described.backup_codes_remaining == 9
    assert [(c.kind, c.value) for c in described.channels] == [("email", "Ada@Example.com"),
                                                              ("phone", "+4915112345678")]
    assert described.federated == (("google", "g-123"),)
    assert described.signins is not None
    assert [(s.outcome, s.ip) for s in described.signins] == [("failure", "198.51.100.7"),
                                                             ("success", "203.0.113.9")]


def test_signins_are_none_when_the_realm_stores_no_events(outbound_policy: OutboundPolicy) -> None:
    with FakeKeycloak(events_enabled=False) as fake:
        user = fake.add_user("bo", "bo@example.com")
        directory = KeycloakDirectory(url=fake.url, realm=fake.realm, client_id=fake.client_id,
                                      client_secret=fake.client_secret, policy=outbound_policy)
        assert directory.describe(user.id).signins is None


def test_reset_deletes_every_second_factor_but_keeps_the_password(
        fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("cy", "cy@example.com")
    otp = fake_keycloak.add_credential(user.id, "otp")
    key = fake_keycloak.add_credential(user.id, "webauthn", "YubiKey")

    result = directory.reset_factors(user.id)

    assert sorted(result.removed) == sorted([otp, key])
    assert [c["type"] for c in fake_keycloak.credentials[user.id]] == ["password"]
    assert directory.reset_factors(user.id).removed == ()


def test_reset_counts_only_what_this_call_removed(fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("di", "di@example.com")
    otp = fake_keycloak.add_credential(user.id, "otp")
    fake_keycloak.add_credential(user.id, "otp")
    directory.find_user(external_id=user.id)  # the access token first
    # Another admin removed the second one between our listing and our delete: Keycloak answers 404 for it.
    fake_keycloak.script([Reply(), Reply(), Reply(), Reply(status=404, body={"error": "Credential not found"})])

    result = directory.reset_factors(user.id)

    assert result.removed == (otp,)
    assert [r.method for r in fake_keycloak.requests[-2:]] == ["DELETE", "DELETE"]


def test_backup_codes_are_unsupported_with_a_reason(fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("ed", "ed@example.com")
    with pytest.raises(PermanentDirectoryError, match="CONFIGURE_RECOVERY_AUTHN_CODES"):
        directory.issue_backup_codes(user.id, reference="ref-1", count=10)


def test_temporary_password_must_be_changed_at_next_signin(
        fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("fa", "fa@example.com")

    issued = directory.set_temporary_password(user.id, reference="ref-2")

    (password,) = issued.secrets
    assert user.password == password and user.password_temporary
    assert "UPDATE_PASSWORD" in user.required_actions
    assert issued.expires_at is None  # Keycloak sets no expiry (docs/PRIVACYIDEA.md, Keycloak section)
    again = directory.set_temporary_password(user.id, reference="ref-2")
    assert user.password == again.secrets[0] != password  # a retry replaces: one password holds


def test_suspend_disables_and_logs_out_and_reactivate_only_undoes_rekeys_own(
        fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("gi", "gi@example.com", phone="+15550001")
    fake_keycloak.add_session(user.id, "203.0.113.5")

    directory.suspend(user.id)
    directory.suspend(user.id)

    assert not user.enabled and fake_keycloak.sessions[user.id] == []
    assert user.attributes["phone_number"] == ["+15550001"]  # the other attributes kept
    assert directory.find_user(external_id=user.id).suspended  # type: ignore[union-attr]
    directory.reactivate(user.id)
    assert user.enabled and "rekey_suspended" not in user.attributes
    assert user.attributes["phone_number"] == ["+15550001"]

    other = fake_keycloak.add_user("ha", "ha@example.com")
    other.enabled = False  # disabled by the company
    directory.suspend(other.id)
    directory.reactivate(other.id)
    assert not other.enabled


def test_revoke_sessions_logs_the_user_out(fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("io", "io@example.com")
    fake_keycloak.add_session(user.id, "203.0.113.5")
    assert directory.revoke_sessions(user.id) is True
    assert fake_keycloak.sessions[user.id] == []


def test_enrolled_since(fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("jo", "jo@example.com")
    since = datetime.now(UTC)
    fake_keycloak.add_credential(user.id, "otp", created_ms=_ms(since - timedelta(days=3)))
    new = fake_keycloak.add_credential(user.id, "webauthn", created_ms=_ms(since + timedelta(seconds=1)))
    assert [f.reference for f in directory.enrolled_since(user.id, since)] == [new]


def test_the_access_token_is_reused_and_renewed_once_on_401(
        fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("ka", "ka@example.com")
    directory.find_user(external_id=user.id)
    directory.find_user(external_id=user.id)
    assert fake_keycloak.token_requests == 1
    fake_keycloak.access_tokens.clear()  # Keycloak restarted or revoked it

    assert directory.find_user(external_id=user.id) is not None
    assert fake_keycloak.token_requests == 2
    auth = [r.headers["authorization"] for r in fake_keycloak.requests if r.path.startswith("/admin/")]
    assert all(value.startswith("Bearer ") for value in auth)


def test_a_wrong_client_secret_is_permanent_and_never_in_the_message(
        fake_keycloak: FakeKeycloak, outbound_policy: OutboundPolicy) -> None:
    directory = KeycloakDirectory(url=fake_keycloak.url, realm=fake_keycloak.realm,
                                  client_id=fake_keycloak.client_id, client_secret="wrong-secret-123",
                                  policy=outbound_policy)
    with pytest.raises(PermanentDirectoryError, match="401") as caught:
        directory.find_user(email="a@example.com")
    assert "wrong-secret-123" not in str(caught.value)
    form = fake_keycloak.requests[0].form
    assert form["grant_type"] == "client_credentials"


@pytest.mark.parametrize(("reply", "error"), [
    (Reply(status=500), TransientDirectoryError),
    (Reply(status=503, body=b"<html>starting</html>"), TransientDirectoryError),
    (Reply.rate_limited("2"), TransientDirectoryError),
    (Reply.hang(2.0), TransientDirectoryError),
    (Reply(status=403, body={"error": "HTTP 403 Forbidden"}), PermanentDirectoryError),
    (Reply(status=400, body={"errorMessage": "invalid"}), PermanentDirectoryError),
])
def test_backend_failures_map_to_transient_or_permanent(
        reply: Reply, error: type[Exception], fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("lu", "lu@example.com")
    fake_keycloak.add_credential(user.id, "otp")
    directory.find_user(external_id=user.id)  # the access token first
    fake_keycloak.script([Reply(), reply])  # the user answers; listing the credentials fails
    with pytest.raises(error) as caught:
        directory.reset_factors(user.id)
    assert fake_keycloak.client_secret not in str(caught.value)
    assert [c["type"] for c in fake_keycloak.credentials[user.id]] == ["password", "otp"]  # nothing deleted


def test_a_stopped_keycloak_is_transient(fake_keycloak: FakeKeycloak, directory: KeycloakDirectory) -> None:
    user = fake_keycloak.add_user("mo", "mo@example.com")
    fake_keycloak.stop()
    with pytest.raises(TransientDirectoryError):
        directory.reset_factors(user.id)


def test_the_registry_builds_it_from_a_tenant_configuration(
        fake_keycloak: FakeKeycloak, monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations.directory import vendors  # noqa: F401  (registers the kinds, as the app does)
    from integrations.directory.registry import DirectoryConfig, build

    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")
    user = fake_keycloak.add_user("na", "na@example.com")
    config = DirectoryConfig(tenant_id="t1", kind="keycloak", url=fake_keycloak.url, realm=fake_keycloak.realm,
                             token=fake_keycloak.client_secret, options={"client_id": fake_keycloak.client_id})
    directory = build(config)
    assert isinstance(directory, KeycloakDirectory)
    assert directory.find_user(email="na@example.com").external_id == user.id  # type: ignore[union-attr]
    with pytest.raises(PermanentDirectoryError, match="client_id"):
        build(DirectoryConfig(tenant_id="t1", kind="keycloak", url=fake_keycloak.url, realm="acme", token="s"))
