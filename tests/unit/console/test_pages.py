"""The console pages through Flask's test client, as a browser: sign-in with the authenticator app,
the queue, the case, a rejected method's refusal recorded, the verification call, the step-up
prompt before a destructive action, CSRF, tenant isolation and inert ticket text."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.casework import case_events, case_row, code_in, deliver_code, messages_for, open_case
from tests.unit.console.conftest import AGENT_PASSWORD, ConsoleAgent, make_console_agent
from tests.webpages import assert_page, form_token

COOKIE = "__Host-rekey_console"


def sign_in(client: Any, who: ConsoleAgent, clock: Any) -> Any:
    page = client.get(f"/console/signin?tenant={who.tenant.slug}")
    assert who.tenant.slug in page.get_data(as_text=True)  # prefilled from ?tenant=
    answer = client.post("/console/signin", data={"csrf_token": form_token(page), "tenant": who.tenant.slug,
                                                  "email": who.agent.email, "password": AGENT_PASSWORD})
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/console/signin/factor")
    page = client.get("/console/signin/factor")
    answer = client.post("/console/signin/factor", data={"csrf_token": form_token(page), "code": who.code(clock)})
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/queue", answer.get_data(as_text=True)
    clock.advance()
    return answer


def _post(client: Any, page_path: str, path: str, **fields: str) -> Any:
    page = client.get(page_path)
    return client.post(path, data={"csrf_token": form_token(page), **fields})


def test_signed_out_goes_to_sign_in(client: Any) -> None:
    answer = client.get("/console/queue")
    assert answer.status_code == 303 and answer.headers["Location"].startswith("/console/signin")


def test_sign_in_queue_and_case(app: Any, factory: Any, client: Any, console_clock: Any) -> None:
    opened = open_case(factory, client, text="<script>alert(1)</script> I lost my phone")
    who = make_console_agent(app, factory, opened.tenant, console_clock)
    signed = sign_in(client, who, console_clock)
    cookie = [h for h in signed.headers.getlist("Set-Cookie") if h.startswith(COOKIE)]
    assert cookie and "HttpOnly" in cookie[0] and "SameSite=Lax" in cookie[0]
    text = assert_page(client.get("/console/queue"), 200)
    assert "awaiting verification" in text
    page = client.get(f"/console/cases/{opened.case_id}")
    body = page.get_data(as_text=True)
    assert_page(page, 200)
    assert "<script>alert(1)</script>" not in body  # ticket text is inert
    assert 'hx-trigger="every 3s"' in body and "Verification call" in body
    assert "no-store" in page.headers["Cache-Control"]
    live = client.get(f"/console/cases/{opened.case_id}/live")
    assert live.status_code == 200 and "awaiting verification" in live.get_data(as_text=True)


def test_rejected_method_shows_the_runbook_reason_and_is_recorded(app: Any, factory: Any, client: Any,
                                                                   console_clock: Any) -> None:
    opened = open_case(factory, client)
    who = make_console_agent(app, factory, opened.tenant, console_clock)
    sign_in(client, who, console_clock)
    path = f"/console/cases/{opened.case_id}"
    answer = _post(client, path, f"{path}/evidence", type="email_match", reason="email matches")
    text = assert_page(answer, 422)
    assert "phishing-trivial" in text
    assert case_events(app, opened.case_id, "recovery.evidence_rejected")


def test_verification_call_then_step_up_before_force_reset(app: Any, factory: Any, client: Any,
                                                           console_clock: Any, dev_outbox: Any, tune: Any) -> None:
    opened = open_case(factory, client)
    who = make_console_agent(app, factory, opened.tenant, console_clock)
    sign_in(client, who, console_clock)
    path = f"/console/cases/{opened.case_id}"
    page = client.get(path)
    channel = re.search(r'<option value="([0-9a-f-]{36})"', page.get_data(as_text=True)).group(1)
    answer = _post(client, path, f"{path}/calls", channel_id=channel, method="sms")
    assert answer.status_code == 303
    page = client.get(path)
    call_id = re.search(r"/calls/([0-9a-f-]{36})/confirm", page.get_data(as_text=True)).group(1)
    assert "5 attempts left" in page.get_data(as_text=True)
    deliver_code(app, call_id)
    code = code_in(messages_for(dev_outbox, call_id)[-1]) if messages_for(dev_outbox, call_id) else None
    assert code
    answer = client.post(f"{path}/calls/{call_id}/confirm", data={"csrf_token": form_token(page), "code": code})
    assert answer.status_code == 303
    assert case_row(app, opened.case_id).state == "verified"
    # The sign-in's second factor is older than the step-up window: the reset asks for it again.
    tune(console_step_up_seconds=0)
    answer = _post(client, path, f"{path}/actions/force_mfa_reset", reason="lost phone", confirm="yes")
    text = assert_page(answer, 403)
    assert "fresh check of your second factor" in text and 'id="pending-action"' in answer.get_data(as_text=True)
    assert case_row(app, opened.case_id).state == "verified"
    tune(console_step_up_seconds=300)
    answer = client.post(f"{path}/actions/force_mfa_reset", data={
        "csrf_token": form_token(answer), "reason": "lost phone", "confirm": "yes",
        "step_up_code": who.code(console_clock)})
    text = assert_page(answer, 200)
    assert "Force mfa reset" in text
    resets = [e for e in case_events(app, opened.case_id) if e.action in ("recovery.action_queued",
                                                                         "recovery.reset_scheduled")]
    assert resets and resets[-1].actor_id == str(who.agent.id)


def test_destructive_action_needs_the_confirmation(app: Any, factory: Any, client: Any, console_clock: Any) -> None:
    opened = open_case(factory, client)
    who = make_console_agent(app, factory, opened.tenant, console_clock, role="senior_admin")
    sign_in(client, who, console_clock)
    path = f"/console/cases/{opened.case_id}"
    answer = _post(client, path, f"{path}/actions/suspend_user", reason="odd")
    assert "cannot be undone" in assert_page(answer, 422)
    assert case_row(app, opened.case_id).state == "awaiting_verification"
    answer = _post(client, path, f"{path}/actions/suspend_user", reason="odd", confirm="yes")
    assert_page(answer, 200)
    assert case_row(app, opened.case_id).state == "suspected_attack"


def test_csrf_is_required(app: Any, factory: Any, client: Any, console_clock: Any) -> None:
    opened = open_case(factory, client)
    who = make_console_agent(app, factory, opened.tenant, console_clock)
    sign_in(client, who, console_clock)
    answer = client.post(f"/console/cases/{opened.case_id}/actions/escalate", data={"reason": "x"})
    assert_page(answer, 403)
    assert case_row(app, opened.case_id).state == "awaiting_verification"


def test_other_tenants_case_and_user_are_not_found(app: Any, factory: Any, client: Any, console_clock: Any) -> None:
    other = open_case(factory, client)
    mine = factory.tenant()
    who = make_console_agent(app, factory, mine, console_clock)
    sign_in(client, who, console_clock)
    for path in (f"/console/cases/{other.case_id}", f"/console/cases/{other.case_id}/live",
                 f"/console/users/{other.user.id}", f"/console/audit.csv?case={other.case_id}"):
        assert_page(client.get(path), 404)
    page = client.get("/console/queue")
    answer = client.post(f"/console/cases/{other.case_id}/actions/escalate",
                         data={"csrf_token": form_token(page), "reason": "x"})
    assert_page(answer, 404)
    assert case_row(app, other.case_id).state == "awaiting_verification"


def test_mfa_tab_and_audit_csv(app: Any, factory: Any, client: Any, console_clock: Any) -> None:
    opened = open_case(factory, client)
    who = make_console_agent(app, factory, opened.tenant, console_clock)
    sign_in(client, who, console_clock)
    text = assert_page(client.get(f"/console/users/{opened.user.id}?case={opened.case_id}"), 200)
    assert "backup codes remaining" in text and "Recent sign-ins" in text
    answer = _post(client, f"/console/users/{opened.user.id}", f"/console/users/{opened.user.id}/notes",
                   body="Called the user back <b>twice</b>")
    assert answer.status_code == 303
    page = client.get(f"/console/users/{opened.user.id}")
    assert "&lt;b&gt;twice&lt;/b&gt;" in page.get_data(as_text=True)
    csv = client.get(f"/console/audit.csv?case={opened.case_id}")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    assert "recovery.requested" in csv.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/console/queue?state=nonsense", "/console/audit.csv?case=not-an-id",
                                  "/console/audit.xml"])
def test_bad_input_is_a_4xx_page(app: Any, factory: Any, client: Any, console_clock: Any, path: str) -> None:
    who = make_console_agent(app, factory, factory.tenant(), console_clock)
    sign_in(client, who, console_clock)
    assert client.get(path).status_code in (400, 404)
