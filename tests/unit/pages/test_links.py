"""The notice-link pages: a GET (a person, a mail scanner, a link preview) shows what the notice
was about and changes nothing; only the confirming POST, with its CSRF token, acts; every link
that cannot be used gets one page; old `/v1/recovery/...` links lead to their page."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from app.extensions import db, utcnow
from app.recovery.models import RecoveryLink
from app.recovery.notify import NOTICES
from tests.recovery_paths import RESET_REASON, expect_notices
from tests.recovery_steps import (
    PHONE,
    World,
    act,
    audit,
    case,
    cast,
    in_process,
    messages,
    open_case,
    page_links_in,
    state,
    user_row,
    verified_case,
)
from tests.webpages import assert_page, assert_same_database, database_state, form_token, main_text, submit


@pytest.fixture
def world(client: Any, factory: Any) -> World:
    return in_process(client, factory)


def _reset_notice(world: World, **case_kw: Any) -> tuple[Any, str, dict[str, Any]]:
    """A verified case, the force reset carried out, and the notice the phone got."""
    c = cast(world)
    case_id = verified_case(world, c, **case_kw)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    sent = expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)
    return c, case_id, next(m for m in sent if m["to"] == PHONE)


def test_notice_links_to_its_page_and_names_the_signin_page(world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [page] = page_links_in(notice, "report")
    assert page.startswith(f"/t/{c.tenant.slug}/links/report/")
    assert f"http://localhost:5000/t/{c.tenant.slug}/signin" in notice["body"]
    assert "/v1/recovery/" not in notice["body"]


def test_report_page_shows_the_notice_and_a_scanner_fetching_it_changes_nothing(app: Any, world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    before = database_state(app)
    for _ in range(3):  # a mail scanner, a link preview, the person
        page = world.client.get(path)
        assert world.client.head(path).status_code == 200
    assert_same_database(before, database_state(app))
    text = assert_page(page, 200)
    assert NOTICES["mfa.factor_admin_reset"] in text
    assert case_id in text and "Lost phone" in text
    assert re.search(r"When \d{4}-\d\d-\d\d \d\d:\d\d UTC", text), text
    assert page.headers["Referrer-Policy"] == "no-referrer"  # the token is in the path
    assert page.headers["Cache-Control"] == "no-store"
    assert state(world, case_id, c.agent) == "awaiting_enrolment"
    assert user_row(world, c.user)["status"] == "active"


def test_report_confirm_suspends_the_account_and_escalates_the_case(world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    done = submit(world.client, path)
    text = assert_page(done, 200)
    assert "Your account is secured" in text
    assert done.headers["Referrer-Policy"] == "no-referrer"
    assert state(world, case_id, c.senior) == "suspected_attack"
    assert user_row(world, c.user)["status"] == "suspended"
    reported = audit(world, c.tenant, "recovery.reported_not_me", case_id)
    assert [(e.actor_type, e.actor_id) for e in reported] == [("user_report", str(c.user.id))]
    assert len(audit(world, c.tenant, "security.incident_opened", case_id)) == 1
    assert act(world, case_id, "resume", c.agent).status_code == 403  # senior admins only now
    # Used: the same link, opened or confirmed again, is the one invalid-link page.
    assert "This link cannot be used" in assert_page(world.client.get(path), 404)


def test_cancel_page_says_when_the_reset_runs_and_confirm_cancels_it(world: World) -> None:
    c = cast(world, tenant_settings={"reset_cooldown_hours": 4})
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.json["action"]["status"] == "scheduled"
    sent = expect_notices(world, case_id, "reset.scheduled", c.user)
    [path] = page_links_in(sent[0], "cancel")
    text = assert_page(world.client.get(path), 200)
    assert NOTICES["reset.scheduled"] in text
    runs_at = r.json["action"]["execute_after"][:16].replace("T", " ")
    assert f"The reset runs at {runs_at} UTC" in text
    assert case(world, case_id, c.agent)["pending_actions"], "the GET cancelled nothing"

    text = assert_page(submit(world.client, path), 200)
    assert "The reset is cancelled" in text
    detail = case(world, case_id, c.senior)
    assert detail["state"] == "suspected_attack" and detail["pending_actions"] == []
    assert len(audit(world, c.tenant, "recovery.reset_cancelled", case_id)) == 1


def test_confirm_without_the_csrf_token_is_refused_and_changes_nothing(app: Any, world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    page = world.client.get(path)
    before = database_state(app)
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}, {"csrf_token": form_token(page)[:-1] + "0"},
                 {"csrf_token": "é" * 64}):
        text = assert_page(world.client.post(path, data=data), 403)
        assert "Nothing was changed" in text
    assert_same_database(before, database_state(app))
    assert user_row(world, c.user)["status"] == "active"
    assert "Your account is secured" in main_text(submit(world.client, path))  # the link still works


def test_a_token_from_another_browser_is_refused(app: Any, world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    attacker = app.test_client()
    stolen = form_token(attacker.get(path))  # valid for the attacker's own CSRF cookie only
    world.client.get(path)
    assert_page(world.client.post(path, data={"csrf_token": stolen}), 403)
    assert user_row(world, c.user)["status"] == "active"


def test_confirm_announced_cross_site_is_refused(world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    token = form_token(world.client.get(path))
    answer = world.client.post(path, data={"csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"})
    assert "another site" in assert_page(answer, 403)
    assert user_row(world, c.user)["status"] == "active"


def test_script_post_with_the_csrf_header_is_accepted(world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    token = form_token(world.client.get(path))
    assert_page(world.client.post(path, headers={"X-CSRF-Token": token}), 200)
    assert user_row(world, c.user)["status"] == "suspended"


def _one_page(client: Any, path: str) -> str:
    return assert_page(client.get(path), 404)


def test_invalid_used_expired_and_other_tenant_links_show_one_page(app: Any, world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    token = path.rsplit("/", 1)[1]
    other = world.factory.tenant()
    other_tenant = f"/t/{other.slug}/links/report/{token}"
    cancel_purpose = path.replace("/links/report/", "/links/cancel/")
    forged = path[:-6] + ("0" * 6 if not path.endswith("0" * 6) else "1" * 6)
    unknown = f"/t/{c.tenant.slug}/links/report/{uuid.uuid4().hex}.{'0' * 64}"
    texts = {_one_page(world.client, p) for p in (other_tenant, cancel_purpose, forged, unknown)}
    # The other tenant's page POST acts on nothing either.
    page = world.client.get(f"/t/{other.slug}/links/report/{'x' * 10}")
    assert_page(world.client.post(other_tenant, data={"csrf_token": form_token_or_empty(page)}), 404)
    assert user_row(world, c.user)["status"] == "active"

    with app.app_context():
        db.session.execute(update(RecoveryLink).where(RecoveryLink.case_id == uuid.UUID(case_id))
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    texts.add(_one_page(world.client, path))  # expired
    assert len(texts) == 1, texts
    assert "This link cannot be used" in texts.pop()


def form_token_or_empty(page: Any) -> str:
    found = re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page.get_data(as_text=True))
    return found.group(1) if found else ""


def test_old_link_address_answers_303_to_its_page(world: World) -> None:
    c, case_id, notice = _reset_notice(world)
    [path] = page_links_in(notice, "report")
    token = path.rsplit("/", 1)[1]
    old = world.client.get(f"/v1/recovery/report/{token}")
    assert old.status_code == 303
    assert old.headers["Location"] == path
    assert old.headers["Referrer-Policy"] == "no-referrer"
    assert user_row(world, c.user)["status"] == "active"
    # The old address of an unusable link is the invalid-link page itself (there is no tenant).
    assert "This link cannot be used" in assert_page(world.client.get(f"/v1/recovery/cancel/{token}"), 404)
    # ...and the JSON POST API at the old address stays.
    assert world.client.post(f"/v1/recovery/report/{token}").status_code == 202
    assert user_row(world, c.user)["status"] == "suspended"


def test_unknown_tenant_is_the_plain_not_found_page(world: World) -> None:
    c = cast(world, lost_totp=False)
    for path in ("/t/no-such-tenant/links/report/abc", "/t/no-such-tenant/anything", f"/t/{c.tenant.slug}/nothing"):
        text = assert_page(world.client.get(path), 404)
        assert text.startswith("Page not found") or "This link cannot be used" in text, text
    assert "Page not found" in assert_page(world.client.post("/t/no-such-tenant/links/report/abc"), 404)


def test_hostile_ticket_subject_and_account_name_render_inert(world: World) -> None:
    hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)> \' onmouseover=\'alert(3)'
    c = cast(world, display_name=hostile)
    case_id = verified_case(world, c, subject=hostile)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    sent = expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)
    page = world.client.get(page_links_in(sent[0], "report")[0])
    body = page.get_data(as_text=True)
    assert "<script>alert" not in body and "<img src=x" not in body and "onmouseover='" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in body
    assert main_text(page).count(hostile) == 2  # shown as text: the subject and the account name


def test_temporary_password_text_names_the_signin_page(world: World) -> None:
    c = cast(world)
    case_id = verified_case(world, c)
    r = act(world, case_id, "set_temporary_password", c.agent, reason=RESET_REASON, delivery="verified_phone")
    assert r.status_code == 200, r.json
    key = f"action:{r.json['action']['id']}"  # every test user has the same phone number
    world.settle(lambda: messages(world, key, to=PHONE), "the temporary password texted")
    [sms] = messages(world, key, to=PHONE)
    assert f"sign in at http://localhost:5000/t/{c.tenant.slug}/signin" in sms["body"]
    sent = expect_notices(world, case_id, "user.password_set_by_admin", c.user)
    assert all(f"/t/{c.tenant.slug}/signin" in m["body"] for m in sent)


def test_open_case_notice_without_a_reset_names_no_signin_page(world: World) -> None:
    c = cast(world)
    case_id = open_case(world, c)
    reason = "The caller could not say where they work"
    assert act(world, case_id, "suspend_user", c.agent, reason=reason).status_code == 200
    sent = expect_notices(world, case_id, "user.suspended", c.user)
    assert all("/signin" not in m["body"] and page_links_in(m, "report") for m in sent)
