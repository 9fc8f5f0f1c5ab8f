"""The agent console in a real browser (Debian Chromium through Playwright, Chrome's virtual
authenticator as the agents' security keys), against the app on localhost with the real worker
carrying out the tasks (issue 10's browser tests).

Every agent here starts from their invitation link: chooses a password, signs in, registers a
security key at the first sign-in, and lands on the queue.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from app.actor import Actor
from tests.browser.conftest import add_virtual_authenticator
from tests.recovery_paths import RESET_REASON
from tests.recovery_steps import (
    PHONE,
    active_factor_count,
    audit,
    bearer,
    cast,
    enrol,
    messages,
    open_case,
    signin,
    state,
    verify_by_callback,
    verify_by_video,
)

AGENT_PASSWORD = "the console passphrase of an agent"


def console_agent(world: Any, browser: Any, live_server: Any, tenant: Any, role: str = "support_agent",
                  login: Any = None) -> tuple[Any, Any]:
    """A new browser context for a new (or given) agent: invitation → password → first sign-in →
    security key registered (virtual authenticator) → queue. Returns (page, the agent's login)."""
    from app.console.credentials import invite_agent
    from app.extensions import db
    from app.tenants.models import Agent

    login = login or world.factory.agent(tenant, role)
    with world.app.app_context():
        link = invite_agent(Actor.system(tenant.id), db.session.get(Agent, login.agent.id))
        db.session.commit()
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.authenticator = add_virtual_authenticator(page)
    assert link.startswith(live_server.url)
    page.goto(link)
    page.get_by_label("Password", exact=True).fill(AGENT_PASSWORD)
    page.get_by_label("Again").fill(AGENT_PASSWORD)
    page.get_by_role("button", name="Set password").click()
    # The sign-in form arrives with the tenant (and email) prefilled from the invitation.
    expect(page.get_by_label("Organisation (tenant)")).to_have_value(tenant.slug)
    page.get_by_label("Password").fill(AGENT_PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("heading", name="Set up your second factor").wait_for()
    page.get_by_role("button", name="Register a security key").click()
    page.get_by_role("heading", name="Recovery cases").wait_for()
    assert len(page.authenticator.credentials()) == 1
    return page, login


def sign_in_with_key(page: Any, tenant: Any, login: Any) -> None:
    page.goto(f"/console/signin?tenant={tenant.slug}")
    page.get_by_label("Email").fill(login.agent.email)
    page.get_by_label("Password").fill(AGENT_PASSWORD)
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("button", name="Use my security key").click()
    page.get_by_role("heading", name="Recovery cases").wait_for()


def action_form(page: Any, action: str) -> Any:
    return page.locator(f'form[data-action="{action}"]')


def take(page: Any, action: str, reason: str, *, confirm: bool = False) -> None:
    form = action_form(page, action)
    form.get_by_label("Reason").fill(reason)
    if confirm:
        form.get_by_role("checkbox", name="cannot be undone").check()
    form.get_by_role("button").click()


def test_the_whole_runbook_in_the_console(world: Any, browser: Any, live_server: Any, tune: Any,
                                          app: Any) -> None:
    c = cast(world)
    page, me = console_agent(world, browser, live_server, c.tenant)
    sign_in_with_key(page, c.tenant, me)  # a second sign-in, with the key
    case_id = open_case(world, c)  # the webhook opens it; the worker screens it

    # The queue shows it; open it.
    page.goto("/console/queue")
    page.locator(f'a[href="/console/cases/{case_id}"]').click()
    expect(page.get_by_test_id("case-state")).to_have_text("awaiting verification")

    # Email match: refused, with the runbook's reason, and the refused attempt recorded.
    form = page.locator(f'form[action="/console/cases/{case_id}/evidence"]')
    form.get_by_label("Method").select_option("email_match")
    form.get_by_label("Reason").fill("The caller's email matches the account")
    form.get_by_role("button", name="Record evidence").click()
    expect(page.get_by_test_id("refusal")).to_contain_text("phishing-trivial")
    assert len(audit(world, c.tenant, "recovery.evidence_rejected", case_id)) == 1

    # The verification call: the system texts the phone on file; the code comes back.
    page.get_by_role("button", name="Send a code").click()
    confirm = page.locator(f'form[action^="/console/cases/{case_id}/calls/"]')
    call_id = confirm.get_attribute("action").split("/calls/", 1)[1].split("/", 1)[0]
    sent = world.settle(lambda: messages(world, f"verification-call:{call_id}", to=PHONE),
                        "the code texted to the phone on file")
    code = sent[-1]["body"].split("code is ", 1)[1].split(".", 1)[0].replace(" ", "")
    expect(page.get_by_text("5 attempts left")).to_be_visible()
    page.get_by_label("Code the user reads back").fill(code)
    page.get_by_role("button", name="Confirm code").click()
    expect(page.get_by_test_id("case-state")).to_have_text("verified")

    # Force the reset: the sign-in's second factor is too old now (window shortened), so the key
    # is asked for again before anything happens.
    tune(console_step_up_seconds=0)
    take(page, "force_mfa_reset", RESET_REASON, confirm=True)
    step_up = page.get_by_test_id("step-up")
    expect(step_up).to_be_visible()
    assert state(world, case_id, c.agent) == "verified"
    tune(console_step_up_seconds=300)
    step_up.get_by_role("button", name="Confirm with my security key").click()
    expect(page.get_by_test_id("result")).to_contain_text("queued")

    # The worker resets; the user enrols in another context (the JSON API); the agent's page
    # follows without a reload.
    world.settle(lambda: state(world, case_id, c.agent) in ("awaiting_enrolment", "recovered", "closed"),
                 "the reset carried out")
    r = signin(world, c)
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    enrol(world, r.json["token"])
    expect(page.get_by_test_id("case-state")).to_have_text("closed", timeout=30_000)
    expect(page.locator(".timeline")).to_contain_text("recovery.follow_up_sent")
    expect(page.locator(".timeline")).to_contain_text("recovery.recovered")

    # The audit CSV holds the reset with its actor and reason.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    reset = [r for r in rows if r["action"] == "mfa.factor_admin_reset"]
    assert len(reset) == 1 and reset[0]["reason"] == RESET_REASON and reset[0]["actor_id"] == str(me.agent.id)
    # The refusals' own 4xx statuses are logged by the browser; anything else (a CSP violation, a
    # script error) is a broken page.
    errors = [e for e in page.console_errors if not e.startswith("Failed to load resource: the server "
                                                                 "responded with a status of 4")]
    assert errors == [], errors
    page.context.close()


def test_privileged_user_needs_a_second_senior_admin(world: Any, browser: Any, live_server: Any) -> None:
    c = cast(world, privileged=True)
    case_id = open_case(world, c, expect="escalated")
    first, first_login = console_agent(world, browser, live_server, c.tenant, "senior_admin", login=c.senior)
    first.goto(f"/console/cases/{case_id}")
    take(first, "resume", "Privileged user; proceed with two evidence types")
    expect(first.get_by_test_id("case-state")).to_have_text("awaiting verification")
    verify_by_callback(world, case_id, c.agent)
    verify_by_video(world, case_id, c.senior)
    first.goto(f"/console/cases/{case_id}")
    expect(first.get_by_test_id("case-state")).to_have_text("verified")
    take(first, "force_mfa_reset", RESET_REASON, confirm=True)
    expect(first.get_by_test_id("result")).to_contain_text("awaiting approval")
    # The requester cannot approve their own request.
    first.goto(f"/console/cases/{case_id}")
    take(first, "approve", "I approve my own request", confirm=True)
    expect(first.get_by_test_id("refusal")).to_be_visible()
    assert active_factor_count(world, c.user) == 1

    second, _ = console_agent(world, browser, live_server, c.tenant, "senior_admin")
    second.goto("/console/queue")
    expect(second.get_by_text("approve force mfa reset")).to_be_visible()  # what awaits them
    second.goto(f"/console/cases/{case_id}")
    take(second, "approve", "Second person: evidence reviewed", confirm=True)
    expect(second.get_by_test_id("result")).to_contain_text("queued")
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the approved reset")
    assert active_factor_count(world, c.user) == 0
    first.context.close()
    second.context.close()


def test_suspected_attack_support_cannot_act_senior_can(world: Any, browser: Any, live_server: Any,
                                                        app: Any) -> None:
    c = cast(world)
    for _ in range(6):  # unusual sign-in activity from addresses never seen in a success
        assert signin(world, c, "wrong password, attacker", ip="203.0.113.66").status_code == 401
    case_id = open_case(world, c, expect="refused")
    support, _ = console_agent(world, browser, live_server, c.tenant, login=c.agent)
    support.goto(f"/console/cases/{case_id}")
    expect(support.get_by_test_id("case-state")).to_have_text("refused")
    expect(support.get_by_test_id("allowed-actions")).to_contain_text("read-only for you")
    assert support.locator("form.action").count() == 0
    senior, _ = console_agent(world, browser, live_server, c.tenant, login=c.senior)
    senior.goto(f"/console/cases/{case_id}")
    take(senior, "reopen", "Real user reached by phone; the failed sign-ins were theirs")
    expect(senior.get_by_test_id("case-state")).to_have_text("awaiting verification")
    support.context.close()
    senior.context.close()


def test_idle_timeout_and_step_up_expiry(world: Any, browser: Any, live_server: Any, tune: Any) -> None:
    c = cast(world)
    case_id = open_case(world, c)
    page, login = console_agent(world, browser, live_server, c.tenant)
    # A destructive action without a recent step-up asks for the key again.
    tune(console_step_up_seconds=0)
    page.goto(f"/console/cases/{case_id}")
    take(page, "suspend_user", "Caller could not answer", confirm=True)
    expect(page.get_by_test_id("step-up")).to_be_visible()
    assert state(world, case_id, c.agent) == "awaiting_verification"
    tune(console_step_up_seconds=300)
    # The session idles out.
    tune(console_idle_timeout_seconds=1)
    page.wait_for_timeout(1500)
    page.goto("/console/queue")
    page.get_by_role("heading", name="Sign in to the agent console").wait_for()
    tune(console_idle_timeout_seconds=900)
    sign_in_with_key(page, c.tenant, login)
    page.context.close()
    assert bearer  # the API door stays as it was (tested in tests/unit/console/test_step_up.py)
