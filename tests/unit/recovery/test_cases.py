"""Cases: one open case per user, the same answer for unknown accounts, transitions only from
the states listed (409 with the state and what is allowed), tenant isolation, the timeline,
and expiry past the verification TTL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from app.extensions import db
from app.recovery.models import RecoveryCase
from tests.casework import case_actions, case_events, case_row, cases_of, error_of, open_case


def _act(client, agent, case_id, action, **body):
    return client.post(f"/v1/admin/cases/{case_id}/actions/{action}",
                       json={"reason": f"test: {action}", **body}, headers=agent.headers)


class TestOneOpenCasePerUser:
    def test_second_request_joins_the_open_case(self, app, client, factory):
        opened = open_case(factory, client)

        again = factory.request_recovery(client, opened.integration, opened.secret, opened.user.email,
                                         text="Still locked out, any news?")

        assert again.status_code == 202, again.json
        assert again.json == {"case_id": opened.case_id, "status": "received"}
        assert len(cases_of(app, opened.tenant.id)) == 1
        case = case_row(app, opened.case_id)
        assert case.requests == 2 and case.state == "awaiting_verification"
        requested = case_events(app, opened.case_id, "recovery.requested")
        assert [e.details["joined"] for e in requested] == [False, True]

    def test_request_after_a_refusal_opens_a_new_case(self, app, client, factory):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)
        assert _act(client, agent, opened.case_id, "refuse", trigger="unverifiable").status_code == 200

        again = factory.request_recovery(client, opened.integration, opened.secret, opened.user.email)

        assert again.status_code == 202
        assert again.json["case_id"] != opened.case_id
        assert len(cases_of(app, opened.tenant.id)) == 2


class TestUnknownAccount:
    def test_unknown_email_gets_the_same_answer_then_is_refused_unverifiable(self, app, client, factory):
        known = open_case(factory, client, screen=False)

        unknown = factory.request_recovery(client, known.integration, known.secret, "nobody-here@example.com")

        assert unknown.status_code == known.answer.status_code == 202
        assert set(unknown.json) == set(known.answer.json) and unknown.json["status"] == "received"
        case_id = unknown.json["case_id"]
        assert case_row(app, case_id).user_id is None
        assert factory.run_screen(case_id) == "refused"
        case = case_row(app, case_id)
        assert case.refusal_trigger == "unverifiable"
        [refused] = case_events(app, case_id, "recovery.refused")
        assert refused.details["trigger"] == "unverifiable" and refused.actor_type == "system"
        # A repeat for the unknown account joins its case, as it would for a real one.
        repeat = factory.request_recovery(client, known.integration, known.secret, "nobody-here@example.com")
        assert repeat.status_code == 202 and repeat.json == unknown.json


class TestTransitions:
    def test_disallowed_transition_is_409_with_state_and_allowed_actions(self, app, client, factory):
        opened = open_case(factory, client)
        senior = factory.agent(opened.tenant, "senior_admin")

        r = _act(client, senior, opened.case_id, "resume")

        assert r.status_code == 409, r.json
        error = error_of(r)
        assert error["code"] == "invalid_state"
        assert error["details"]["state"] == "awaiting_verification"
        assert set(error["details"]["allowed_actions"]) >= {"record_evidence", "place_verification_call",
                                                            "refuse", "escalate"}
        assert "resume" not in error["details"]["allowed_actions"]
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_no_evidence_on_a_refused_case(self, app, client, factory):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)
        assert _act(client, agent, opened.case_id, "refuse", trigger="agent_judgement").status_code == 200

        r = client.post(f"/v1/admin/cases/{opened.case_id}/evidence", headers=agent.headers,
                        json={"type": "video_call", "reason": "late evidence",
                              "details": {"result": "match", "matched_against": "hr_photo", "reference": "V-1"}})

        assert r.status_code == 409, r.json
        assert error_of(r)["details"]["state"] == "refused"
        assert "record_evidence" not in error_of(r)["details"]["allowed_actions"]
        assert case_row(app, opened.case_id).state == "refused"

    def test_agent_refusal_needs_a_known_trigger_and_is_audited(self, app, client, factory):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)

        unknown = _act(client, agent, opened.case_id, "refuse", trigger="bad_vibes")
        refused = _act(client, agent, opened.case_id, "refuse", trigger="urgency")

        assert unknown.status_code == 400
        assert refused.status_code == 200, refused.json
        assert refused.json["case"]["state"] == "refused" and refused.json["case"]["refusal_trigger"] == "urgency"
        [event] = case_events(app, opened.case_id, "recovery.refused")
        assert (event.actor_type, event.actor_id) == ("agent", str(agent.agent.id))
        assert event.reason == "test: refuse" and event.details["trigger"] == "urgency"

    def test_only_a_senior_admin_reopens_a_refused_case(self, app, client, factory):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)
        senior = factory.agent(opened.tenant, "senior_admin")
        assert _act(client, agent, opened.case_id, "refuse", trigger="unverifiable").status_code == 200

        by_agent = _act(client, agent, opened.case_id, "reopen")
        by_senior = _act(client, senior, opened.case_id, "reopen")

        assert by_agent.status_code == 403, by_agent.json
        assert by_senior.status_code == 200, by_senior.json
        assert by_senior.json["case"]["state"] == "awaiting_verification"
        [reopened] = case_events(app, opened.case_id, "recovery.reopened")
        assert reopened.actor_id == str(senior.agent.id) and reopened.reason == "test: reopen"
        assert case_row(app, opened.case_id).verification_expires_at > datetime.now(UTC)

    def test_action_without_a_reason_is_400(self, client, factory):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)

        r = client.post(f"/v1/admin/cases/{opened.case_id}/actions/escalate", json={}, headers=agent.headers)

        assert r.status_code == 400
        assert "reason" in error_of(r)["details"]["fields"]


class TestTenantIsolation:
    def test_another_tenants_agent_gets_404_for_the_case(self, app, client, factory):
        opened = open_case(factory, client)
        stranger = factory.agent(factory.tenant(), "senior_admin")
        base = f"/v1/admin/cases/{opened.case_id}"

        answers = [
            client.get(base, headers=stranger.headers),
            client.post(f"{base}/evidence", headers=stranger.headers,
                        json={"type": "video_call", "reason": "cross-tenant",
                              "details": {"result": "match", "matched_against": "hr_photo", "reference": "x"}}),
            _act(client, stranger, opened.case_id, "refuse", trigger="unverifiable"),
            client.post(f"{base}/verification-calls", headers=stranger.headers,
                        json={"channel_id": str(uuid.uuid4()), "method": "sms"}),
        ]

        assert [a.status_code for a in answers] == [404] * 4
        assert all(error_of(a)["code"] == "not_found" for a in answers)
        listed = client.get("/v1/admin/cases", headers=stranger.headers)
        assert opened.case_id not in [c["id"] for c in listed.json]
        assert case_row(app, opened.case_id).state == "awaiting_verification"
        assert "recovery.evidence_rejected" not in case_actions(app, opened.case_id)


class TestTimeline:
    def test_timeline_lists_the_cases_audit_events(self, app, client, factory):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)
        assert _act(client, agent, opened.case_id, "escalate").status_code == 200

        detail = client.get(f"/v1/admin/cases/{opened.case_id}", headers=agent.headers)

        assert detail.status_code == 200
        timeline = detail.json["timeline"]
        assert [t["action"] for t in timeline] == ["recovery.requested", "recovery.screened", "recovery.escalated"]
        assert [t["action"] for t in timeline] == case_actions(app, opened.case_id)
        assert timeline[2]["actor_type"] == "agent" and timeline[2]["reason"] == "test: escalate"
        assert [t["seq"] for t in timeline] == sorted(t["seq"] for t in timeline)
        # A support agent may not act on the escalated case any more.
        assert detail.json["allowed_actions"] == []


class TestExpiry:
    def test_case_past_its_verification_ttl_expires(self, app, client, factory):
        from app.recovery.cases import expire_overdue

        overdue = open_case(factory, client)
        fresh = open_case(factory, client, tenant=overdue.tenant)
        with app.app_context():
            db.session.get(RecoveryCase, uuid.UUID(overdue.case_id)).verification_expires_at = (
                datetime.now(UTC) - timedelta(minutes=1))
            db.session.commit()

        with app.app_context():
            expired = expire_overdue()
            db.session.commit()

        assert expired >= 1
        case = case_row(app, overdue.case_id)
        assert case.state == "expired" and case.closed_at is not None
        [event] = case_events(app, overdue.case_id, "recovery.expired")
        assert event.actor_type == "system" and event.details["trigger"] == "unverifiable"
        assert case_row(app, fresh.case_id).state == "awaiting_verification"
        assert case_events(app, fresh.case_id, "recovery.expired") == []
