"""Verification calls to a known number: only a phone on file before the day the case opened,
only this user's phone; five wrong codes lock the call; an expired call refuses; the code
reaches nobody but the phone."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.extensions import db
from app.recovery.models import VerificationCall
from tests.casework import (
    call_row,
    case_events,
    case_row,
    code_in,
    deliver_code,
    error_of,
    messages_for,
    open_case,
    outbox_rows,
    tenant_text,
)
from tests.factories import PHONE

OTHER_PHONE = "+14155550123"


def _channel(app, user_id, kind="phone"):
    from app.accounts.models import Channel

    with app.app_context():
        return str(db.session.query(Channel).filter_by(user_id=user_id, kind=kind).one().id)


def _place(client, agent, case_id, channel_id, method="sms"):
    return client.post(f"/v1/admin/cases/{case_id}/verification-calls", headers=agent.headers,
                       json={"channel_id": channel_id, "method": method})


def _confirm(client, agent, case_id, call_id, code):
    return client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm",
                       headers=agent.headers, json={"code": code})


def _placed_and_sent(app, client, factory, dev_outbox, method="sms"):
    opened = open_case(factory, client)
    agent = factory.agent(opened.tenant)
    placed = _place(client, agent, opened.case_id, _channel(app, opened.user.id), method)
    assert placed.status_code == 202, placed.json
    call_id = placed.json["id"]
    deliver_code(app, call_id)
    [message] = messages_for(dev_outbox, call_id)
    return opened, agent, placed, call_id, message


class TestChannelAge:
    def test_phone_added_today_is_refused_as_too_new(self, app, client, factory):
        # The tenant's escalation on a recent channel change is a separate signal: off here.
        tenant = factory.tenant(recent_channel_change_days=0)
        user = factory.settled_user(tenant, password=None, phones=[(PHONE, datetime.now(UTC) - timedelta(seconds=5))])
        opened = open_case(factory, client, tenant=tenant, user=user)
        agent = factory.agent(tenant)
        detail = client.get(f"/v1/admin/cases/{opened.case_id}", headers=agent.headers).json
        assert detail["callable_channels"] == []

        r = _place(client, agent, opened.case_id, _channel(app, user.id))

        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "channel_too_new"
        with app.app_context():
            assert db.session.query(VerificationCall).filter_by(case_id=uuid.UUID(opened.case_id)).count() == 0

    def test_phone_added_yesterday_can_be_called(self, app, client, factory, dev_outbox):
        tenant = factory.tenant(recent_channel_change_days=0)
        yesterday = datetime.now(UTC) - timedelta(days=1)
        user = factory.settled_user(tenant, password=None, phones=[(OTHER_PHONE, yesterday)])
        opened = open_case(factory, client, tenant=tenant, user=user)
        agent = factory.agent(tenant)

        r = _place(client, agent, opened.case_id, _channel(app, user.id))

        assert r.status_code == 202, r.json
        deliver_code(app, r.json["id"])
        [message] = messages_for(dev_outbox, r.json["id"])
        assert message["to"] == OTHER_PHONE
        assert _confirm(client, agent, opened.case_id, r.json["id"], code_in(message)).status_code == 200
        assert case_row(app, opened.case_id).state == "verified"

    def test_recent_phone_also_escalates_the_case_by_default(self, app, client, factory):
        tenant = factory.tenant()
        user = factory.settled_user(tenant, password=None, phones=[(PHONE, datetime.now(UTC) - timedelta(hours=1))])
        opened = open_case(factory, client, tenant=tenant, user=user)
        senior = factory.agent(tenant, "senior_admin")
        assert case_row(app, opened.case_id).flags == ["recent_channel_change"]
        assert client.post(f"/v1/admin/cases/{opened.case_id}/actions/resume", headers=senior.headers,
                           json={"reason": "checked with the user's manager"}).status_code == 200

        r = _place(client, senior, opened.case_id, _channel(app, user.id))

        assert r.status_code == 422 and error_of(r)["code"] == "channel_too_new"


def _last_local(zone: str, hour: int) -> datetime:
    """The latest moment, before now, when the clocks of `zone` read `hour`:00."""
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo(zone)) - timedelta(minutes=1)
    moment = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return moment if moment <= now else moment - timedelta(days=1)


class TestTenantDay:
    """Issue 8, item 19: "before today" is the tenant's day, not the UTC day. For a tenant eight
    hours from UTC, a phone added that local morning is on file since "today", whatever the
    date in UTC says."""

    @pytest.mark.parametrize("zone, opened_hour", [("Asia/Singapore", 10), ("Pacific/Pitcairn", 20)])
    def test_phone_added_that_local_morning_is_too_new(self, app, client, factory, zone, opened_hour):
        opened_local = _last_local(zone, opened_hour)
        added_local = opened_local.replace(hour=7)  # the same local morning: the attacker's new SIM
        # The UTC days differ: that is what made the old rule count the phone as "before today".
        assert added_local.astimezone(UTC).date() < opened_local.astimezone(UTC).date()
        opened, _, detail, r = _call_on_a_local_day(app, client, factory, zone, opened_local, added_local)

        assert detail["callable_channels"] == []
        assert r.status_code == 422, r.json
        assert error_of(r)["code"] == "channel_too_new"
        with app.app_context():
            assert db.session.query(VerificationCall).filter_by(case_id=uuid.UUID(opened.case_id)).count() == 0

    @pytest.mark.parametrize("zone, opened_hour", [("Asia/Singapore", 10), ("Pacific/Pitcairn", 20)])
    def test_phone_added_the_local_evening_before_can_be_called(self, app, client, factory, zone, opened_hour):
        opened_local = _last_local(zone, opened_hour)
        added_local = (opened_local - timedelta(days=1)).replace(hour=23)
        opened, _, detail, r = _call_on_a_local_day(app, client, factory, zone, opened_local, added_local)

        assert [c["id"] for c in detail["callable_channels"]] == [_channel(app, opened.user.id)]
        assert r.status_code == 202, r.json


def _call_on_a_local_day(app, client, factory, zone, opened_local, added_local):
    """A case of a tenant in `zone`, opened at `opened_local`, for a user whose phone was added at
    `added_local`: the case as the agent sees it, and the answer to a call to that phone."""
    tenant = factory.tenant(time_zone=zone, recent_channel_change_days=0)
    user = factory.settled_user(tenant, password=None, phones=[(PHONE, added_local.astimezone(UTC))])
    opened = _opened_at(app, open_case(factory, client, tenant=tenant, user=user), opened_local.astimezone(UTC))
    agent = factory.agent(tenant)
    detail = client.get(f"/v1/admin/cases/{opened.case_id}", headers=agent.headers).json
    return opened, agent, detail, _place(client, agent, opened.case_id, _channel(app, user.id))


def _opened_at(app, opened, moment):
    """The case as if it had been opened at `moment` (the tests pick a local hour)."""
    from app.recovery.models import RecoveryCase

    with app.app_context():
        db.session.get(RecoveryCase, uuid.UUID(opened.case_id)).opened_at = moment
        db.session.commit()
    return opened


class TestWhichChannel:
    @pytest.mark.parametrize("whose", ["another_users_phone", "the_users_email", "unknown_id"])
    def test_channel_that_is_not_this_users_phone_is_404(self, app, client, factory, whose):
        opened = open_case(factory, client)
        agent = factory.agent(opened.tenant)
        other = factory.settled_user(opened.tenant, password=None,
                                     phones=[(OTHER_PHONE, datetime(2024, 1, 1, tzinfo=UTC))])
        channel_id = {"another_users_phone": lambda: _channel(app, other.id),
                      "the_users_email": lambda: _channel(app, opened.user.id, "email"),
                      "unknown_id": lambda: str(uuid.uuid4())}[whose]()

        r = _place(client, agent, opened.case_id, channel_id)

        assert r.status_code == 404, r.json
        assert error_of(r)["code"] == "not_found"
        assert "recovery.verification_call_placed" not in [e.action for e in case_events(app, opened.case_id)]


class TestCodes:
    def test_five_wrong_codes_lock_the_call(self, app, client, factory, dev_outbox):
        opened, agent, _, call_id, message = _placed_and_sent(app, client, factory, dev_outbox)
        right = code_in(message)
        wrong = f"{(int(right) + 1) % 10**8:08d}"

        answers = [_confirm(client, agent, opened.case_id, call_id, wrong) for _ in range(5)]

        assert [a.status_code for a in answers] == [422] * 5
        assert [error_of(a)["details"]["attempts_left"] for a in answers] == [4, 3, 2, 1, 0]
        assert error_of(answers[-1])["details"]["status"] == "locked"
        sixth = _confirm(client, agent, opened.case_id, call_id, right)
        assert sixth.status_code == 422, sixth.json
        assert error_of(sixth)["details"]["status"] == "locked"
        assert call_row(app, call_id).status == "locked"
        assert case_row(app, opened.case_id).state == "awaiting_verification"
        rejected = case_events(app, opened.case_id, "recovery.verification_code_rejected")
        assert [e.details["attempts"] for e in rejected] == [1, 2, 3, 4, 5]
        assert rejected[-1].details["locked"] is True

    def test_expired_call_refuses_even_the_right_code(self, app, client, factory, dev_outbox):
        opened, agent, _, call_id, message = _placed_and_sent(app, client, factory, dev_outbox)
        with app.app_context():
            db.session.get(VerificationCall, uuid.UUID(call_id)).expires_at = datetime.now(UTC) - timedelta(seconds=1)
            db.session.commit()

        r = _confirm(client, agent, opened.case_id, call_id, code_in(message))

        assert r.status_code == 422, r.json
        assert error_of(r)["details"]["status"] == "expired"
        assert call_row(app, call_id).status == "expired"
        assert case_row(app, opened.case_id).state == "awaiting_verification"

    def test_a_new_call_supersedes_the_pending_one(self, app, client, factory, dev_outbox):
        opened, agent, _, first_id, first_message = _placed_and_sent(app, client, factory, dev_outbox)

        second = _place(client, agent, opened.case_id, _channel(app, opened.user.id), "voice")

        assert second.status_code == 202
        r = _confirm(client, agent, opened.case_id, first_id, code_in(first_message))
        assert r.status_code == 422 and call_row(app, first_id).status == "expired"

    @pytest.mark.parametrize("method", ["sms", "voice"])
    def test_code_reaches_only_the_known_phone(self, app, client, factory, dev_outbox, method):
        ticket_number = "+14155550199"
        opened = open_case(factory, client, text=f"I have a new phone, please call me on {ticket_number}.")
        assert case_row(app, opened.case_id).state == "awaiting_verification"
        agent = factory.agent(opened.tenant)
        detail = client.get(f"/v1/admin/cases/{opened.case_id}", headers=agent.headers)
        [channel] = detail.json["callable_channels"]
        assert channel["value"] != PHONE and channel["value"].endswith(PHONE[-2:])  # masked

        placed = _place(client, agent, opened.case_id, channel["id"], method)
        deliver_code(app, placed.json["id"])
        deliver_code(app, placed.json["id"])  # a redelivered task sends nothing twice
        messages = messages_for(dev_outbox, placed.json["id"])
        [message] = messages
        code = code_in(message)
        confirmed = _confirm(client, agent, opened.case_id, placed.json["id"], code)

        assert confirmed.status_code == 200, confirmed.json
        assert message["to"] == PHONE and message["channel"] == method
        from integrations.channels.dev import read_messages

        assert read_messages(dev_outbox, to=ticket_number) == []
        after = client.get(f"/v1/admin/cases/{opened.case_id}", headers=agent.headers)
        for answer in (detail, placed, confirmed, after):
            assert code not in answer.get_data(as_text=True)
        assert code not in tenant_text(app, opened.tenant.id)
        for row in outbox_rows(app):
            assert code not in json.dumps(row.kwargs)
        call = call_row(app, placed.json["id"])
        assert call.code_encrypted is None and call.status == "verified"
