"""The federated sign-in page (issue 9): "Sign in with <provider>" for the tenant's identity
providers. A user whose identity is linked signs in at a real local OpenID provider and gets a
restricted, enrol-only browser session, then is sent to enrolment; on a case awaiting
verification the same sign-in is recorded as federated evidence by the system, and the
enrolment that follows closes the case. Flask's test client is the browser here
(tests/browser runs it in Chromium once the enrolment page exists)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pyotp
import pytest
from sqlalchemy import select

from app.extensions import db
from tests.casework import case_events, case_row, evidence_of, open_case
from tests.oidc_flow import at_provider, local_provider, register_provider, to_provider
from tests.webpages import assert_page, form_token

LONG_AGO = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
SESSION_COOKIE = "__Host-rekey_session"  # Secure outside development, so prefixed


@pytest.fixture
def op(monkeypatch):
    with local_provider(monkeypatch) as provider:
        yield provider


@pytest.fixture
def tenant(app, factory, op, pg):
    tenant = factory.tenant()
    register_provider(app, tenant, op, name="Acme SSO")
    return tenant


def _sign_in(client, tenant, provider_id=None):
    page = client.get(f"/t/{tenant.slug}/signin/federated")
    if provider_id is None:
        provider_id = page.get_data(as_text=True).split('name="provider_id" value="', 1)[1].split('"', 1)[0]
    started = client.post(f"/t/{tenant.slug}/signin/federated",
                          data={"csrf_token": form_token(page), "provider_id": provider_id})
    if started.status_code != 303:
        return started
    return client.get(at_provider(started.headers["Location"]))


def _browser_sessions(app, user):
    from app.accounts.models import UserSession

    with app.app_context():
        rows = db.session.scalars(select(UserSession).where(UserSession.user_id == user.id,
                                                            UserSession.kind == "browser")).all()
        return [(s.scope, s.revoked_at) for s in rows]


def test_the_page_lists_the_tenants_providers(client, tenant, factory):
    text = assert_page(client.get(f"/t/{tenant.slug}/signin/federated"), 200)
    bare = assert_page(client.get(f"/t/{factory.tenant().slug}/signin/federated"), 200)

    assert "Sign in with Acme SSO" in text
    assert "Acme SSO" not in bare and "not set up" in bare


def test_a_linked_user_gets_an_enrol_only_session_and_goes_to_enrolment(app, client, tenant, factory, op):
    user = factory.settled_user(tenant, password=None, federated=[(op.issuer, op.subject, LONG_AGO)])

    answer = _sign_in(client, tenant)

    assert answer.status_code == 303, answer.get_data(as_text=True)[:300]
    assert answer.headers["Location"].endswith(f"/t/{tenant.slug}/enrol")
    assert any(h.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in h
               for h in answer.headers.getlist("Set-Cookie"))
    assert _browser_sessions(app, user) == [("restricted", None)]
    with app.app_context():
        from app.audit.models import AuditEvent

        [event] = db.session.scalars(select(AuditEvent).where(
            AuditEvent.target_user_id == user.id, AuditEvent.action == "auth.signin_succeeded")).all()
        assert (event.actor_type, event.details["method"], event.details["session_scope"]) == (
            "user", "oidc", "restricted")
        assert op.subject not in str(event.details)


def test_on_an_open_case_the_sign_in_is_evidence_and_the_enrolment_closes_the_case(app, client, tenant, factory,
                                                                                   op):
    from app.accounts.mfa import confirm_totp_enrolment, start_totp_enrolment
    from app.accounts.models import User
    from app.actor import Actor

    user = factory.settled_user(tenant, password=None, federated=[(op.issuer, op.subject, LONG_AGO)])
    opened = open_case(factory, client, tenant=tenant, user=user)

    assert _sign_in(client, tenant).status_code == 303

    assert case_row(app, opened.case_id).state == "verified"
    [evidence] = [e for e in evidence_of(app, opened.case_id) if e.accepted]
    assert (evidence.type, evidence.recorded_by_type, evidence.details["via"]) == ("federated_signin", "system",
                                                                                    "signin")
    # What the enrolment page does with this session: the user binds a new factor themselves.
    with app.app_context():
        me = db.session.get(User, user.id)
        actor = Actor(type="user", id=str(user.id), tenant_id=tenant.id, ip="192.0.2.50")
        _, secret, _ = start_totp_enrolment(actor, me, issuer="Rekey")
        confirm_totp_enrolment(actor, me, pyotp.TOTP(secret).now())
        db.session.commit()
    assert case_row(app, opened.case_id).state == "recovered"
    assert case_events(app, opened.case_id, "mfa.factor_admin_reset") == []


def test_an_identity_not_linked_gets_no_session(app, client, tenant, factory, op):
    user = factory.settled_user(tenant, password=None, federated=[(op.issuer, "00u-someone-else", LONG_AGO)])

    answer = _sign_in(client, tenant)

    assert "No account here is linked" in assert_page(answer, 422)
    assert not [h for h in answer.headers.getlist("Set-Cookie") if h.startswith(f"{SESSION_COOKIE}=")]
    assert _browser_sessions(app, user) == []


def test_a_suspended_user_gets_no_session(app, client, tenant, factory, op):
    from app.accounts.models import User

    user = factory.settled_user(tenant, password=None, federated=[(op.issuer, op.subject, LONG_AGO)])
    with app.app_context():
        db.session.get(User, user.id).status = "suspended"
        db.session.commit()

    assert "suspended" in assert_page(_sign_in(client, tenant), 422)
    assert _browser_sessions(app, user) == []


def test_an_identity_linked_during_an_open_case_gets_no_session(app, client, tenant, factory, op):
    user = factory.settled_user(tenant, password=None, federated=[(op.issuer, op.subject, LONG_AGO)])
    opened = open_case(factory, client, tenant=tenant, user=user)
    from app.accounts.models import FederatedIdentity

    with app.app_context():  # linked while the recovery is open: perhaps the requester's identity
        db.session.scalars(select(FederatedIdentity).where(FederatedIdentity.user_id == user.id)).one() \
            .linked_at = datetime.now(UTC)
        db.session.commit()

    assert "after a recovery request" in assert_page(_sign_in(client, tenant), 422)
    assert _browser_sessions(app, user) == []
    assert case_row(app, opened.case_id).state == "awaiting_verification"


def test_another_tenants_provider_cannot_be_started_here(app, client, tenant, factory, op):
    other = factory.tenant()
    foreign = register_provider(app, other, op, name="Other SSO")

    assert_page(_sign_in(client, tenant, provider_id=foreign), 404)
    assert_page(_sign_in(client, tenant, provider_id="not-a-uuid"), 404)
    assert [r for r in op.requests if r.path == "/authorize"] == []


def test_an_unreachable_provider_is_a_503_page_and_uses_nothing(app, client, tenant, op):
    from app.federation.models import FederatedSignin

    op.stop()

    text = assert_page(_sign_in(client, tenant), 503)

    assert "identity_provider_unavailable" in text and "Nothing was changed" in text
    with app.app_context():
        assert db.session.scalars(select(FederatedSignin).where(FederatedSignin.tenant_id == tenant.id)).all() == []


def test_the_sign_in_button_needs_the_csrf_token(client, tenant):
    started = client.post(f"/t/{tenant.slug}/signin/federated", data={"provider_id": str(uuid.uuid4())})

    assert_page(started, 403)


def test_a_link_for_evidence_cannot_be_used_as_a_sign_in(app, client, tenant, factory, op, dev_outbox):
    # A link's flow records evidence only; it never opens a session, whatever the user does.
    from tests.oidc_flow import channel_of, link_path, send_link

    user = factory.settled_user(tenant, password=None, federated=[(op.issuer, op.subject, LONG_AGO)])
    opened = open_case(factory, client, tenant=tenant, user=user)
    assert send_link(client, factory.agent(tenant), opened.case_id, channel_of(app, user)).status_code == 200
    started = to_provider(client, link_path(factory, dev_outbox))

    answer = client.get(at_provider(started.headers["Location"]))

    assert assert_page(answer, 200)
    assert _browser_sessions(app, user) == []
