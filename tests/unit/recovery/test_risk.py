"""The intake risk screen: unusual sign-in activity refuses at once and tells the senior
admins; urgency, a recent channel change, a privileged user and a repeat recovery escalate,
and an escalated case is a senior admin's alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.accounts.models import SigninAttempt
from app.extensions import db
from tests.casework import case_events, case_row, error_of, messages_for, open_case
from tests.factories import PASSWORD, PHONE
from tests.flows import signin

URGENT = "URGENT, I need access right now, the CEO is waiting"
VIDEO = {"result": "match", "matched_against": "hr_photo", "reference": "VID-2211"}


def _act(client, agent, case_id, action, **body):
    return client.post(f"/v1/admin/cases/{case_id}/actions/{action}",
                       json={"reason": f"test: {action}", **body}, headers=agent.headers)


def _attempts(app, user, *rows: tuple[str, str, timedelta]) -> None:
    """Sign-in history: (ip, result, how long ago)."""
    now = datetime.now(UTC)
    with app.app_context():
        for ip, result, ago in rows:
            db.session.add(SigninAttempt(tenant_id=user.tenant_id, user_id=user.id, email=user.email, ip=ip,
                                         result=result, method="password", occurred_at=now - ago))
        db.session.commit()


class TestUnusualActivity:
    def test_failed_signins_from_unknown_ips_refuse_and_notify_senior_admins(self, app, client, factory,
                                                                            dev_outbox):
        from app.recovery.cases import notify_senior_admins

        tenant = factory.tenant()
        seniors = [factory.agent(tenant, "senior_admin") for _ in range(2)]
        support = factory.agent(tenant)
        user = factory.settled_user(tenant)
        for i in range(5):  # real sign-ins with a wrong password, from addresses never seen succeed
            assert signin(client, tenant, user.email, "guess-" + str(i), ip=f"203.0.113.{i + 10}").status_code == 401

        opened = open_case(factory, client, tenant=tenant, user=user)

        case = case_row(app, opened.case_id)
        assert case.state == "refused" and case.refusal_trigger == "unusual_activity"
        [refused] = case_events(app, opened.case_id, "recovery.refused")
        assert refused.details["trigger"] == "unusual_activity"
        assert refused.details["failed_signins_from_unknown_ips"] == 5
        # The notification task (what the worker runs), twice: it notifies once.
        for _ in range(2):
            with app.app_context():
                notify_senior_admins(uuid.UUID(opened.case_id))
                db.session.commit()
        [notified] = case_events(app, opened.case_id, "recovery.senior_admins_notified")
        assert notified.details == {"admins": 2, "trigger": "unusual_activity", "why": "refused", "round": 1}
        emails = messages_for(dev_outbox, f"case:{opened.case_id}:notify")
        assert sorted(m["to"] for m in emails) == sorted(s.agent.email for s in seniors)
        assert support.agent.email not in [m["to"] for m in emails]
        assert all(m["channel"] == "email" and opened.case_id in m["body"] for m in emails)

    def test_failures_from_an_address_that_has_succeeded_do_not_count(self, app, client, factory):
        tenant = factory.tenant()
        user = factory.settled_user(tenant)
        home = "198.51.100.44"
        assert signin(client, tenant, user.email, PASSWORD, ip=home).status_code == 200
        _attempts(app, user, *[(home, "bad_password", timedelta(minutes=i)) for i in range(6)])

        opened = open_case(factory, client, tenant=tenant, user=user)

        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_failures_older_than_the_window_do_not_count(self, app, client, factory):
        tenant = factory.tenant()
        user = factory.settled_user(tenant, password=None)
        _attempts(app, user, *[(f"203.0.113.{i}", "bad_password", timedelta(hours=25)) for i in range(6)],
                  ("203.0.113.99", "bad_factor", timedelta(hours=1)))

        opened = open_case(factory, client, tenant=tenant, user=user)

        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_the_threshold_is_a_tenant_setting(self, app, client, factory):
        tenant = factory.tenant(unusual_activity_failed_signins=2)
        user = factory.settled_user(tenant, password=None)
        _attempts(app, user, ("203.0.113.7", "bad_factor", timedelta(hours=2)),
                  ("203.0.113.8", "bad_password", timedelta(hours=3)))

        opened = open_case(factory, client, tenant=tenant, user=user)

        assert case_row(app, opened.case_id).refusal_trigger == "unusual_activity"


class TestEscalation:
    def test_urgent_ticket_escalates_and_only_a_senior_admin_may_act(self, app, client, factory):
        opened = open_case(factory, client, text=URGENT)
        agent = factory.agent(opened.tenant)
        senior = factory.agent(opened.tenant, "senior_admin")
        case = case_row(app, opened.case_id)
        assert case.state == "escalated" and "urgency" in case.flags
        [escalated] = case_events(app, opened.case_id, "recovery.escalated")
        assert escalated.details["flags"] == ["urgency"] and escalated.actor_type == "system"
        base = f"/v1/admin/cases/{opened.case_id}"
        channel_id = _phone_channel_id(client, senior, opened.case_id)

        refused = [
            client.post(f"{base}/evidence", headers=agent.headers,
                        json={"type": "video_call", "details": VIDEO, "reason": "verified on video"}),
            client.post(f"{base}/verification-calls", headers=agent.headers,
                        json={"channel_id": channel_id, "method": "sms"}),
            _act(client, agent, opened.case_id, "refuse", trigger="urgency"),
            _act(client, agent, opened.case_id, "resume"),
        ]

        assert [r.status_code for r in refused] == [403] * 4, [r.json for r in refused]
        assert {error_of(r)["code"] for r in refused} == {"case_escalated"}
        assert case_row(app, opened.case_id).state == "escalated"
        resumed = _act(client, senior, opened.case_id, "resume")
        assert resumed.status_code == 200, resumed.json
        assert resumed.json["case"]["state"] == "awaiting_verification"
        [event] = case_events(app, opened.case_id, "recovery.resumed")
        assert event.actor_id == str(senior.agent.id) and event.reason == "test: resume"
        # Resumed, the support agent carries on with step 1.
        verified = client.post(f"{base}/evidence", headers=agent.headers,
                               json={"type": "video_call", "details": VIDEO, "reason": "verified on video"})
        assert verified.status_code == 201, verified.json
        assert case_row(app, opened.case_id).state == "verified"

    def test_senior_admin_may_refuse_an_escalated_case(self, app, client, factory):
        opened = open_case(factory, client, text=URGENT)
        senior = factory.agent(opened.tenant, "senior_admin")

        r = _act(client, senior, opened.case_id, "refuse", trigger="urgency")

        assert r.status_code == 200, r.json
        case = case_row(app, opened.case_id)
        assert case.state == "refused" and case.refusal_trigger == "urgency"
        [event] = case_events(app, opened.case_id, "recovery.refused")
        assert event.details["from_state"] == "escalated"

    @pytest.mark.parametrize("flag", ["privileged", "recent_channel_change", "repeat_recovery"])
    def test_risk_signal_escalates(self, app, client, factory, flag):
        tenant = factory.tenant()
        kw: dict = {"password": None}
        if flag == "privileged":
            kw["privileged"] = True
        if flag == "recent_channel_change":  # a phone added three days ago
            kw["phones"] = [(PHONE, datetime.now(UTC) - timedelta(days=3))]
        user = factory.settled_user(tenant, **kw)
        if flag == "repeat_recovery":  # an earlier case this month, refused
            earlier = open_case(factory, client, tenant=tenant, user=user)
            agent = factory.agent(tenant)
            assert _act(client, agent, earlier.case_id, "refuse", trigger="unverifiable").status_code == 200

        opened = open_case(factory, client, tenant=tenant, user=user)

        case = case_row(app, opened.case_id)
        assert case.state == "escalated", case.flags
        assert case.flags == [flag]
        [event] = case_events(app, opened.case_id, "recovery.escalated")
        assert event.details["flags"] == [flag]

    def test_calm_request_from_a_settled_user_awaits_verification(self, app, client, factory):
        opened = open_case(factory, client)

        case = case_row(app, opened.case_id)
        assert case.state == "awaiting_verification" and case.flags == []
        assert case_events(app, opened.case_id, "recovery.escalated") == []


def _phone_channel_id(client, agent, case_id) -> str:
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers)
    [channel] = detail.json["callable_channels"]
    return channel["id"]
