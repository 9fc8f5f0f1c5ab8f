"""The notice links in a real browser (Debian Chromium through Playwright), against the app on
localhost with the real worker delivering the notices that carry them.

What a person (and a mail scanner) does: open the link, read the page, confirm with the keyboard;
the old `/v1/recovery/...` address in notices sent before the pages; a hostile ticket rendered
inert; a form posted without its CSRF token, from our page or from another site; the CSP and
the cookie flags as the browser received them.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.recovery.notify import NOTICES
from app.webui import CSP
from tests.browser.conftest import add_virtual_authenticator
from tests.integration.conftest import free_port
from tests.recovery_paths import RESET_REASON, expect_notices
from tests.recovery_steps import PHONE, act, audit, cast, open_case, state, user_row, verified_case
from tests.webpages import assert_same_database, database_state

URL = re.compile(r"(https?://\S+/t/[a-z0-9-]+/links/(?:report|cancel)/[A-Za-z0-9._~-]+)")
REPORT_BUTTON = "This wasn't me: secure my account"


def _notice_url(message: dict[str, Any]) -> str:
    found = URL.search(message["body"])
    assert found, message["body"]
    return found.group(1)


def test_notice_link_in_the_browser_changes_nothing_until_confirmed(app: Any, world: Any, page: Any,
                                                                   live_server: Any) -> None:
    c = cast(world)
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    sent = expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)  # delivered by the worker
    notice = next(m for m in sent if m["to"] == PHONE)
    url = _notice_url(notice)
    assert url.startswith(f"{live_server.url}/t/{c.tenant.slug}/links/report/")
    assert f"{live_server.url}/t/{c.tenant.slug}/signin" in notice["body"]
    world.quiesce()

    before = database_state(app)
    # A notice sent before the pages existed carries the old address: it lands on the page.
    token = url.rsplit("/", 1)[1]
    page.goto(f"/v1/recovery/report/{token}")
    assert page.url == url
    # What a scanner and the person get alike: the notice, its time and case, and a button.
    answer = page.goto(url)
    assert answer.status == 200
    assert page.get_by_role("heading", level=1).inner_text() == "Was this you?"
    assert page.get_by_text(NOTICES["mfa.factor_admin_reset"]).is_visible()
    assert page.get_by_text(case_id).is_visible()
    assert page.get_by_role("button", name=REPORT_BUTTON).is_visible()
    assert_same_database(before, database_state(app))  # the GETs wrote nothing at all
    assert state(world, case_id, c.agent) == "awaiting_enrolment"
    assert user_row(world, c.user)["status"] == "active"

    headers = answer.all_headers()
    assert headers["content-security-policy"] == CSP
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    csrf = cookies["__Host-rekey_csrf"]
    assert (csrf["httpOnly"], csrf["secure"], csrf["sameSite"], csrf["path"]) == (True, True, "Lax", "/")

    # The keyboard alone: the skip link first, then the confirm button, Enter submits.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to the main content"
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent") == REPORT_BUTTON:
            break
    else:
        raise AssertionError("the confirm button cannot be reached with Tab")
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Your account is secured").wait_for()

    assert state(world, case_id, c.senior) == "suspected_attack"
    assert user_row(world, c.user)["status"] == "suspended"
    reported = audit(world, c.tenant, "recovery.reported_not_me", case_id)
    assert [(e.actor_type, e.actor_id) for e in reported] == [("user_report", str(c.user.id))]
    assert len(audit(world, c.tenant, "security.incident_opened", case_id)) == 1
    expect_notices(world, case_id, "user.suspended", c.user)  # the worker tells the real user
    assert page.console_errors == []  # no CSP violation, no script error

    page.goto(url)  # used: the one invalid-link page
    assert page.get_by_role("heading", level=1).inner_text() == "This link cannot be used"


def _suspension_notice_url(world: Any, c: Any, case_id: str) -> str:
    reason = "The caller could not name their manager"
    assert act(world, case_id, "suspend_user", c.agent, reason=reason).status_code == 200
    sent = expect_notices(world, case_id, "user.suspended", c.user)
    return _notice_url(sent[0])


def test_hostile_ticket_subject_and_name_render_inert(world: Any, page: Any) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>\' onmouseover=\'alert(3)'
    c = cast(world, display_name=hostile, lost_totp=False)
    case_id = open_case(world, c, subject=hostile)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(_suspension_notice_url(world, c, case_id))
    main = page.locator("main")
    assert main.get_by_text(hostile, exact=True).count() == 2  # the subject and the account name, as text
    assert main.locator("img, script").count() == 0
    main.get_by_text(hostile, exact=True).first.hover()
    assert page.title().startswith("Was this you?")
    assert dialogs == []


def test_confirm_without_csrf_token_is_refused(app: Any, world: Any, page: Any) -> None:
    c = cast(world, lost_totp=False)
    case_id = open_case(world, c)
    url = _suspension_notice_url(world, c, case_id)
    world.quiesce()
    page.goto(url)
    # A form that lost its token (a forged or stale form): the server refuses it with a page.
    page.locator('input[name="csrf_token"]').evaluate("field => field.remove()")
    before = database_state(app)
    with page.expect_response(url) as answer:
        page.get_by_role("button", name=REPORT_BUTTON).click()
    assert answer.value.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
    assert page.get_by_text("This form has expired or did not come from this site").is_visible()
    assert_same_database(before, database_state(app))
    # A script POST: without the header refused; through our script (which adds it) accepted.
    page.goto(url)
    assert page.evaluate("() => fetch(location.pathname, {method: 'POST'}).then(r => r.status)") == 403
    assert_same_database(before, database_state(app))
    assert page.evaluate("() => window.rekey.post(location.pathname).then(r => r.status)") == 200
    assert len(audit(world, c.tenant, "recovery.reported_not_me", case_id)) == 1


@pytest.fixture
def evil_site() -> Iterator[Any]:
    """Another site (another origin: 127.0.0.1, not localhost) that serves one page: a form aimed
    at whatever URL the test gives, submitted by its own script as soon as it loads."""
    target: dict[str, str] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (f'<form method="post" action="{target["url"]}"><input name="csrf_token" value="forged">'
                    '</form><script>document.forms[0].submit()</script>').encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield lambda url: (target.update(url=url), f"http://127.0.0.1:{server.server_address[1]}/")[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_cross_site_form_post_is_refused(app: Any, world: Any, page: Any, evil_site: Any) -> None:
    c = cast(world, lost_totp=False)
    case_id = open_case(world, c)
    url = _suspension_notice_url(world, c, case_id)
    world.quiesce()
    page.goto(url)  # the victim has opened the link before: the browser holds our CSRF cookie
    before = database_state(app)
    with page.expect_response(url) as answer:
        page.goto(evil_site(url))
    assert answer.value.status == 403
    page.get_by_role("heading", name="Not allowed").wait_for()
    assert_same_database(before, database_state(app))
    assert len(audit(world, c.tenant, "recovery.reported_not_me", case_id)) == 0


def test_virtual_authenticator_holds_a_resident_user_verified_key(page: Any, live_server: Any) -> None:
    """The helper the WebAuthn tests use: a key registered on localhost stays in the authenticator."""
    page.goto("/t/no-such-tenant/")  # any page of our origin (a secure context: localhost)
    authenticator = add_virtual_authenticator(page)
    credential_id = page.evaluate("""() => navigator.credentials.create({publicKey: {
        challenge: new Uint8Array(32), rp: {id: "localhost", name: "Rekey"},
        user: {id: new Uint8Array(16), name: "kim@example.com", displayName: "Kim"},
        pubKeyCredParams: [{type: "public-key", alg: -7}, {type: "public-key", alg: -257}],
        authenticatorSelection: {residentKey: "required", userVerification: "required"}}}).then(c => c.id)""")
    [held] = authenticator.credentials()
    assert held["rpId"] == "localhost" and held["isResidentCredential"] is True
    assert held["credentialId"].rstrip("=").replace("+", "-").replace("/", "_") == credential_id
    assert held["signCount"] == 1
