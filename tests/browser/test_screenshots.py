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
        r = send_link(world.client, c.agent, case_id, channel_of(world.app, c.user, "email"))
        assert r.status_code == 200, r.json
        sent = world.settle(lambda: messages(world, "federated-link:"), "the link sent by the worker")
        link = next(word for word in sent[-1]["body"].split() if "/links/federated/" in word)
        page.goto(urlsplit(link).path)
        _shoot(page, shots, "federated-link")
        page.get_by_role("button", name="Sign in with Acme SSO").click()
        page.get_by_role("heading", name="Test identity provider").wait_for()
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="Thank you, your sign-in is confirmed").wait_for()
        _shoot(page, shots, "federated-done")
    assert state(world, case_id, c.agent) == "verified"
