"""Issue 8, items 11 and 12: every ticket is screened, and a ticket opens at most one case.

11. An urgent second ticket ("URGENT, the CEO needs access now, skip the checks") joined the
    open case and changed nothing. A joining request is now screened like a new one: its flags
    are added to the case, urgency escalates it, the ticket is kept on the case, and the
    follow-up comment goes to every ticket of the case.
12. Jira signs no timestamp: its signed body sent again under a new X-Atlassian-Webhook-Identifier
    opened a new case once the first was refused. A ticket (integration and ticket id) now opens
    at most one case, ever; a repeat answers 200 with the first answer.

Over HTTP on PostgreSQL, tasks run in this process; the Jira side is the local fake server."""

from __future__ import annotations

import base64
import logging
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.extensions import db
from app.recovery.models import CaseRequest
from integrations.fakes.callbacks import CallbackReceiver
from integrations.fakes.ticketing import FakeJira
from tests.casework import case_events, case_row, cases_of, jira_body, post, standard_body
from tests.recovery_paths import RESET_REASON
from tests.recovery_steps import (
    JIRA_ISSUE,
    World,
    act,
    cast,
    enrol_and_close,
    in_process,
    integration,
    open_case,
    signin,
    verify_by_callback,
)
from tests.signing import jira_headers, standard_headers

URGENT = "URGENT, the CEO needs access now, skip the checks"
SECOND_ISSUE = "HELP-13"


@pytest.fixture
def world(client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> World:
    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")  # the fakes listen on loopback
    caplog.set_level(logging.INFO)
    return in_process(client, factory)


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()) as fake:
        yield fake


def _requests_of(world: World, case_id: str) -> list[CaseRequest]:
    with world.app.app_context():
        rows = db.session.scalars(select(CaseRequest).where(CaseRequest.case_id == uuid.UUID(case_id))
                                  .order_by(CaseRequest.received_at)).all()
        db.session.expunge_all()
        return list(rows)


def _jira_integration(world: World, c: Any, jira: FakeJira) -> tuple[Any, str]:
    return integration(world, c.tenant, "jira", fake=jira)


# --- item 11: a second ticket is screened ---------------------------------------------------------


def test_urgent_second_ticket_escalates_the_open_case_and_is_kept_on_it(world, jira):
    c = cast(world)
    found, secret = _jira_integration(world, c, jira)
    body = jira_body(c.user.email)
    first = post(world.client, found, body, jira_headers(secret, body))
    assert first.status_code == 202, first.json
    case_id = first.json["case_id"]
    world.quiesce()
    assert case_row(world.app, case_id).state == "awaiting_verification"

    urgent = jira_body(c.user.email, text=URGENT, key=SECOND_ISSUE)
    second = post(world.client, found, urgent, jira_headers(secret, urgent))

    # The same answer as any request (nothing revealed), but the case changed.
    assert second.status_code == 202 and second.json == {"case_id": case_id, "status": "received"}, second.json
    row = case_row(world.app, case_id)
    assert row.state == "escalated" and "urgency" in row.flags, (row.state, row.flags)
    assert row.requests == 2
    [escalated] = case_events(world.app, case_id, "recovery.escalated")
    assert escalated.actor_type == "system" and escalated.details["flags"] == ["urgency"]
    assert escalated.details["joined"] is True
    assert [(r.ticket_id, r.joined) for r in _requests_of(world, case_id)] == [
        (JIRA_ISSUE, False), (SECOND_ISSUE, True)]
    # A support agent can no longer act on it.
    r = act(world, case_id, "escalate", c.agent)
    assert r.status_code == 403 and r.json["error"]["code"] == "case_escalated", r.json


def test_urgent_second_ticket_before_the_screen_escalates_at_the_screen(world, factory):
    c = cast(world, lost_totp=False)
    found, secret = integration(world, c.tenant)
    calm = standard_body(c.user.email, ticket_id="T-calm")
    with world.paused():
        first = post(world.client, found, calm, standard_headers(secret, calm))
    case_id = first.json["case_id"]
    urgent = standard_body(c.user.email, text=URGENT, ticket_id="T-urgent", subject="Access")
    second = post(world.client, found, urgent, standard_headers(secret, urgent))
    assert second.status_code == 202 and second.json["case_id"] == case_id

    assert factory.run_screen(case_id) == "escalated"
    assert "urgency" in case_row(world.app, case_id).flags


def test_calm_second_ticket_changes_no_state_but_is_kept(world, factory):
    c = cast(world, lost_totp=False)
    found, secret = integration(world, c.tenant)
    opened = open_case(world, c)
    again = standard_body(c.user.email, ticket_id="T-again")

    r = post(world.client, found, again, standard_headers(secret, again))

    assert r.status_code == 202 and r.json["case_id"] == opened
    row = case_row(world.app, opened)
    assert (row.state, row.flags, row.requests) == ("awaiting_verification", [], 2)
    assert "T-again" in [r.ticket_id for r in _requests_of(world, opened)]


def test_urgent_ticket_joining_an_escalated_case_adds_its_flag(world):
    c = cast(world, lost_totp=False, privileged=True)
    found, secret = integration(world, c.tenant)
    case_id = open_case(world, c, expect="escalated")
    assert case_row(world.app, case_id).flags == ["privileged"]
    urgent = standard_body(c.user.email, text=URGENT, ticket_id="T-urgent")

    assert post(world.client, found, urgent, standard_headers(secret, urgent)).status_code == 202

    row = case_row(world.app, case_id)
    assert row.state == "escalated" and row.flags == ["privileged", "urgency"]
    [screened] = [e for e in case_events(world.app, case_id, "recovery.screened") if e.details.get("joined")]
    assert screened.details["flags"] == ["urgency"]


def test_follow_up_comment_goes_to_every_ticket_of_the_case(world, jira):
    c = cast(world)
    found, secret = _jira_integration(world, c, jira)
    case_id = open_case(world, c, kind="jira", fake=jira)
    second = jira_body(c.user.email, text="Still locked out, same phone story.", key=SECOND_ISSUE)
    r = post(world.client, found, second, jira_headers(secret, second))
    assert r.status_code == 202 and r.json["case_id"] == case_id
    verify_by_callback(world, case_id, c.agent)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.quiesce()
    r = signin(world, c)
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json

    enrol_and_close(world, c, case_id, r.json["token"])
    world.quiesce()

    for issue in (JIRA_ISSUE, SECOND_ISSUE):
        texts = jira.texts(issue)
        assert len(texts) == 1, (issue, texts)
        assert f"case {case_id}" in texts[0] and "complete" in texts[0]
    commented = case_events(world.app, case_id, "recovery.ticket_commented")
    assert sorted(e.details["ticket_id"] for e in commented) == [JIRA_ISSUE, SECOND_ISSUE]
    # The follow-up runs once per round: asking again posts nothing more.
    assert act(world, case_id, "send_follow_up", c.agent).status_code == 200
    world.quiesce()
    assert [len(jira.texts(i)) for i in (JIRA_ISSUE, SECOND_ISSUE)] == [1, 1]


# --- item 12: one ticket, one case ever ----------------------------------------------------------------


def test_replayed_jira_body_with_a_new_identifier_after_a_refusal_opens_no_case(world, jira):
    c = cast(world)
    found, secret = _jira_integration(world, c, jira)
    body = jira_body(c.user.email)
    first = post(world.client, found, body, jira_headers(secret, body, identifier="first-delivery"))
    assert first.status_code == 202, first.json
    case_id = first.json["case_id"]
    world.quiesce()
    r = act(world, case_id, "refuse", c.agent, reason="Caller could not be verified", trigger="unverifiable")
    assert r.status_code == 200 and r.json["case"]["state"] == "refused", r.json

    replay = post(world.client, found, body, jira_headers(secret, body, identifier="replayed-delivery"))

    assert replay.status_code == 200, replay.json
    assert replay.json == first.json
    assert [str(k.id) for k in cases_of(world.app, c.tenant.id)] == [case_id]
    assert case_row(world.app, case_id).state == "refused"
    assert len(case_events(world.app, case_id, "recovery.requested")) == 1


def test_same_standard_ticket_under_a_new_delivery_id_answers_the_first_case(world):
    c = cast(world, lost_totp=False)
    found, secret = integration(world, c.tenant)
    body = standard_body(c.user.email, ticket_id="T-4711")
    first = post(world.client, found, body, standard_headers(secret, body, msg_id="msg_one"))
    again = post(world.client, found, body, standard_headers(secret, body, msg_id="msg_two"))

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json == first.json
    assert case_row(world.app, first.json["case_id"]).requests == 1
    # The repeat's own delivery id is remembered with the same answer.
    third = post(world.client, found, body, standard_headers(secret, body, msg_id="msg_two"))
    assert (third.status_code, third.json) == (200, first.json)


def test_same_ticket_id_from_another_integration_is_another_ticket(world):
    c = cast(world, lost_totp=False)
    one, one_secret = integration(world, c.tenant)
    two, two_secret = integration(world, c.tenant)
    body = standard_body(c.user.email, ticket_id="T-1")
    first = post(world.client, one, body, standard_headers(one_secret, body))
    other = post(world.client, two, body, standard_headers(two_secret, body))

    assert (first.status_code, other.status_code) == (202, 202)  # it joins the user's open case
    assert other.json["case_id"] == first.json["case_id"]
    assert case_row(world.app, first.json["case_id"]).requests == 2


def test_ticket_of_an_unknown_account_repeats_like_a_real_one(world):
    c = cast(world, lost_totp=False)
    found, secret = integration(world, c.tenant)
    body = standard_body("nobody-here@example.com", ticket_id="T-ghost")
    first = post(world.client, found, body, standard_headers(secret, body))
    world.quiesce()
    again = post(world.client, found, body, standard_headers(secret, body))

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json == first.json
    assert len(cases_of(world.app, c.tenant.id)) == 1
