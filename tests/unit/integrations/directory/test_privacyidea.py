"""PrivacyIDEADirectory against a real privacyIDEA 3.14 server (tests/directory_servers.py starts it)."""
from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta

import pyotp
import pytest

from integrations.directory import Directory, PermanentDirectoryError, TransientDirectoryError
from integrations.directory.privacyidea import PrivacyIDEADirectory
from integrations.fakes.server import Answer, FakeServer, RecordedRequest, Reply
from integrations.http import OutboundPolicy
from tests.directory_servers import HOTP_VALUES, ForwardingProxy, PrivacyIDEAServer


@pytest.fixture
def directory(privacyidea_server: PrivacyIDEAServer, outbound_policy: OutboundPolicy) -> PrivacyIDEADirectory:
    return PrivacyIDEADirectory(url=privacyidea_server.url, realm=privacyidea_server.realm,
                                token=privacyidea_server.token,
                                policy=OutboundPolicy(allowlist=("127.0.0.1",), read_timeout=30.0))


def _serial(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4).upper()}"


def _totp(key_hex: str) -> pyotp.TOTP:
    return pyotp.TOTP(base64.b32encode(bytes.fromhex(key_hex)).decode())


def test_the_adapter_is_a_directory(directory: PrivacyIDEADirectory) -> None:
    assert isinstance(directory, Directory)
    assert directory.kind == "privacyidea"
    assert directory.token not in repr(directory)


def test_find_user_by_email_and_describe_tokens_phones_and_signins(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user(mobile="+4915112345678", phone="+4930123456", givenname="Ada", surname="Lovelace")
    totp, hotp = _serial("TOTP"), _serial("HOTP")
    pi.enrol_totp(user, totp, secrets.token_hex(20))
    pi.enrol_hotp(user, hotp)
    assert pi.validate(user, HOTP_VALUES[1])  # a sign-in privacyIDEA logs with the client's address
    assert not pi.validate(user, "000000")

    found = directory.find_user(email=f"{user.upper()}@EXAMPLE.com")
    assert found is not None and found.external_id == user and found.display_name == "Ada Lovelace"
    assert not found.suspended
    assert directory.find_user(external_id=user) == found
    assert directory.find_user(email="nobody-" + user + "@example.com") is None
    assert directory.find_user(email="*@example.com") is None  # never a wildcard search

    described = directory.describe(user)
    assert {(f.reference, f.kind) for f in described.factors} == {(totp, "totp"), (hotp, "hotp")}
    assert all(f.active and f.created_at is not None for f in described.factors)
    assert [(c.kind, c.value) for c in described.channels] == [
        ("email", f"{user}@example.com"), ("phone", "+4915112345678"), ("phone", "+4930123456")]
    assert described.backup_codes_remaining == 0
    assert described.signins is not None
    assert [(s.outcome, s.ip) for s in described.signins] == [("failure", "127.0.0.1"), ("success", "127.0.0.1")]
    assert described.facts["realm"] == pi.realm


def test_reset_removes_totp_and_hotp_and_reports_the_serials(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    totp, hotp = _serial("TOTP"), _serial("HOTP")
    key = secrets.token_hex(20)
    pi.enrol_totp(user, totp, key)
    pi.enrol_hotp(user, hotp)

    result = directory.reset_factors(user)

    assert sorted(result.removed) == sorted([totp, hotp])
    assert pi.serials(user) == set()
    assert not pi.validate(user, HOTP_VALUES[1])
    assert not pi.validate(user, _totp(key).now())
    assert directory.reset_factors(user).removed == ()  # a repeat: nothing left, no error


def test_reset_of_an_unknown_user_is_permanent(directory: PrivacyIDEADirectory) -> None:
    with pytest.raises(PermanentDirectoryError, match="no user"):
        directory.reset_factors("nobody-" + secrets.token_hex(4))


def test_backup_codes_are_a_tan_token_whose_codes_validate_once_each(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    reference = _serial("RKBC")

    issued = directory.issue_backup_codes(user, reference=reference, count=3)

    assert issued.reference == reference and len(set(issued.secrets)) == 3
    token = pi.admin("GET", "/token/", serial=reference)["tokens"][0]
    assert token["tokentype"] == "tan" and token["username"] == user
    assert directory.describe(user).backup_codes_remaining == 3
    first, second, _third = issued.secrets
    assert not any(code in repr(issued) for code in issued.secrets)  # a logged or traced result shows no code
    assert pi.validate(user, first)
    assert not pi.validate(user, first)  # once
    assert pi.validate(user, second)
    assert directory.describe(user).backup_codes_remaining == 1

    again = directory.issue_backup_codes(user, reference=reference, count=3)  # a retry replaces, never adds

    assert pi.serials(user) == {reference}
    assert not pi.validate(user, _third)
    assert pi.validate(user, again.secrets[2])


def test_backup_codes_never_take_over_another_users_token(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    owner, other = pi.create_user(), pi.create_user()
    serial = _serial("HOTP")
    pi.enrol_hotp(owner, serial)
    with pytest.raises(PermanentDirectoryError, match="someone else"):
        directory.issue_backup_codes(other, reference=serial, count=2)
    assert pi.serials(owner) == {serial}


def test_suspend_makes_validate_reject_and_reactivate_accept_again(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    hotp, key = _serial("HOTP"), secrets.token_hex(20)
    totp, kept_off = _serial("TOTP"), _serial("TOTP")
    pi.enrol_hotp(user, hotp)
    pi.enrol_totp(user, totp, key)
    pi.enrol_totp(user, kept_off, secrets.token_hex(20))
    pi.admin("POST", "/token/disable", serial=kept_off)  # disabled by the company, not by Rekey

    directory.suspend(user)
    directory.suspend(user)  # idempotent

    assert directory.find_user(external_id=user).suspended  # type: ignore[union-attr]
    assert not pi.validate(user, HOTP_VALUES[1])
    assert not pi.validate(user, _totp(key).now())

    directory.reactivate(user)
    directory.reactivate(user)

    assert pi.validate(user, HOTP_VALUES[1])
    tokens = {t["serial"]: t for t in pi.admin("GET", "/token/", user=user, realm=pi.realm)["tokens"]}
    assert tokens[hotp]["active"] and tokens[totp]["active"]
    assert not tokens[kept_off]["active"]  # reactivate enables only what suspend disabled
    assert not directory.find_user(external_id=user).suspended  # type: ignore[union-attr]


def test_temporary_password_is_a_registration_token_that_works_once(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    reference = _serial("RKPW")

    issued = directory.set_temporary_password(user, reference=reference)

    (code,) = issued.secrets
    assert issued.expires_at is not None
    assert timedelta(hours=23) < issued.expires_at - datetime.now(UTC) <= timedelta(hours=24)
    token = pi.admin("GET", "/token/", serial=reference)["tokens"][0]
    assert token["tokentype"] == "registration" and token["info"]["validity_period_end"]
    assert pi.validate(user, code)
    assert not pi.validate(user, code)  # single use: privacyIDEA deleted the token
    assert reference not in pi.serials(user)


def test_enrolled_since_reports_new_tokens_only(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    old = _serial("HOTP")
    pi.enrol_hotp(user, old)
    assert directory.enrolled_since(user, datetime.now(UTC) + timedelta(seconds=5)) == ()
    since = datetime.now(UTC) - timedelta(hours=1)
    assert [f.reference for f in directory.enrolled_since(user, since)] == [old]

    directory.reset_factors(user)
    directory.issue_backup_codes(user, reference=_serial("RKBC"), count=2)  # Rekey's own: not an enrolment
    since = datetime.now(UTC)
    assert directory.enrolled_since(user, since) == ()
    new = _serial("TOTP")
    pi.enrol_totp(user, new, secrets.token_hex(20))

    assert [(f.reference, f.kind) for f in directory.enrolled_since(user, since)] == [(new, "totp")]


def test_revoke_sessions_says_privacyidea_has_none(directory: PrivacyIDEADirectory) -> None:
    assert directory.revoke_sessions("anyone") is False


def test_a_refused_service_token_is_permanent_and_never_in_the_message(
        privacyidea_server: PrivacyIDEAServer, outbound_policy: OutboundPolicy) -> None:
    wrong = privacyidea_server.token[:-4] + "AAAA"
    bad = PrivacyIDEADirectory(url=privacyidea_server.url, realm=privacyidea_server.realm, token=wrong,
                               policy=outbound_policy)
    with pytest.raises(PermanentDirectoryError, match="401") as caught:
        bad.find_user(email="anyone@example.com")
    assert wrong not in str(caught.value)


def test_an_unknown_realm_is_permanent(privacyidea_server: PrivacyIDEAServer) -> None:
    other = PrivacyIDEADirectory(url=privacyidea_server.url, realm="no-such-realm", token=privacyidea_server.token,
                                 policy=OutboundPolicy(allowlist=("127.0.0.1",), read_timeout=30.0))
    with pytest.raises(PermanentDirectoryError):
        other.reset_factors("alice")


def test_server_stopped_mid_reset_is_transient_and_the_retry_finishes(
        privacyidea_server: PrivacyIDEAServer, directory: PrivacyIDEADirectory) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    totp, hotp = _serial("TOTP"), _serial("HOTP")
    pi.enrol_totp(user, totp, secrets.token_hex(20))
    pi.enrol_hotp(user, hotp)
    pi.stop()
    try:
        with pytest.raises(TransientDirectoryError):
            directory.reset_factors(user)
        with pytest.raises(TransientDirectoryError):
            directory.describe(user)
    finally:
        pi.start()
    assert pi.serials(user) == {totp, hotp}  # nothing happened while it was down

    assert sorted(directory.reset_factors(user).removed) == sorted([totp, hotp])
    assert pi.serials(user) == set()


def test_server_stopped_between_two_deletes_of_a_reset_the_retry_removes_the_rest(
        privacyidea_server: PrivacyIDEAServer) -> None:
    pi = privacyidea_server
    user = pi.create_user()
    first, second = sorted([_serial("HOTP"), _serial("TOTP")])
    pi.enrol_hotp(user, first)
    pi.enrol_totp(user, second, secrets.token_hex(20))
    deletes: list[str] = []

    def stop_at_second_delete(n: int, request: RecordedRequest) -> None:
        if request.method == "DELETE":
            deletes.append(request.path)
            if len(deletes) == 2:
                pi.stop()  # the real server goes away in the middle of the call

    with ForwardingProxy(pi.url, before=stop_at_second_delete) as proxy:
        directory = PrivacyIDEADirectory(url=proxy.url, realm=pi.realm, token=pi.token,
                                         policy=OutboundPolicy(allowlist=("127.0.0.1",), read_timeout=30.0))
        try:
            with pytest.raises(TransientDirectoryError, match="502"):
                directory.reset_factors(user)
        finally:
            pi.start()
        assert len(pi.serials(user)) == 1  # one token deleted before the stop, one still there

        retry = directory.reset_factors(user)

        assert len(retry.removed) == 1
        assert set(retry.removed) | {deletes[0].rsplit("/", 1)[1]} == {first, second}
        assert pi.serials(user) == set()
        assert directory.reset_factors(user).removed == ()


class _Unwell(FakeServer):
    """Answers what a privacyIDEA behind a proxy answers when it is unwell; the scripted status decides."""

    def handle(self, request: RecordedRequest) -> Answer:
        return Answer(200, {"result": {"status": True, "value": []}})


@pytest.mark.parametrize(("reply", "error"), [
    (Reply(status=500), TransientDirectoryError),
    (Reply(status=502, body=b"<html>bad gateway</html>"), TransientDirectoryError),
    (Reply.rate_limited("3"), TransientDirectoryError),
    (Reply.hang(2.0), TransientDirectoryError),
    (Reply(status=400, body={"result": {"status": False, "error": {"code": 905, "message": "bad"}}}),
     PermanentDirectoryError),
    (Reply(status=403, body={"result": {"status": False, "error": {"code": 303, "message": "no"}}}),
     PermanentDirectoryError),
    (Reply(status=200, body={"result": {"status": False, "error": {"code": 10, "message": "odd"}}}),
     PermanentDirectoryError),
    (Reply.redirect("http://127.0.0.1:1/"), PermanentDirectoryError),
])
def test_backend_failures_map_to_transient_or_permanent(
        reply: Reply, error: type[Exception], outbound_policy: OutboundPolicy) -> None:
    with _Unwell() as fake:
        fake.script([reply])
        directory = PrivacyIDEADirectory(url=fake.url, realm="r", token="jwt-secret", policy=outbound_policy)
        with pytest.raises(error) as caught:
            directory.find_user(email="a@example.com")
        assert "jwt-secret" not in str(caught.value)
        assert fake.requests[0].headers["authorization"] == "jwt-secret"  # no "Bearer"


def test_the_registry_builds_it_from_a_tenant_configuration(
        privacyidea_server: PrivacyIDEAServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from integrations.directory import vendors  # noqa: F401  (registers the kinds, as the app does)
    from integrations.directory.registry import DirectoryConfig, build

    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")
    pi = privacyidea_server
    user = pi.create_user()
    directory = build(DirectoryConfig(tenant_id="t1", kind="privacyidea", url=pi.url, realm=pi.realm,
                                      token=pi.token))
    assert isinstance(directory, PrivacyIDEADirectory)
    assert directory.find_user(external_id=user).email == f"{user}@example.com"  # type: ignore[union-attr]
    with pytest.raises(PermanentDirectoryError, match="token"):
        build(DirectoryConfig(tenant_id="t1", kind="privacyidea", url=pi.url, realm=pi.realm))
