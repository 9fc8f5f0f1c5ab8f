"""Browser sessions for end users (issue 9, "web security"): the cookie carries only an opaque
token for a revocable server-side session, rotated at sign-in, ended by idling, by its absolute
lifetime, by sign-out and by everything that revokes a user's sessions (a force reset, a
suspension); a restricted session after a reset reaches only enrolment pages."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from app.accounts.models import UserSession
from app.extensions import db, utcnow
from tests.factories import PASSWORD
from tests.webpages import assert_page, main_text, set_cookie_header

pytestmark = pytest.mark.usefixtures("cached_password_hashes")
COOKIE = "__Host-rekey_session"  # Secure outside development, so prefixed


def _csrf(page: Any) -> str:
    found = re.search(r"([0-9a-f]{64})", main_text(page))
    assert found, main_text(page)
    return found.group(1)


def _signin(client: Any, tenant: Any, user: Any, password: str = PASSWORD) -> Any:
    form = client.get(f"/t/{tenant.slug}/probe/form")
    return client.post(f"/t/{tenant.slug}/probe/signin",
                       data={"csrf_token": _csrf(form), "email": user.email, "password": password})


def _session_row(app: Any, token: str) -> UserSession:
    from app.crypto import token_digest

    with app.app_context():
        row = db.session.scalars(select(UserSession).where(UserSession.digest == token_digest(token))).one()
        db.session.expunge(row)
        return row


def _cookie(client: Any) -> str | None:
    found = client.get_cookie(COOKIE)
    return found.value if found else None


def _set_row(app: Any, token: str, **values: Any) -> None:
    from app.crypto import token_digest

    with app.app_context():
        db.session.execute(update(UserSession).where(UserSession.digest == token_digest(token)).values(**values))
        db.session.commit()


@pytest.fixture
def people(factory: Any) -> Any:
    from types import SimpleNamespace

    tenant = factory.tenant()
    return SimpleNamespace(tenant=tenant, user=factory.user(tenant))


def _signed_in(probe_app: Any, people: Any) -> tuple[Any, str]:
    client = probe_app.test_client()
    answer = _signin(client, people.tenant, people.user)
    assert "signed in enrolment_required" in assert_page(answer, 200)
    token = _cookie(client)
    assert token
    return client, token


def test_signin_sets_an_opaque_session_cookie_with_strict_flags(probe_app: Any, people: Any) -> None:
    client = probe_app.test_client()
    answer = _signin(client, people.tenant, people.user)
    header = set_cookie_header(answer, COOKIE)
    token = header.split(";")[0].split("=", 1)[1]
    assert re.fullmatch(r"rk_web_[A-Za-z0-9_-]{43}", token)  # random; nothing about the user inside
    attributes = {part.strip().lower() for part in header.split(";")[1:]}
    assert {"httponly", "secure", "path=/", "samesite=lax"} <= attributes
    assert not any(a.startswith(("domain", "max-age", "expires")) for a in attributes)
    row = _session_row(probe_app, token)
    assert (row.kind, row.scope, row.user_id) == ("browser", "restricted", people.user.id)
    assert row.last_seen_at is not None and row.revoked_at is None


def test_development_cookies_are_not_secure_and_not_prefixed(dev_probe_app: Any, people: Any) -> None:
    client = dev_probe_app.test_client()
    answer = _signin(client, people.tenant, people.user)
    header = set_cookie_header(answer, "rekey_session")
    attributes = {part.strip().lower() for part in header.split(";")[1:]}
    assert "secure" not in attributes and {"httponly", "samesite=lax"} <= attributes


def test_signed_in_page_knows_the_user_and_signed_out_goes_to_signin(probe_app: Any, people: Any) -> None:
    anonymous = probe_app.test_client()
    answer = anonymous.get(f"/t/{people.tenant.slug}/probe/whoami")
    assert answer.status_code == 303
    assert answer.headers["Location"] == (f"/t/{people.tenant.slug}/signin"
                                          f"?next=/t/{people.tenant.slug}/probe/whoami")
    client, _ = _signed_in(probe_app, people)
    assert main_text(client.get(f"/t/{people.tenant.slug}/probe/enrol")).endswith("enrol restricted")


def test_restricted_session_reaches_only_enrolment_pages(probe_app: Any, people: Any) -> None:
    client, _ = _signed_in(probe_app, people)  # no factor yet: the session is enrol-only
    text = assert_page(client.get(f"/t/{people.tenant.slug}/probe/whoami"), 403)
    assert "only set up a sign-in factor" in text


def test_full_session_reaches_every_page(probe_app: Any, factory: Any, totp_clock: Any) -> None:
    import pyotp

    from tests.flows import enrol_totp

    tenant = factory.tenant()
    user = factory.user(tenant)
    secret = enrol_totp(probe_app, user, totp_clock)
    client = probe_app.test_client()
    totp_clock.advance()
    form = client.get(f"/t/{tenant.slug}/probe/form")
    answer = client.post(f"/t/{tenant.slug}/probe/signin", data={
        "csrf_token": _csrf(form), "email": user.email, "password": PASSWORD,
        "otp": pyotp.TOTP(secret).at(totp_clock.time())})
    assert "signed in ok" in main_text(answer)
    assert main_text(client.get(f"/t/{tenant.slug}/probe/whoami")).endswith(f"{user.email} full")


def test_signin_rotates_the_session_and_a_planted_cookie_is_worthless(probe_app: Any, people: Any) -> None:
    client, first = _signed_in(probe_app, people)
    # Session fixation: an attacker who planted their own cookie value gains nothing at sign-in.
    client.set_cookie(COOKIE, "rk_web_" + "A" * 43)
    _signin(client, people.tenant, people.user)
    second = _cookie(client)
    assert second not in (first, "rk_web_" + "A" * 43)
    # Signing in again revokes the session the browser held before.
    client.set_cookie(COOKIE, first)
    _signin(client, people.tenant, people.user)
    assert _session_row(probe_app, first).revoked_at is not None
    replay = probe_app.test_client()
    replay.set_cookie(COOKIE, first)
    assert replay.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303


def test_csrf_token_from_before_signin_is_refused_after_it(probe_app: Any, people: Any) -> None:
    client = probe_app.test_client()
    before = _csrf(client.get(f"/t/{people.tenant.slug}/probe/form"))
    answer = client.post(f"/t/{people.tenant.slug}/probe/signin",
                         data={"csrf_token": before, "email": people.user.email, "password": PASSWORD})
    after = _csrf(answer)  # the page rendered at sign-in already carries the new session's token
    assert after != before
    enrol = f"/t/{people.tenant.slug}/probe/enrol"
    assert_page(client.post(enrol, data={"csrf_token": before}), 403)
    assert main_text(client.post(enrol, data={"csrf_token": after})).endswith("posted")


def test_idle_session_ends_and_use_keeps_it_alive(probe_app: Any, people: Any, monkeypatch: Any) -> None:
    settings = probe_app.extensions["rekey.settings"]
    monkeypatch.setitem(probe_app.extensions, "rekey.settings", replace(settings, web_idle_timeout_seconds=600))
    client, token = _signed_in(probe_app, people)
    enrol = f"/t/{people.tenant.slug}/probe/enrol"
    _set_row(probe_app, token, last_seen_at=utcnow() - timedelta(seconds=590))
    assert client.get(enrol).status_code == 200  # used within the idle timeout...
    assert _session_row(probe_app, token).last_seen_at > utcnow() - timedelta(seconds=30)  # ...which restarts
    _set_row(probe_app, token, last_seen_at=utcnow() - timedelta(seconds=601))
    assert client.get(enrol).status_code == 303


def test_absolute_lifetime_ends_a_busy_session(probe_app: Any, people: Any) -> None:
    client, token = _signed_in(probe_app, people)
    _set_row(probe_app, token, expires_at=utcnow() - timedelta(seconds=1))
    assert client.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303


@pytest.mark.parametrize("how", ["force_reset", "suspension"])
def test_reset_or_suspension_ends_browser_sessions(probe_app: Any, people: Any, how: str) -> None:
    from app.accounts.models import User
    from app.accounts.services import revoke_sessions
    from app.recovery.actions import reset_factors

    client, token = _signed_in(probe_app, people)
    with probe_app.app_context():
        user = db.session.get(User, people.user.id)
        if how == "force_reset":
            reset_factors(user)
        else:  # what a suspension does to the user (app.recovery.closing)
            user.status = "suspended"
            revoke_sessions(user.id)
        db.session.commit()
    assert client.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303
    assert _session_row(probe_app, token).revoked_at is not None


def test_suspended_user_is_signed_out_even_before_revocation(probe_app: Any, people: Any) -> None:
    from app.accounts.models import User

    client, _ = _signed_in(probe_app, people)
    with probe_app.app_context():
        db.session.get(User, people.user.id).status = "suspended"
        db.session.commit()
    assert client.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303


def test_signout_revokes_the_session_and_clears_the_cookie(probe_app: Any, people: Any) -> None:
    client, token = _signed_in(probe_app, people)
    form = client.get(f"/t/{people.tenant.slug}/probe/form")
    answer = client.post(f"/t/{people.tenant.slug}/probe/signout", data={"csrf_token": _csrf(form)})
    assert answer.status_code == 303
    assert "max-age=0" in set_cookie_header(answer, COOKIE).lower()
    assert _session_row(probe_app, token).revoked_at is not None
    replay = probe_app.test_client()
    replay.set_cookie(COOKIE, token)
    assert replay.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303


def test_signout_without_csrf_token_is_refused(probe_app: Any, people: Any) -> None:
    client, token = _signed_in(probe_app, people)
    assert_page(client.post(f"/t/{people.tenant.slug}/probe/signout"), 403)
    assert _session_row(probe_app, token).revoked_at is None


def test_session_of_another_tenant_is_no_session_there(probe_app: Any, people: Any, factory: Any) -> None:
    client, _ = _signed_in(probe_app, people)
    other = factory.tenant()
    assert client.get(f"/t/{other.slug}/probe/enrol").status_code == 303
    assert client.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 200


def test_browser_and_api_tokens_each_work_only_at_their_own_door(probe_app: Any, people: Any) -> None:
    from tests.flows import session_token

    client, browser_token = _signed_in(probe_app, people)
    api = probe_app.test_client()
    answer = api.post("/v1/auth/enrol/totp", headers={"Authorization": f"Bearer {browser_token}"})
    assert answer.status_code == 401  # a copied cookie would escape the idle timeout there
    api_token = session_token(probe_app, people.user, scope="restricted")
    cookie_only = probe_app.test_client()
    cookie_only.set_cookie(COOKIE, api_token)
    assert cookie_only.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303


@pytest.mark.parametrize("value", ["x" * 4000, "rk_web_\x00abc", "rk_web_é", ""],
                         ids=["huge", "nul", "non-ascii", "empty"])
def test_hostile_session_cookie_is_simply_signed_out(probe_app: Any, people: Any, value: str) -> None:
    client = probe_app.test_client()
    client.set_cookie(COOKIE, value)
    assert client.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303


@pytest.mark.parametrize("target, allowed", [
    ("/t/{slug}/account", True),
    ("/t/{slug}/enrol?step=2", True),
    ("//evil.example/t/{slug}/", False),
    ("https://evil.example/t/{slug}/", False),
    ("/t/{slug}/..//evil.example", False),
    ("/t/{slug}/\\evil.example", False),
    ("/t/other-tenant/account", False),
    ("/v1/admin/cases", False),
    ("/t/{slug}/\x00", False),
])
def test_return_address_after_signin_stays_on_this_tenants_pages(probe_app: Any, people: Any, target: str,
                                                                 allowed: bool) -> None:
    from urllib.parse import quote

    target = target.format(slug=people.tenant.slug)
    client = probe_app.test_client()
    text = main_text(client.get(f"/t/{people.tenant.slug}/probe/next?next={quote(target)}"))
    assert text.endswith(repr(target) if allowed else "None"), text


def test_unknown_session_token_writes_nothing(probe_app: Any, people: Any) -> None:
    from tests.webpages import assert_same_database, database_state

    client = probe_app.test_client()
    client.set_cookie(COOKIE, "rk_web_" + uuid.uuid4().hex)
    before = database_state(probe_app)
    assert client.get(f"/t/{people.tenant.slug}/probe/enrol").status_code == 303
    assert_same_database(before, database_state(probe_app))
