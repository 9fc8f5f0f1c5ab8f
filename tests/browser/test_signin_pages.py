"""The sign-in and enrolment pages in a real browser (Debian Chromium through Playwright), against
the app on localhost with the real worker carrying out the reset and sending its notices.

What the person does after a force reset: follow the sign-in address the notice names, sign in
with the password, land on enrolment in the enrol-only session, register a security key (Chrome's
virtual authenticator) or an authenticator app (the test reads the secret on the page and types
a code), which recovers the case; then sign out and in again with the new factor. A backup code
works once; a cloned authenticator (its counter behind) is refused and audited.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pyotp

from tests.browser.conftest import add_virtual_authenticator
from tests.factories import PASSWORD
from tests.recovery_paths import RESET_REASON, expect_notices
from tests.recovery_steps import PHONE, act, assert_no_secrets, audit, cast, give_backup_codes, state, verified_case

SIGNIN_URL = re.compile(r"(https?://\S+/t/[a-z0-9-]+/signin)\b")


def _reset_and_follow_the_notice(world: Any, page: Any, live_server: Any, **user: Any) -> tuple[Any, str]:
    """A verified case, the reset carried out by the worker, and the browser on the sign-in page
    the notice names."""
    c = cast(world, **user)
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset by the worker")
    notice = next(m for m in expect_notices(world, case_id, "mfa.factor_admin_reset", c.user) if m["to"] == PHONE)
    found = SIGNIN_URL.search(notice["body"])
    assert found and found.group(1) == f"{live_server.url}/t/{c.tenant.slug}/signin", notice["body"]
    page.goto(found.group(1))
    return c, case_id


def _password(page: Any, c: Any, password: str = PASSWORD) -> None:
    page.get_by_label("Email address").fill(c.user.email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Continue").click()


def _heading(page: Any, text: str) -> None:
    page.get_by_role("heading", level=1, name=text).wait_for()


def _script_errors(page: Any) -> list[str]:
    """Console errors but the browser's note of a 4xx page we asked for (a CSP violation or a
    script error is one)."""
    return [e for e in page.console_errors
            if not e.startswith("Failed to load resource: the server responded with a status of 4")]


def _sign_out(page: Any, button: str = "Sign out") -> None:
    page.get_by_role("button", name=button).click()
    page.get_by_text("You are signed out.").wait_for()


def test_reset_then_security_key_recovers_the_case_and_signs_in_again(world: Any, page: Any,
                                                                     live_server: Any) -> None:
    c, case_id = _reset_and_follow_the_notice(world, page, live_server)
    _password(page, c)
    _heading(page, "Set up a sign-in factor")
    assert page.url.endswith(f"/t/{c.tenant.slug}/enrol")
    # The enrol-only session reaches nothing else.
    assert page.goto(f"/t/{c.tenant.slug}/account").status == 403
    page.goto(f"/t/{c.tenant.slug}/enrol")

    authenticator = add_virtual_authenticator(page)
    page.get_by_role("link", name="Set up a security key").click()
    page.get_by_label("Name of this key").fill("Laptop fingerprint")
    page.get_by_role("button", name="Register my security key").click()
    _heading(page, "Your new factor is set up")
    [credential] = authenticator.credentials()
    assert credential["rpId"] == "localhost"
    world.settle(lambda: state(world, case_id, c.agent) in ("recovered", "closed"), "the case recovered")
    [enrolled] = [e for e in audit(world, c.tenant, "mfa.factor_enrolled", case_id) if e.details["kind"] == "webauthn"]
    assert enrolled.actor_type == "user"

    _sign_out(page, "Sign out and sign in again")
    _password(page, c)
    _heading(page, "Confirm it is you")
    page.get_by_role("button", name="Use my security key").click()
    _heading(page, "Account security")
    assert page.get_by_role("cell", name="Laptop fingerprint").is_visible()
    signins = [e for e in audit(world, c.tenant, "auth.signin_succeeded") if e.details["method"] == "webauthn"]
    assert [(e.details["status"], e.details["session_scope"]) for e in signins] == [("ok", "full")]
    assert _script_errors(page) == []


HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_reset_then_authenticator_app_read_from_the_page(world: Any, page: Any, live_server: Any,
                                                        browser_worker: Any, request: Any) -> None:
    # The user's name (which a ticket or directory sync may have set) is shown as text, inert.
    c, case_id = _reset_and_follow_the_notice(world, page, live_server, display_name=HOSTILE)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    _password(page, c)
    page.get_by_role("button", name="Set up an authenticator app").click()
    _heading(page, "Set up an authenticator app")
    assert page.get_by_role("img", name="QR code for your authenticator app").is_visible()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    world.handed_out.append(secret)
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on the authenticator app").click()
    _heading(page, "Your new factor is set up")
    world.settle(lambda: state(world, case_id, c.agent) in ("recovered", "closed"), "the case recovered")

    page.get_by_role("button", name="Make my backup codes").click()
    _heading(page, "Your backup codes")
    codes = [code.strip() for code in page.locator(".codes code").all_inner_texts()]
    assert len(codes) == 10
    world.handed_out.extend(codes)
    _sign_out(page, "I saved them: sign out and sign in again")

    _password(page, c)
    # The code of the step after the one the enrolment used: each step is accepted once.
    page.get_by_label("The 6-digit code from your authenticator app").fill(pyotp.TOTP(secret).at(time.time() + 30))
    page.get_by_role("button", name="Sign in", exact=True).click()
    _heading(page, "Account security")
    assert page.get_by_text("10 of 10 backup codes left.").is_visible()
    assert page.get_by_text(f"Signed in as {HOSTILE} ({c.user.email}).").is_visible()
    assert page.locator("main img, main script").count() == 0 and dialogs == []
    assert _script_errors(page) == []
    # The secret and the codes the pages showed reached no audit row, task, ticket or log.
    # The live server's log, as pytest captured it (absent only under -p no:logging).
    served = request.getfixturevalue("caplog").text if request.config.pluginmanager.has_plugin("logging") else ""
    assert_no_secrets(world, logs=served + browser_worker.log())


def test_backup_code_signs_in_once_then_is_refused(world: Any, page: Any) -> None:
    c = cast(world)
    [code, *_] = give_backup_codes(world, c.user)
    for attempt in range(2):
        page.goto(f"/t/{c.tenant.slug}/signin")
        _password(page, c)
        page.get_by_label("One of your backup codes (each works once)").fill(code)
        page.get_by_role("button", name="Sign in with a backup code").click()
        if attempt == 0:
            _heading(page, "Account security")
            assert page.get_by_text("9 of 10 backup codes left.").is_visible()
            _sign_out(page)
        else:
            page.get_by_role("alert").get_by_text("The email, password or code is not correct.").wait_for()
            assert "/account" not in page.url
    assert len(audit(world, c.tenant, "mfa.backup_code_used")) == 1
    assert [e.details["result"] for e in audit(world, c.tenant, "auth.signin_failed")] == ["bad_factor"]


def test_a_cloned_authenticator_is_refused_and_audited(world: Any, page: Any) -> None:
    c = cast(world)
    base = f"/t/{c.tenant.slug}"
    page.goto(f"{base}/signin")
    _password(page, c)
    page.get_by_label("The 6-digit code from your authenticator app").fill(
        pyotp.TOTP(c.totp_secret).at(time.time() + 30))
    page.get_by_role("button", name="Sign in", exact=True).click()
    _heading(page, "Account security")
    authenticator = add_virtual_authenticator(page)
    page.get_by_role("link", name="Add a security key").click()
    page.get_by_role("button", name="Register my security key").click()
    _heading(page, "Your new factor is set up")
    [copied] = authenticator.credentials()  # the key's secret and counter, extracted once

    _sign_out_from_account(page, base)
    _password(page, c)
    page.get_by_role("button", name="Use my security key").click()
    _heading(page, "Account security")  # the real key signs in: its counter moves on
    _sign_out_from_account(page, base)

    # The copy, its counter where it was: the private key is right, the counter went back.
    authenticator.cdp.send("WebAuthn.clearCredentials", {"authenticatorId": authenticator.id})
    authenticator.cdp.send("WebAuthn.addCredential", {"authenticatorId": authenticator.id, "credential": copied})
    _password(page, c)
    page.get_by_role("button", name="Use my security key").click()
    page.get_by_role("alert").get_by_text("The email, password or code is not correct.").wait_for()
    [suspected] = audit(world, c.tenant, "mfa.key_clone_suspected")
    assert suspected.details["presented_count"] <= suspected.details["stored_count"]
    assert [e.details.get("problem") for e in audit(world, c.tenant, "auth.signin_failed")] == ["sign_count"]


def _sign_out_from_account(page: Any, base: str) -> None:
    page.goto(f"{base}/account")
    _sign_out(page)


def test_without_javascript_the_keyboard_signs_in_and_enrols_an_app(world: Any, browser: Any,
                                                                    live_server: Any) -> None:
    """No script at all (JavaScript off): the labelled fields and buttons, reached with Tab and
    submitted with Enter, sign in after a reset and enrol an authenticator app; the security-key
    block stays hidden and the page says why."""
    c = cast(world)
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset by the worker")
    context = browser.new_context(base_url=live_server.url, java_script_enabled=False)
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        page.goto(f"/t/{c.tenant.slug}/signin")
        page.keyboard.press("Tab")  # the skip link, then the email field (autofocus aside)
        page.get_by_label("Email address").focus()
        page.keyboard.type(c.user.email)
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        _heading(page, "Set up a sign-in factor")
        page.get_by_role("button", name="Set up an authenticator app").focus()
        page.keyboard.press("Enter")
        _heading(page, "Set up an authenticator app")
        secret = page.locator("#totp-secret").inner_text().replace(" ", "")
        world.handed_out.append(secret)
        page.get_by_label("Code from the app").focus()
        page.keyboard.type(pyotp.TOTP(secret).now())
        page.keyboard.press("Enter")
        _heading(page, "Your new factor is set up")
        world.settle(lambda: state(world, case_id, c.agent) in ("recovered", "closed"), "the case recovered")
        page.goto(f"/t/{c.tenant.slug}/enrol/key")
        assert page.get_by_text("Registering a security key needs JavaScript").is_visible()
        assert not page.get_by_role("button", name="Register my security key").is_visible()
    finally:
        context.close()
