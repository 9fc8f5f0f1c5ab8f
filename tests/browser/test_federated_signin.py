"""The runbook's federated path in a real browser (issue 9; issue 8, item 5): a user who lost their
authenticator but still has their organisation's identity signs in with it, at a local OpenID
provider (a real HTTP server signing RS256 ID tokens with its own key), on the tenant's federated
sign-in page; Rekey verifies the sign-in, records it on the open case as federated evidence (by
the system), gives an enrol-only session, and the user enrols a new factor themselves: no reset
by anyone, and the case is recovered and closed by the real worker.
"""

from __future__ import annotations

from typing import Any

import pyotp
import pytest

from integrations.fakes.oidc import FakeOpenIDProvider
from tests.factories import LONG_AGO
from tests.oidc_flow import register_provider
from tests.recovery_steps import audit, case, cast, open_case, state


def _heading(page: Any, text: str) -> None:
    page.get_by_role("heading", level=1, name=text).wait_for()


def _script_errors(page: Any) -> list[str]:
    return [e for e in page.console_errors
            if not e.startswith("Failed to load resource: the server responded with a status of 4")]


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The provider listens on 127.0.0.1: allow-listed for Rekey's outbound calls, as an operator
    # allow-lists an internal identity provider. The SSRF guard stays on for everything else.
    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")
    with FakeOpenIDProvider(subject="00u-ana-0001", interactive=True) as op:
        yield op


def test_a_linked_identity_signs_in_enrols_and_closes_the_case_without_a_reset(world: Any, page: Any,
                                                                               provider: Any) -> None:
    c = cast(world, federated=[(provider.issuer, provider.subject, LONG_AGO)])
    register_provider(world.app, c.tenant, provider, name="Acme SSO")
    case_id = open_case(world, c)
    assert case(world, case_id, c.agent)["recommended_path"]["path"] == "federated_signin"

    page.goto(f"/t/{c.tenant.slug}/signin/federated")
    _heading(page, "Sign in with your organisation's identity")
    page.get_by_role("button", name="Sign in with Acme SSO").click()
    # At the identity provider: a fresh sign-in (prompt=login), then back to Rekey's callback.
    page.get_by_role("heading", name="Test identity provider").wait_for()
    assert page.url.startswith(f"{provider.issuer}/authorize?")
    page.get_by_role("button", name="Sign in").click()
    _heading(page, "Set up a sign-in factor")
    assert page.url.endswith(f"/t/{c.tenant.slug}/enrol")

    # The sign-in was recorded as evidence, by the system, and verified the case.
    assert state(world, case_id, c.agent) == "verified"
    detail = case(world, case_id, c.agent)
    [evidence] = [e for e in detail["evidence"] if e["accepted"]]
    assert evidence["type"] == "federated_signin" and evidence["recorded_by_type"] == "system"
    # The enrol-only session reaches nothing else.
    assert page.goto(f"/t/{c.tenant.slug}/account").status == 403
    page.goto(f"/t/{c.tenant.slug}/enrol")

    page.get_by_role("button", name="Set up an authenticator app").click()
    _heading(page, "Set up an authenticator app")
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    world.handed_out.append(secret)
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Turn on the authenticator app").click()
    _heading(page, "Your new factor is set up")

    world.settle(lambda: state(world, case_id, c.agent) == "closed", "the case recovered and closed")
    assert audit(world, c.tenant, "mfa.factor_admin_reset", case_id) == []
    [signin] = [e for e in audit(world, c.tenant, "auth.signin_succeeded") if e.details.get("method") == "oidc"]
    assert (signin.details["session_scope"], signin.details["evidence_recorded"]) == ("restricted", True)
    [recorded] = audit(world, c.tenant, "recovery.evidence_recorded", case_id)
    assert recorded.actor_type == "system" and provider.subject not in str(recorded.details)
    assert [e.details["kind"] for e in audit(world, c.tenant, "mfa.factor_enrolled", case_id)] == ["totp"]
    assert _script_errors(page) == []


def test_an_identity_not_linked_to_any_account_gets_no_session(world: Any, page: Any, provider: Any) -> None:
    c = cast(world, federated=[(provider.issuer, "00u-ana-0001", LONG_AGO)])
    register_provider(world.app, c.tenant, provider, name="Acme SSO")
    provider.subject = "00u-someone-else"

    page.goto(f"/t/{c.tenant.slug}/signin/federated")
    page.get_by_role("button", name="Sign in with Acme SSO").click()
    page.get_by_role("heading", name="Test identity provider").wait_for()
    page.get_by_role("button", name="Sign in").click()

    page.get_by_text("No account here is linked to this identity.").wait_for()
    page.goto(f"/t/{c.tenant.slug}/enrol")  # no session: the sign-in page instead
    assert f"/t/{c.tenant.slug}/signin" in page.url
    [refused] = audit(world, c.tenant, "auth.federated_signin_refused")
    assert refused.details["reason"] == "not_linked"
