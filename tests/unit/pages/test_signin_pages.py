"""The sign-in, enrolment and account pages through Flask's test client, as a browser uses them
(cookies kept, each form posted with the CSRF token its page carried): the same throttles,
lockouts and audit events as the API, the enrol-only session after a reset, a security key from
the tests' software authenticator, backup codes shown once, the last factor kept."""

from __future__ import annotations

import re
import time
from typing import Any

import pyotp
import pytest

from app.accounts.models import UserSession
from app.extensions import db
from tests.authenticator import SoftKey
from tests.factories import PASSWORD
from tests.recovery_paths import RESET_REASON
from tests.recovery_steps import (
    BACKUP_CODE,
    World,
    act,
    audit,
    cast,
    give_backup_codes,
    in_process,
    state,
    verified_case,
)
from tests.webpages import assert_page, form_token, main_text

pytestmark = pytest.mark.usefixtures("cached_password_hashes")
SECRET_TEXT = re.compile(r'<code class="secret" id="totp-secret">([A-Z2-7 ]+)</code>')


@pytest.fixture
def world(client: Any, factory: Any) -> World:
    return in_process(client, factory)


def _post(client: Any, page_path: str, action: str, **fields: str) -> Any:
    """Open the page, then post one of its forms (with the page's CSRF token) to `action`."""
    page = client.get(page_path)
    assert page.status_code == 200, (page.status_code, main_text(page))
    return client.post(action, data={"csrf_token": form_token(page), **fields})


def _password_step(client: Any, c: Any, password: str = PASSWORD, ip: str = "198.51.100.7") -> Any:
    base = f"/t/{c.tenant.slug}"
    page = client.get(f"{base}/signin")
    return client.post(f"{base}/signin", data={"csrf_token": form_token(page), "email": c.user.email,
                                               "password": password}, environ_base={"REMOTE_ADDR": ip})


def _next_code(secret: str) -> str:
    # The step after the one the old enrolment used: a code is accepted once per time step.
    return pyotp.TOTP(secret).at(time.time() + 30)


def _session_scopes(world: World, user: Any) -> list[str]:
    with world.app.app_context():
        rows = db.session.query(UserSession).filter_by(user_id=user.id, kind="browser", revoked_at=None).all()
        return [r.scope for r in rows]


def test_signin_page_has_labelled_fields_and_the_federated_link(world: World) -> None:
    c = cast(world)
    page = world.client.get(f"/t/{c.tenant.slug}/signin")
    html = page.get_data(as_text=True)
    assert_page(page, 200)
    assert '<label for="email">' in html and '<label for="password">' in html
    assert f'href="/t/{c.tenant.slug}/signin/federated">Sign in with your company identity</a>' in html
    assert page.headers["Cache-Control"] == "no-store"
    assert "style=" not in html and "<script>" not in html  # the CSP allows neither inline


def test_password_then_authenticator_code_opens_the_account_page(world: World) -> None:
    c = cast(world)
    step1 = _password_step(world.client, c)
    assert step1.status_code == 303 and step1.headers["Location"] == f"/t/{c.tenant.slug}/signin/verify"
    verify = world.client.get(step1.headers["Location"])
    text = assert_page(verify, 200)
    assert "Authenticator app" in text and "Security key" not in text
    assert "rk_pend" not in verify.get_data(as_text=True)  # the pending token stays in its cookie
    done = world.client.post(f"/t/{c.tenant.slug}/signin/verify", data={
        "csrf_token": form_token(verify), "method": "otp", "code": _next_code(c.totp_secret)})
    assert done.status_code == 303 and done.headers["Location"] == f"/t/{c.tenant.slug}/account"
    account = assert_page(world.client.get(done.headers["Location"]), 200)
    assert "Authenticator app" in account and "Recent sign-ins" in account and "succeeded" in account
    assert _session_scopes(world, c.user) == ["full"]
    [event] = audit(world, c.tenant, "auth.signin_succeeded")
    assert (event.details["method"], event.details["two_step"], event.details["status"]) == ("totp", True, "ok")


def test_wrong_password_shows_the_form_again_and_locks_like_the_api(world: World) -> None:
    c = cast(world)
    settings = world.app.extensions["rekey.settings"]
    for _ in range(settings.signin_max_failures):
        answer = _password_step(world.client, c, password="wrong password entirely")
        text = assert_page(answer, 401)
        assert "The email, password or code is not correct." in text
        assert c.user.email in answer.get_data(as_text=True)  # the email kept in its field
    locked = _password_step(world.client, c)  # now even the right password waits
    assert "Too many failed sign-ins for this account" in assert_page(locked, 429)
    assert int(locked.headers["Retry-After"]) > 0
    assert len(audit(world, c.tenant, "auth.signin_failed")) == settings.signin_max_failures
    assert len(audit(world, c.tenant, "auth.account_locked")) >= 1


def test_wrong_code_keeps_step_two_and_three_end_the_pending_signin(world: World) -> None:
    c = cast(world)
    verify_path = _password_step(world.client, c).headers["Location"]
    for attempt in range(3):
        page = world.client.get(verify_path)
        answer = world.client.post(verify_path, data={"csrf_token": form_token(page), "method": "otp",
                                                      "code": "000000"})
        text = assert_page(answer, 401)
        if attempt < 2:
            assert "Confirm it is you" in text and "not correct" in text
        else:  # the third wrong code spent the pending sign-in: the password again
            assert "Sign in" in text and "start again" in text.lower()
    assert _session_scopes(world, c.user) == []
    assert len(audit(world, c.tenant, "auth.signin_failed")) == 3


def test_signin_without_csrf_token_is_refused_and_records_nothing(world: World) -> None:
    c = cast(world)
    answer = world.client.post(f"/t/{c.tenant.slug}/signin", data={"email": c.user.email, "password": PASSWORD})
    assert "This form has expired" in assert_page(answer, 403)
    assert audit(world, c.tenant, "auth.signin_succeeded") == []


def test_next_is_kept_within_the_tenant_and_never_another_site(world: World) -> None:
    c = cast(world)
    base = f"/t/{c.tenant.slug}"
    for nxt, expected in ((f"{base}/password", f"{base}/password"), ("//evil.example/x", f"{base}/account")):
        client = world.app.test_client()
        page = client.get(f"{base}/signin?next={nxt}")
        step = client.post(f"{base}/signin", data={"csrf_token": form_token(page), "email": c.user.email,
                                                   "password": PASSWORD, "next": nxt})
        verify = client.get(step.headers["Location"])
        codes = give_backup_codes(world, c.user)
        done = client.post(step.headers["Location"], data={"csrf_token": form_token(verify),
                                                           "method": "backup_code", "code": codes[0]})
        assert done.status_code == 303 and done.headers["Location"] == expected, nxt


def _reset_user(world: World) -> tuple[Any, str]:
    c = cast(world)
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.quiesce()
    return c, case_id


def test_after_a_reset_the_password_opens_only_enrolment_and_an_app_recovers_the_case(world: World) -> None:
    c, case_id = _reset_user(world)
    base = f"/t/{c.tenant.slug}"
    step = _password_step(world.client, c)
    assert step.status_code == 303 and step.headers["Location"] == f"{base}/enrol"
    assert _session_scopes(world, c.user) == ["restricted"]
    assert "Before you can use it again" in assert_page(world.client.get(f"{base}/enrol"), 200)
    assert "After an account recovery" in assert_page(world.client.get(f"{base}/account"), 403)

    started = _post(world.client, f"{base}/enrol", f"{base}/enrol/totp")
    html = started.get_data(as_text=True)
    assert_page(started, 200)
    assert started.headers["Cache-Control"] == "no-store"
    assert "<svg" in html and "QR code for your authenticator app" in html  # drawn here, inline
    found = SECRET_TEXT.search(html)
    assert found, html
    secret = found.group(1).replace(" ", "")
    assert "style=" not in html.split("<main", 1)[1]

    wrong = world.client.post(f"{base}/enrol/totp/confirm", data={"csrf_token": form_token(started), "code": "123456"})
    assert "The code is not valid." in assert_page(wrong, 422)
    assert state(world, case_id, c.agent) == "awaiting_enrolment"
    confirmed = world.client.post(f"{base}/enrol/totp/confirm", data={
        "csrf_token": form_token(wrong), "code": pyotp.TOTP(secret).now()})
    assert confirmed.status_code == 303 and confirmed.headers["Location"] == f"{base}/enrol/done?kind=totp"
    world.quiesce()
    assert state(world, case_id, c.agent) in ("recovered", "closed")
    [enrolled] = [e for e in audit(world, c.tenant, "mfa.factor_enrolled", case_id) if e.details["kind"] == "totp"]
    assert enrolled.actor_type == "user"

    done = world.client.get(confirmed.headers["Location"])
    assert "You have no backup codes" in assert_page(done, 200)
    codes_page = world.client.post(f"{base}/backup-codes", data={"csrf_token": form_token(done)})
    codes = BACKUP_CODE.findall(main_text(codes_page))
    assert len(codes) == 10 and codes_page.headers["Cache-Control"] == "no-store"
    assert secret not in str([e.details for e in audit(world, c.tenant)])
    assert not any(code in str([e.details for e in audit(world, c.tenant)]) for code in codes)


def test_restricted_session_cannot_mint_backup_codes_before_enrolling(world: World) -> None:
    c, _ = _reset_user(world)
    base = f"/t/{c.tenant.slug}"
    _password_step(world.client, c)
    answer = _post(world.client, f"{base}/enrol", f"{base}/backup-codes")
    assert "Enrol a factor before regenerating backup codes." in assert_page(answer, 403)
    assert audit(world, c.tenant, "mfa.backup_codes_generated") == []


def _enrol_key(world: World, base: str, key: SoftKey, label: str) -> Any:
    page = world.client.get(f"{base}/enrol/key")
    assert "Set up a security key" in assert_page(page, 200)
    token = form_token(page)
    options = world.client.post(f"{base}/enrol/key/options", headers={"X-CSRF-Token": token})
    assert options.status_code == 200, options.get_data(as_text=True)
    import json

    credential = key.create(options.json["options"])
    return world.client.post(f"{base}/enrol/key", data={"csrf_token": token, "label": label,
                                                        "credential": json.dumps(credential)})


def test_security_key_after_a_reset_recovers_the_case_then_signs_in(world: World) -> None:
    c, case_id = _reset_user(world)
    base = f"/t/{c.tenant.slug}"
    _password_step(world.client, c)
    key = SoftKey()
    registered = _enrol_key(world, base, key, "Blue <b>key</b>")
    assert registered.status_code == 303 and registered.headers["Location"] == f"{base}/enrol/done?kind=webauthn"
    world.quiesce()
    assert state(world, case_id, c.agent) in ("recovered", "closed")
    assert [e.details["kind"] for e in audit(world, c.tenant, "mfa.factor_enrolled", case_id)][-1] == "webauthn"

    done = world.client.get(registered.headers["Location"])
    signed_out = world.client.post(f"{base}/signout", data={"csrf_token": form_token(done)})
    assert signed_out.status_code == 303 and _session_scopes(world, c.user) == []

    verify = world.client.get(_password_step(world.client, c).headers["Location"])
    assert "Security key" in assert_page(verify, 200)
    options = world.client.post(f"{base}/signin/key/options", headers={"X-CSRF-Token": form_token(verify)})
    import json

    answer = world.client.post(f"{base}/signin/key", data={"csrf_token": form_token(verify),
                                                           "credential": json.dumps(key.get(options.json["options"]))})
    assert answer.status_code == 303 and answer.headers["Location"] == f"{base}/account"
    account = world.client.get(f"{base}/account")
    text = assert_page(account, 200)
    assert "Blue <b>key</b>" in text and "<b>key</b>" not in account.get_data(as_text=True)  # escaped
    # The key is the only factor: no remove button, and a forged removal is refused by the service.
    assert "Remove" not in text and "add another before removing it" in text
    import uuid as _uuid

    [factor_id] = re.findall(r"/account/keys/([0-9a-f-]{36})/remove", account.get_data(as_text=True)) or [None]
    assert factor_id is None
    with world.app.app_context():
        from app.accounts.models import MfaFactor

        fid = db.session.query(MfaFactor.id).filter_by(user_id=c.user.id, kind="webauthn", status="active").scalar()
    assert isinstance(fid, _uuid.UUID)
    refused = world.client.post(f"{base}/account/keys/{fid}/remove", data={"csrf_token": form_token(account)})
    assert "This is your last sign-in factor" in assert_page(refused, 422)
    assert audit(world, c.tenant, "mfa.factor_removed") == []


def test_a_key_beside_an_app_can_be_removed_from_the_account_page(world: World) -> None:
    c = cast(world)
    base = f"/t/{c.tenant.slug}"
    verify = world.client.get(_password_step(world.client, c).headers["Location"])
    world.client.post(f"{base}/signin/verify", data={"csrf_token": form_token(verify), "method": "otp",
                                                      "code": _next_code(c.totp_secret)})
    assert _enrol_key(world, base, SoftKey(), "Spare key").status_code == 303
    account = world.client.get(f"{base}/account")
    [action] = re.findall(r'action="(/t/[^"]+/account/keys/[0-9a-f-]{36}/remove)"', account.get_data(as_text=True))
    removed = world.client.post(action, data={"csrf_token": form_token(account)})
    assert removed.status_code == 303
    assert "The security key was removed." in assert_page(world.client.get(removed.headers["Location"]), 200)
    [event] = audit(world, c.tenant, "mfa.factor_removed")
    assert event.details["kind"] == "webauthn" and event.actor_type == "user"


def test_backup_code_signs_in_once_then_is_refused(world: World) -> None:
    c = cast(world)
    codes = give_backup_codes(world, c.user)
    base = f"/t/{c.tenant.slug}"
    for attempt in range(2):
        client = world.app.test_client()
        verify_path = _password_step(client, c).headers["Location"]
        verify = client.get(verify_path)
        assert "Backup code" in assert_page(verify, 200)
        answer = client.post(verify_path, data={"csrf_token": form_token(verify), "method": "backup_code",
                                                "code": codes[0].upper().replace("-", " ")})
        if attempt == 0:
            assert answer.status_code == 303 and answer.headers["Location"] == f"{base}/account"
        else:
            assert "not correct" in assert_page(answer, 401)
    assert len(audit(world, c.tenant, "mfa.backup_code_used")) == 1
    assert [e.details["result"] for e in audit(world, c.tenant, "auth.signin_failed")] == ["bad_factor"]


def test_temporary_password_leads_to_the_password_change(world: World) -> None:
    from tests.recovery_paths import TEMP_PASSWORD
    from tests.recovery_steps import PHONE, messages

    c = cast(world)
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset carried out")
    r = act(world, case_id, "set_temporary_password", c.agent, reason="User cannot read email")
    assert r.status_code == 200, r.json
    [sms] = world.settle(lambda: messages(world, f"action:{r.json['action']['id']}", to=PHONE), "the text")
    assert f"/t/{c.tenant.slug}/signin" in sms["body"]  # the message names the sign-in page
    temporary = TEMP_PASSWORD.search(sms["body"]).group(1)  # type: ignore[union-attr]
    base = f"/t/{c.tenant.slug}"
    step = _password_step(world.client, c, password=temporary)
    assert step.status_code == 303 and step.headers["Location"] == f"{base}/password"
    page = world.client.get(f"{base}/password")
    text = assert_page(page, 200)
    assert "temporary password" in text and "Current password" not in text
    new = "a brand new passphrase for rekey"
    changed = world.client.post(f"{base}/password", data={"csrf_token": form_token(page), "new_password": new,
                                                          "new_password_again": new})
    assert changed.status_code == 303 and changed.headers["Location"].startswith(f"{base}/enrol")
    assert len(audit(world, c.tenant, "user.password_changed")) == 1


# --- security-key attacks on the sign-in page (the tests' software authenticator) -----------------


def _user_with_key(world: World) -> tuple[Any, SoftKey]:
    """A user with an authenticator app and a security key registered through the pages."""
    c = cast(world)
    base = f"/t/{c.tenant.slug}"
    client = world.app.test_client()
    verify = client.get(_password_step(client, c).headers["Location"])
    client.post(f"{base}/signin/verify", data={"csrf_token": form_token(verify), "method": "otp",
                                               "code": _next_code(c.totp_secret)})
    key = SoftKey()
    page = client.get(f"{base}/enrol/key")
    options = client.post(f"{base}/enrol/key/options", headers={"X-CSRF-Token": form_token(page)}).json["options"]
    import json

    answer = client.post(f"{base}/enrol/key", data={"csrf_token": form_token(page),
                                                    "credential": json.dumps(key.create(options))})
    assert answer.status_code == 303, main_text(answer)
    return c, key


def _key_step(world: World, c: Any) -> tuple[Any, str, dict[str, Any]]:
    """A fresh browser at step 2: its client, the page's CSRF token and the key request options."""
    client = world.app.test_client()
    verify = client.get(_password_step(client, c).headers["Location"])
    token = form_token(verify)
    options = client.post(f"/t/{c.tenant.slug}/signin/key/options", headers={"X-CSRF-Token": token})
    assert options.status_code == 200, options.get_data(as_text=True)
    return client, token, options.json["options"]


def _send_assertion(client: Any, c: Any, token: str, credential: dict[str, Any]) -> Any:
    import json

    return client.post(f"/t/{c.tenant.slug}/signin/key", data={"csrf_token": token,
                                                              "credential": json.dumps(credential)})


def test_an_assertion_made_for_another_origin_is_refused_on_the_page(world: World) -> None:
    c, key = _user_with_key(world)
    client, token, options = _key_step(world, c)
    answer = _send_assertion(client, c, token, key.get(options, origin="https://evil.example"))
    assert "not correct" in assert_page(answer, 401)
    assert _session_scopes(world, c.user) == ["full"]  # only the session of the enrolment
    failed = audit(world, c.tenant, "auth.signin_failed")
    assert [(e.details["method"], e.details["problem"]) for e in failed] == [("webauthn", "origin")]


def test_a_replayed_assertion_is_refused_on_the_page(world: World) -> None:
    c, key = _user_with_key(world)
    client, token, options = _key_step(world, c)
    assertion = key.get(options)
    first = _send_assertion(client, c, token, assertion)
    assert first.status_code == 303 and first.headers["Location"] == f"/t/{c.tenant.slug}/account"
    # The same answer again, by another browser that got as far as step 2 with the password:
    other, other_token, _ = _key_step(world, c)
    replay = _send_assertion(other, c, other_token, assertion)
    assert "not correct" in assert_page(replay, 401)
    [failed] = audit(world, c.tenant, "auth.signin_failed")
    assert failed.details["problem"] == "challenge"
    assert len([e for e in audit(world, c.tenant, "auth.signin_succeeded") if e.details["method"] == "webauthn"]) == 1


def test_a_cloned_key_is_refused_on_the_page_and_audited(world: World) -> None:
    c, key = _user_with_key(world)
    clone = key.clone()  # copied before the real key signs in again
    client, token, options = _key_step(world, c)
    assert _send_assertion(client, c, token, key.get(options)).status_code == 303
    client, token, options = _key_step(world, c)
    answer = _send_assertion(client, c, token, clone.get(options))  # its counter is behind
    assert "not correct" in assert_page(answer, 401)
    [suspected] = audit(world, c.tenant, "mfa.key_clone_suspected")
    assert suspected.details["presented_count"] <= suspected.details["stored_count"]
    [failed] = audit(world, c.tenant, "auth.signin_failed")
    assert failed.details["problem"] == "sign_count"
