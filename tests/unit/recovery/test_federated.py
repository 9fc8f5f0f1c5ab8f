"""Federated evidence is something Rekey saw (issue 8, item 5), against a real local OpenID
provider over HTTP and PostgreSQL: the agent sends a single-use link to a channel on file, the
user signs in at the provider, and only a sign-in whose ID token passes every check records
`federated_signin` evidence, as the system. The attacks come first."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.extensions import db
from integrations.fakes.oidc import new_signing_key
from tests.casework import case_events, case_row, error_of, evidence_of, open_case
from tests.oidc_flow import (
    at_provider,
    channel_of,
    link_path,
    local_provider,
    register_provider,
    send_link,
    sign_in_via_link,
    to_provider,
)
from tests.webpages import assert_page

LONG_AGO = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
VIDEO = {"result": "match", "matched_against": "hr_photo", "reference": "VID-2211"}


@pytest.fixture
def fake_oidc(monkeypatch):
    with local_provider(monkeypatch) as provider:
        yield provider


@pytest.fixture
def linked(app, client, factory, fake_oidc, pg):
    """A tenant with the fake provider registered, a user linked to it long ago, an open case
    awaiting verification, and an agent."""
    tenant = factory.tenant()
    register_provider(app, tenant, fake_oidc)
    user = factory.settled_user(tenant, password=None, federated=[(fake_oidc.issuer, fake_oidc.subject, LONG_AGO)])
    opened = open_case(factory, client, tenant=tenant, user=user)
    assert case_row(app, opened.case_id).state == "awaiting_verification"
    agent = factory.agent(tenant)
    return opened, agent


def _link(app, client, factory, dev_outbox, opened, agent, kind="phone"):
    r = send_link(client, agent, opened.case_id, channel_of(app, opened.user, kind))
    assert r.status_code == 200, r.json
    return link_path(factory, dev_outbox)


def _refused(page, reason_words):
    text = assert_page(page, 422)
    assert reason_words.lower() in text.lower(), text
    return text


def _no_federated_evidence(app, case_id):
    assert [e for e in evidence_of(app, case_id) if e.type == "federated_signin" and e.accepted] == []
    assert case_row(app, case_id).state == "awaiting_verification"


class TestAttacks:
    def test_agent_can_no_longer_type_federated_evidence(self, app, client, linked, fake_oidc):
        opened, agent = linked

        r = client.post(f"/v1/admin/cases/{opened.case_id}/evidence", headers=agent.headers,
                        json={"type": "federated_signin", "reason": "user said so",
                              "details": {"issuer": fake_oidc.issuer, "subject": fake_oidc.subject,
                                          "signed_in_at": datetime.now(UTC).isoformat()}})

        assert r.status_code == 422, r.json
        error = error_of(r)
        assert error["code"] == "unacceptable_evidence"
        assert "recorded by the system" in error["message"] and "observed" in error["message"]
        _no_federated_evidence(app, opened.case_id)
        assert len(case_events(app, opened.case_id, "recovery.evidence_rejected")) == 1

    @pytest.mark.parametrize("tamper, reason", [
        ({"nonce": "a-nonce-from-another-sign-in"}, "bad_nonce"),
        ({"nonce": None}, "bad_nonce"),
        ({"aud": "some-other-client"}, "bad_aud"),
        ({"aud": ["some-other-client", "rekey-test-client"]}, "bad_aud"),  # several audiences, no azp
        ({"iss": "https://evil.example"}, "bad_iss"),
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, "expired"),
        ({"auth_time": None}, "bad_auth_time"),
    ])
    def test_a_wrong_id_token_records_nothing(self, app, client, factory, dev_outbox, linked, fake_oidc, tamper,
                                              reason):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        fake_oidc.tamper(**tamper)

        _refused(sign_in_via_link(client, path), "ID token")

        _no_federated_evidence(app, opened.case_id)
        [refusal] = case_events(app, opened.case_id, "auth.federated_signin_refused")
        assert refusal.actor_type == "system" and refusal.details["reason"] == reason
        [rejected] = [e for e in evidence_of(app, opened.case_id) if e.type == "federated_signin"]
        assert rejected.accepted is False and rejected.recorded_by_type == "system"

    def test_a_token_signed_by_another_key_records_nothing(self, app, client, factory, dev_outbox, linked,
                                                           fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        fake_oidc.tamper(sign_with=new_signing_key(kid=fake_oidc.key.kid))  # same kid, the attacker's key

        _refused(sign_in_via_link(client, path), "signature")

        _no_federated_evidence(app, opened.case_id)
        [refusal] = case_events(app, opened.case_id, "auth.federated_signin_refused")
        assert refusal.details["reason"] == "bad_signature"

    def test_a_sign_in_from_before_the_link_was_issued_records_nothing(self, app, client, factory, dev_outbox,
                                                                        linked, fake_oidc):
        # An old session at the provider (max_age ignored) proves nothing about who holds it now.
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        fake_oidc.tamper(auth_time=int(time.time()) - 3600)

        _refused(sign_in_via_link(client, path), "before")

        _no_federated_evidence(app, opened.case_id)
        [refusal] = case_events(app, opened.case_id, "auth.federated_signin_refused")
        assert refusal.details["reason"] == "auth_time_too_early"

    def test_a_subject_not_linked_to_the_user_records_nothing(self, app, client, factory, dev_outbox, linked,
                                                              fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        fake_oidc.subject = "00u-the-attacker"  # signs in at the same provider as someone else

        _refused(sign_in_via_link(client, path), "not the one linked")

        _no_federated_evidence(app, opened.case_id)
        assert case_events(app, opened.case_id, "auth.federated_signin_refused")[0].details["reason"] == "not_linked"

    def test_an_identity_linked_after_the_case_opened_records_nothing(self, app, client, factory, dev_outbox,
                                                                      linked, fake_oidc):
        from app.accounts.models import FederatedIdentity

        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        with app.app_context():  # the attacker links their own identity while the case is open
            identity = db.session.scalars(select(FederatedIdentity).where(
                FederatedIdentity.user_id == opened.user.id)).one()
            identity.linked_at = datetime.now(UTC)
            db.session.commit()

        _refused(sign_in_via_link(client, path), "after the request")

        _no_federated_evidence(app, opened.case_id)
        [refusal] = case_events(app, opened.case_id, "auth.federated_signin_refused")
        assert refusal.details["reason"] == "linked_after_case_opened"

    def test_no_link_for_an_identity_linked_after_the_case_opened(self, app, client, factory, fake_oidc, pg):
        tenant = factory.tenant()
        register_provider(app, tenant, fake_oidc)
        user = factory.settled_user(tenant, password=None,
                                    federated=[(fake_oidc.issuer, fake_oidc.subject, datetime.now(UTC)
                                                + timedelta(minutes=1))])
        opened = open_case(factory, client, tenant=tenant, user=user)

        r = send_link(client, factory.agent(tenant), opened.case_id, channel_of(app, user))

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "no_linked_identity"

    def test_a_replayed_link_is_refused(self, app, client, factory, dev_outbox, linked, fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        first = to_provider(client, path)
        assert first.status_code == 303

        again_page = client.get(path)
        again = client.post(path, data={"csrf_token": "x" * 64})

        assert_page(again_page, 404)
        assert again.status_code in (403, 404)
        from tests.webpages import form_token  # a real token for this browser: still the link is used up

        token = form_token(client.get(f"/t/{opened.tenant.slug}/signin/federated"))
        assert_page(client.post(path, data={"csrf_token": token}), 404)

    def test_a_replayed_callback_is_refused(self, app, client, factory, dev_outbox, linked, fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        started = to_provider(client, path)
        callback = at_provider(started.headers["Location"])
        assert client.get(callback).status_code == 200

        _refused(client.get(callback), "already used")

        assert len([e for e in evidence_of(app, opened.case_id) if e.accepted]) == 1

    def test_a_wrong_state_is_refused(self, app, client, factory, dev_outbox, linked, fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        started = to_provider(client, path)
        callback = at_provider(started.headers["Location"])
        forged = callback.replace("state=", "state=X")

        _refused(client.get(forged), "not known")

        _no_federated_evidence(app, opened.case_id)

    def test_a_callback_opened_in_another_browser_is_refused(self, app, factory, dev_outbox, linked, fake_oidc):
        # Login CSRF: the attacker starts a flow and lures the victim's browser to its callback.
        opened, agent = linked
        attacker, victim = app.test_client(), app.test_client()
        path = _link(app, attacker, factory, dev_outbox, opened, agent)
        started = to_provider(attacker, path)
        callback = at_provider(started.headers["Location"])

        _refused(victim.get(callback), "another browser")
        _refused(attacker.get(callback), "already used")  # the flow was used up by the refusal

        _no_federated_evidence(app, opened.case_id)

    def test_another_tenants_link_is_not_found(self, app, client, factory, dev_outbox, linked, fake_oidc):
        opened, agent = linked
        other = factory.tenant()
        path = _link(app, client, factory, dev_outbox, opened, agent)
        foreign = path.replace(f"/t/{opened.tenant.slug}/", f"/t/{other.slug}/")

        assert_page(client.get(foreign), 404)
        assert_page(client.get(path), 200)  # untouched: still usable in its own tenant

    def test_another_tenants_identity_does_not_verify(self, app, client, factory, dev_outbox, fake_oidc, pg):
        # Tenant B links the same issuer and subject to its own user; tenant A's user is not linked.
        tenant_a, tenant_b = factory.tenant(), factory.tenant()
        register_provider(app, tenant_a, fake_oidc)
        register_provider(app, tenant_b, fake_oidc)
        factory.settled_user(tenant_b, password=None, federated=[(fake_oidc.issuer, fake_oidc.subject, LONG_AGO)])
        user_a = factory.settled_user(tenant_a, password=None, federated=[(fake_oidc.issuer, "00u-a", LONG_AGO)])
        opened = open_case(factory, client, tenant=tenant_a, user=user_a)
        path = _link(app, client, factory, dev_outbox, opened, factory.agent(tenant_a))

        _refused(sign_in_via_link(client, path), "not the one linked")

        _no_federated_evidence(app, opened.case_id)

    def test_a_link_goes_only_to_a_channel_on_file_before_the_case(self, app, client, factory, fake_oidc, pg):
        tenant = factory.tenant()
        register_provider(app, tenant, fake_oidc)
        user = factory.settled_user(tenant, password=None, phones=[("+14155550123", datetime.now(UTC))],
                                    federated=[(fake_oidc.issuer, fake_oidc.subject, LONG_AGO)])
        opened = open_case(factory, client, tenant=tenant, user=user, screen=False)
        factory.run_screen(opened.case_id)
        agent = factory.agent(tenant)
        senior = factory.agent(tenant, "senior_admin")
        if case_row(app, opened.case_id).state == "escalated":  # a phone added today is a recent change
            client.post(f"/v1/admin/cases/{opened.case_id}/actions/resume", headers=senior.headers,
                        json={"reason": "checked"})

        r = send_link(client, agent, opened.case_id, channel_of(app, user, "phone"))
        unknown = send_link(client, agent, opened.case_id, str(uuid.uuid4()))

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "channel_too_new"
        assert unknown.status_code == 404


class TestObservedSignin:
    def test_a_verified_sign_in_is_recorded_by_the_system_and_verifies(self, app, client, factory, dev_outbox,
                                                                       linked, fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent, kind="email")

        page = sign_in_via_link(client, path)

        assert "your sign-in is confirmed" in assert_page(page, 200).lower()
        assert page.headers["Referrer-Policy"] == "no-referrer"
        case = case_row(app, opened.case_id)
        assert case.state == "verified"
        [evidence] = [e for e in evidence_of(app, opened.case_id) if e.accepted]
        assert (evidence.type, evidence.recorded_by_type) == ("federated_signin", "system")
        assert evidence.details["issuer"] == fake_oidc.issuer
        # The subject is never copied into the case or the audit trail.
        assert fake_oidc.subject not in str(evidence.details)
        [recorded] = case_events(app, opened.case_id, "recovery.evidence_recorded")
        assert recorded.actor_type == "system" and fake_oidc.subject not in str(recorded.details)
        [sent] = case_events(app, opened.case_id, "recovery.federated_link_sent")
        assert sent.actor_id == str(agent.agent.id) and sent.details["channel_kind"] == "email"
        # What the provider was asked for: a fresh sign-in, PKCE S256, a nonce.
        [authorize] = [r for r in fake_oidc.requests if r.path == "/authorize"]
        assert authorize.query["prompt"] == ["login"] and authorize.query["max_age"] == ["0"]
        assert authorize.query["code_challenge_method"] == ["S256"] and authorize.query["nonce"][0]
        # Nothing in the database builds the link or repeats the flow.
        from app.federation.models import FederatedSignin

        with app.app_context():
            row = db.session.scalars(select(FederatedSignin).where(
                FederatedSignin.case_id == uuid.UUID(opened.case_id))).one()
            assert (row.link_sealed, row.nonce_sealed, row.verifier_sealed) == (None, None, None)
            assert row.result == "verified" and path.rsplit("/", 1)[1] not in str(row.__dict__)

    def test_the_link_page_changes_nothing_when_only_fetched(self, app, client, factory, dev_outbox, linked,
                                                             fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)

        for _ in range(3):  # a mail scanner, a link preview, the user
            text = assert_page(client.get(path), 200)

        assert "Acme SSO" in text
        assert [r for r in fake_oidc.requests if r.path == "/authorize"] == []
        assert "your sign-in is confirmed" in assert_page(sign_in_via_link(client, path), 200).lower()

    def test_a_privileged_user_one_agent_plus_the_system_is_two_people(self, app, client, factory, dev_outbox,
                                                                      fake_oidc, pg):
        tenant = factory.tenant()
        register_provider(app, tenant, fake_oidc)
        user = factory.settled_user(tenant, password=None, privileged=True,
                                    federated=[(fake_oidc.issuer, fake_oidc.subject, LONG_AGO)])
        opened = open_case(factory, client, tenant=tenant, user=user)
        senior = factory.agent(tenant, "senior_admin")
        client.post(f"/v1/admin/cases/{opened.case_id}/actions/resume", headers=senior.headers,
                    json={"reason": "privileged user, expected"})
        r = client.post(f"/v1/admin/cases/{opened.case_id}/evidence", headers=senior.headers,
                        json={"type": "video_call", "details": VIDEO, "reason": "video call"})
        assert r.status_code == 201 and case_row(app, opened.case_id).state == "awaiting_verification"

        path = _link(app, client, factory, dev_outbox, opened, senior)
        assert_page(sign_in_via_link(client, path), 200)

        assert case_row(app, opened.case_id).state == "verified"
        [verified] = case_events(app, opened.case_id, "recovery.verified")
        assert verified.details["types"] == ["federated_signin", "video_call"]

    def test_a_link_sent_before_a_refusal_verifies_nothing_after_a_reopen(self, app, client, factory, dev_outbox,
                                                                          linked, fake_oidc):
        opened, agent = linked
        path = _link(app, client, factory, dev_outbox, opened, agent)
        senior = factory.agent(opened.tenant, "senior_admin")
        for action in ("refuse", "reopen"):
            r = client.post(f"/v1/admin/cases/{opened.case_id}/actions/{action}", headers=senior.headers,
                            json={"reason": "second look", "trigger": "agent_judgement"} if action == "refuse"
                            else {"reason": "second look"})
            assert r.status_code == 200, r.json

        started = to_provider(client, path)

        assert_page(started, 404)
        _no_federated_evidence(app, opened.case_id)
