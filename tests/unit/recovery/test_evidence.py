"""Step 1 evidence: each acceptable type verifies a case under its conditions; the runbook's
unacceptable types are refused with its reason, and every refusal is audited even though
the request answers 422."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.recovery.evidence import REFUSED_TYPES
from tests.casework import attest, case_events, case_row, error_of, evidence_of, open_case

VIDEO = {"result": "match", "matched_against": "hr_photo", "reference": "VID-2211"}
ISSUER = "https://accounts.google.com"
LONG_AGO = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def _evidence(client, agent, case_id, type_, details=None, reason="identity check"):
    return client.post(f"/v1/admin/cases/{case_id}/evidence", headers=agent.headers,
                       json={"type": type_, "details": details or {}, "reason": reason})


def _resume(client, senior, case_id):
    r = client.post(f"/v1/admin/cases/{case_id}/actions/resume", headers=senior.headers,
                    json={"reason": "privileged user, expected"})
    assert r.status_code == 200, r.json


class TestAcceptable:
    @pytest.mark.parametrize("matched_against", ["hr_photo", "government_id"])
    def test_video_call_match_verifies(self, app, client, factory, matched_against):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)

        r = _evidence(client, agent, opened.case_id, "video_call",
                      {**VIDEO, "matched_against": matched_against}, reason="Video call, matched HR photo")

        assert r.status_code == 201, r.json
        assert r.json["accepted"] is True and r.json["details"]["reference"] == "VID-2211"
        case = case_row(app, opened.case_id)
        assert case.state == "verified" and case.verified_at is not None
        [recorded] = case_events(app, opened.case_id, "recovery.evidence_recorded")
        assert recorded.details["type"] == "video_call" and recorded.actor_id == str(agent.agent.id)
        [verified] = case_events(app, opened.case_id, "recovery.verified")
        assert verified.details["types"] == ["video_call"]

    @pytest.mark.parametrize("problem", ["none", "linked_after_case", "signed_in_before_case", "other_subject"])
    def test_federated_signin_typed_by_an_agent_is_refused(self, app, client, factory, problem):
        # Issue 8, item 5: an issuer, a subject and a time typed by an agent prove nothing (they are
        # on the user's own detail page), however well they match: only a sign-in Rekey observed
        # counts (tests/unit/recovery/test_federated.py runs it against a real OpenID provider).
        tenant = factory.tenant()
        user = factory.settled_user(tenant, password=None, federated=[(ISSUER, "sub-1", LONG_AGO)])
        opened = open_case(factory, client, tenant=tenant, user=user)
        agent = factory.agent(tenant)
        subject, signed_in = "sub-1", datetime.now(UTC)
        if problem == "signed_in_before_case":
            signed_in = case_row(app, opened.case_id).opened_at - timedelta(minutes=5)
        elif problem == "other_subject":
            subject = "sub-someone-else"

        r = _evidence(client, agent, opened.case_id, "federated_signin",
                      {"issuer": ISSUER, "subject": subject, "signed_in_at": signed_in.isoformat()})

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "unacceptable_evidence"
        assert "recorded by the system" in error_of(r)["message"]
        assert case_row(app, opened.case_id).state == "awaiting_verification"
        assert len(case_events(app, opened.case_id, "recovery.evidence_rejected")) == 1

    def test_agent_cannot_verify_their_own_account(self, app, client, factory):
        tenant = factory.tenant()
        agent = factory.agent(tenant)
        user = factory.settled_user(tenant, password=None, email=agent.agent.email)
        opened = open_case(factory, client, tenant=tenant, user=user)

        r = _evidence(client, agent, opened.case_id, "video_call", VIDEO)

        assert r.status_code == 403, r.json
        assert error_of(r)["code"] == "own_account"
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_hr_attestation_from_the_tenants_hr_integration_verifies(self, app, client, factory):
        opened = open_case(factory, client)
        hr, hr_secret = factory.integration(opened.tenant, kind="hr")

        r = attest(client, hr, hr_secret, user_email=opened.user.email, voucher="manager@example.com",
                   relation="manager", reference="HR-4711")

        assert r.status_code == 202, r.json
        assert r.json == {"case_id": opened.case_id, "status": "verified"}
        [evidence] = evidence_of(app, opened.case_id)
        assert evidence.accepted and evidence.type == "hr_attestation"
        assert evidence.details["voucher_email"] == "manager@example.com"
        assert evidence.recorded_by_type == "integration" and evidence.recorded_by_id == str(hr.id)

    def test_hr_attestation_may_name_the_case(self, app, client, factory):
        opened = open_case(factory, client)
        hr, hr_secret = factory.integration(opened.tenant, kind="hr")

        r = attest(client, hr, hr_secret, case_id=opened.case_id, voucher="people-ops@example.com", relation="hr")

        assert r.status_code == 202, r.json
        assert case_row(app, opened.case_id).state == "verified"


class TestUnacceptable:
    @pytest.mark.parametrize("type_", [*REFUSED_TYPES, "carrier_pigeon"])
    def test_unacceptable_type_is_refused_with_the_reason_and_audited(self, app, client, factory, type_):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)

        r = _evidence(client, agent, opened.case_id, type_, {"note": "they knew the answers"},
                      reason="user insisted")

        assert r.status_code == 422, r.json
        error = error_of(r)
        assert error["code"] == "unacceptable_evidence"
        expected = REFUSED_TYPES.get(type_, "Unknown evidence type; only out-of-band verification counts.")
        assert error["details"]["reason"] == expected
        # The 422 still committed the audit row and the rejected attempt.
        [event] = case_events(app, opened.case_id, "recovery.evidence_rejected")
        assert event.details == {"type": type_, "rejection": expected}
        assert (event.actor_id, event.reason) == (str(agent.agent.id), "user insisted")
        [kept] = evidence_of(app, opened.case_id)
        assert kept.accepted is False and kept.rejection_reason == expected
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_the_runbook_reasons_name_the_attack(self):
        assert "phishing" in REFUSED_TYPES["email_match"]
        assert "attackers" in REFUSED_TYPES["knowledge_based"]
        assert "compromised" in REFUSED_TYPES["recovery_email_code"]
        assert "stolen" in REFUSED_TYPES["chat_message"]

    @pytest.mark.parametrize("type_,details", [
        ("known_number_callback", {"phone": "+14155550100", "result": "code matched"}),
        ("hr_attestation", {"voucher_email": "manager@example.com", "relation": "manager"}),
    ])
    def test_system_only_type_entered_by_hand_is_refused(self, app, client, factory, type_, details):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)

        r = _evidence(client, agent, opened.case_id, type_, details)

        assert r.status_code == 422, r.json
        assert "not entered by hand" in error_of(r)["details"]["reason"]
        assert [e.action for e in case_events(app, opened.case_id)][-1] == "recovery.evidence_rejected"
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    @pytest.mark.parametrize("details", [
        {**VIDEO, "result": "no_match"},
        {**VIDEO, "result": "inconclusive"},
        {k: v for k, v in VIDEO.items() if k != "reference"},
        {**VIDEO, "reference": "   "},
        {**VIDEO, "matched_against": "linkedin_photo"},
    ], ids=["no_match", "inconclusive", "no_reference", "blank_reference", "unknown_source"])
    def test_video_call_that_did_not_verify_is_refused(self, app, client, factory, details):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)

        r = _evidence(client, agent, opened.case_id, "video_call", details)

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "unacceptable_evidence"
        assert len(case_events(app, opened.case_id, "recovery.evidence_rejected")) == 1
        assert case_row(app, opened.case_id).state == "awaiting_verification"


class TestPrivilegedUser:
    def test_one_type_is_not_enough_two_distinct_types_verify(self, app, client, factory):
        tenant = factory.tenant()  # default policy: privileged users need two independent types
        user = factory.settled_user(tenant, password=None, privileged=True,
                                    federated=[(ISSUER, "sub-vip", LONG_AGO)])
        opened = open_case(factory, client, tenant=tenant, user=user)
        agent = factory.agent(tenant)
        senior = factory.agent(tenant, "senior_admin")
        assert case_row(app, opened.case_id).flags == ["privileged"]
        _resume(client, senior, opened.case_id)

        first = _evidence(client, agent, opened.case_id, "video_call", VIDEO)
        same_type_again = _evidence(client, agent, opened.case_id, "video_call",
                                    {**VIDEO, "matched_against": "government_id", "reference": "VID-2"})

        assert (first.status_code, same_type_again.status_code) == (201, 201)
        assert case_row(app, opened.case_id).state == "awaiting_verification"
        detail = client.get(f"/v1/admin/cases/{opened.case_id}", headers=agent.headers).json
        assert detail["evidence_required_types"] == 2

        # Two people (item 6 of issue 8): the second type is recorded by someone else (here the
        # system, from a signed HR attestation; an observed federated sign-in counts the same way).
        hr, hr_secret = factory.integration(tenant, kind="hr")
        second = attest(client, hr, hr_secret, case_id=opened.case_id, voucher="manager@example.com")

        assert second.status_code < 300, second.json
        assert case_row(app, opened.case_id).state == "verified"
        [verified] = case_events(app, opened.case_id, "recovery.verified")
        assert verified.details["types"] == ["hr_attestation", "video_call"]


class TestHrAttestationRefusals:
    def test_another_tenants_hr_integration_cannot_attest_this_case(self, app, client, factory):
        opened = open_case(factory, client)
        foreign_hr, foreign_secret = factory.integration(factory.tenant(), kind="hr")

        r = attest(client, foreign_hr, foreign_secret, case_id=opened.case_id, voucher="manager@example.com")

        assert r.status_code == 404, r.json
        assert evidence_of(app, opened.case_id) == []
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_the_user_cannot_vouch_for_themselves(self, app, client, factory):
        opened = open_case(factory, client)
        hr, hr_secret = factory.integration(opened.tenant, kind="hr")

        r = attest(client, hr, hr_secret, user_email=opened.user.email, voucher=opened.user.email.upper())

        assert r.status_code == 422, r.json
        assert "vouches for themselves" in error_of(r)["details"]["reason"]
        [kept] = evidence_of(app, opened.case_id)
        assert kept.accepted is False
        assert len(case_events(app, opened.case_id, "recovery.evidence_rejected")) == 1
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_attestation_naming_the_case_and_another_user_does_not_verify_it(self, app, client, factory):
        """HR vouched for somebody else: the case id and the email disagree, so this is no
        corroboration of the case's user."""
        opened = open_case(factory, client)
        someone_else = factory.settled_user(opened.tenant, password=None)
        hr, hr_secret = factory.integration(opened.tenant, kind="hr")

        r = attest(client, hr, hr_secret, case_id=opened.case_id, user_email=someone_else.email,
                   voucher="manager@example.com")

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "unacceptable_evidence"
        assert [e.accepted for e in evidence_of(app, opened.case_id)] == [False]
        assert len(case_events(app, opened.case_id, "recovery.evidence_rejected")) == 1
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_a_ticketing_integration_cannot_attest(self, app, client, factory):
        opened = open_case(factory, client)

        r = attest(client, opened.integration, opened.secret, user_email=opened.user.email,
                   voucher="manager@example.com")

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "unacceptable_evidence"
        assert [e for e in evidence_of(app, opened.case_id) if e.accepted] == []
        assert case_row(app, opened.case_id).state == "awaiting_verification"
