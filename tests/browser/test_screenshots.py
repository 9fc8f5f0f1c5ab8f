"""A picture of every page, taken in the browser. `make screenshots` saves them under
docs/screenshots/ (the README's "For end users" shows them); in `make test` the same walk runs
into a temporary folder, so every page is rendered by a real browser without a console error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.test_link_pages import REPORT_BUTTON
from tests.recovery_paths import RESET_REASON, expect_notices
from tests.recovery_steps import PHONE, act, cast, page_links_in, verified_case


@pytest.fixture
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    chosen = request.config.getoption("--screenshots")
    folder = Path(chosen) if chosen else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _shoot(page: Any, folder: Path, name: str) -> None:
    page.get_by_role("heading", level=1).wait_for()
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, path  # a rendered page, not a blank one
    # An error page's own 4xx status is logged by the browser; anything else (a CSP violation,
    # a script error, a missing stylesheet) is a broken page.
    errors = [e for e in page.console_errors if not e.startswith("Failed to load resource: the server "
                                                                 "responded with a status of 4")]
    assert errors == [], (name, errors)
    assert page.locator("link[rel=stylesheet]").count() == 1
    page.console_errors.clear()


def test_screenshot_of_every_page(world: Any, page: Any, shots: Path) -> None:
    c = cast(world, tenant_settings={"reset_cooldown_hours": 4}, tenant_name="Acme Corp", display_name="Kim Lee")
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    notice = next(m for m in expect_notices(world, case_id, "reset.scheduled", c.user) if m["to"] == PHONE)
    [cancel] = page_links_in(notice, "cancel")
    [report] = page_links_in(notice, "report")

    page.goto(cancel)
    _shoot(page, shots, "link-cancel")
    page.goto(report)
    _shoot(page, shots, "link-report")

    page.locator('input[name="csrf_token"]').evaluate("field => field.remove()")
    page.get_by_role("button", name=REPORT_BUTTON).click()
    page.get_by_text("This form has expired").wait_for()
    _shoot(page, shots, "form-refused")

    page.goto(report)
    page.get_by_role("button", name=REPORT_BUTTON).click()
    page.get_by_role("heading", name="Your account is secured").wait_for()
    _shoot(page, shots, "link-report-done")

    page.goto(cancel)
    page.get_by_role("button", name="Cancel the reset and secure my account").click()
    page.get_by_role("heading", name="The reset is cancelled").wait_for()
    _shoot(page, shots, "link-cancel-done")

    page.goto(report)
    page.get_by_role("heading", name="This link cannot be used").wait_for()
    _shoot(page, shots, "link-invalid")

    page.goto(f"/t/{c.tenant.slug}/no-such-page")
    _shoot(page, shots, "not-found")


def test_screenshot_of_every_signin_page(world: Any, page: Any, shots: Path) -> None:
    """The sign-in, enrolment and account pages, walked as a person recovering with them does."""
    from tests.browser.conftest import add_virtual_authenticator
    from tests.factories import PASSWORD
    from tests.recovery_steps import state

    c = cast(world, tenant_name="Acme Corp", display_name="Kim Lee")
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    base = f"/t/{c.tenant.slug}"

    def password_step() -> None:
        page.get_by_label("Email address").fill(c.user.email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Continue").click()

    page.goto(f"{base}/signin")
    _shoot(page, shots, "signin")
    page.get_by_label("Email address").fill(c.user.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("alert").wait_for()
    _shoot(page, shots, "signin-refused")
    password_step()
    page.get_by_role("heading", name="Set up a sign-in factor").wait_for()
    _shoot(page, shots, "enrol")
    page.get_by_role("button", name="Set up an authenticator app").click()
    page.get_by_role("heading", name="Set up an authenticator app").wait_for()
    _shoot(page, shots, "enrol-app")
    page.goto(f"{base}/enrol/key")
    _shoot(page, shots, "enrol-key")
    add_virtual_authenticator(page)
    page.get_by_label("Name of this key").fill("Laptop fingerprint")
    page.get_by_role("button", name="Register my security key").click()
    page.get_by_role("heading", name="Your new factor is set up").wait_for()
    _shoot(page, shots, "enrol-done")
    page.get_by_role("button", name="Make my backup codes").click()
    page.get_by_role("heading", name="Your backup codes").wait_for()
    _shoot(page, shots, "backup-codes")
    page.get_by_role("button", name="I saved them: sign out and sign in again").click()
    page.get_by_text("You are signed out.").wait_for()
    password_step()
    page.get_by_role("heading", name="Confirm it is you").wait_for()
    _shoot(page, shots, "signin-second-factor")
    page.get_by_role("button", name="Use my security key").click()
    page.get_by_role("heading", name="Account security").wait_for()
    _shoot(page, shots, "account")
    page.get_by_role("link", name="Change your password").click()
    _shoot(page, shots, "password")


# --- the agent console (issue 10) ------------------------------------------------------------------


def _shoot_console(page: Any, folder: Path, name: str) -> None:
    page.get_by_role("heading", level=1).wait_for()
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, path
    errors = [e for e in page.console_errors if not e.startswith("Failed to load resource: the server "
                                                                 "responded with a status of 4")]
    assert errors == [], (name, errors)
    page.console_errors.clear()


def test_screenshot_of_the_console(world: Any, browser: Any, live_server: Any, shots: Path) -> None:
    from tests.browser.test_console import console_agent
    from tests.recovery_steps import signin

    c = cast(world, tenant_name="Acme Corp", display_name="Kim Lee")
    for _ in range(2):
        signin(world, c, "a mistyped password", ip="203.0.113.9")
    verified = verified_case(world, c)
    console, _ = console_agent(world, browser, live_server, c.tenant, login=c.agent)
    console.goto("/console/queue")
    _shoot_console(console, shots, "console-queue")
    console.goto(f"/console/cases/{verified}")
    _shoot_console(console, shots, "console-case")
    console.goto(f"/console/users/{c.user.id}?case={verified}")
    _shoot_console(console, shots, "console-mfa-tab")
    console.context.close()


def test_screenshot_of_the_federated_pages(world: Any, page: Any, shots: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The federated sign-in page, and a federated sign-in link from an agent with the page it
    ends on, through a local OpenID provider (allow-listed on 127.0.0.1)."""
    from urllib.parse import urlsplit

    from integrations.fakes.oidc import FakeOpenIDProvider
    from tests.factories import LONG_AGO
    from tests.oidc_flow import channel_of, register_provider, send_link
    from tests.recovery_steps import messages, open_case, state

    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")
    with FakeOpenIDProvider(subject="00u-kim-0001", interactive=True) as provider:
        c = cast(world, tenant_name="Acme Corp", display_name="Kim Lee",
                 federated=[(provider.issuer, provider.subject, LONG_AGO)])
        register_provider(world.app, c.tenant, provider, name="Acme SSO")
        page.goto(f"/t/{c.tenant.slug}/signin/federated")
        _shoot(page, shots, "federated-signin")

        case_id = open_case(world, c)
        # The development outbox may already hold links from earlier tests of this process (an
        # xdist worker runs several files): wait for this one, the newest.
        before = len(messages(world, "federated-link:"))
        r = send_link(world.client, c.agent, case_id, channel_of(world.app, c.user, "email"))
        assert r.status_code == 200, r.json
        sent = world.settle(lambda: messages(world, "federated-link:")[before:], "the link sent by the worker")
        link = next(word for word in sent[-1]["body"].split() if "/links/federated/" in word)
        page.goto(urlsplit(link).path)
        _shoot(page, shots, "federated-link")
        page.get_by_role("button", name="Sign in with Acme SSO").click()
        page.get_by_role("heading", name="Test identity provider").wait_for()
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Thank you, your sign-in is confirmed").wait_for()
        _shoot(page, shots, "federated-done")
    assert state(world, case_id, c.agent) == "verified"
