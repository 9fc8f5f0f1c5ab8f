"""Issue 4: the runbook's recovery paths as idempotent tasks, over HTTP, with the queued tasks
run in this process (`drain_tasks`). tests/e2e runs the main paths again on a real worker.

Each test asserts what a person would notice: the case's state, HTTP statuses, audit rows with
actor and reason, messages on the development channel, comments on the fake ticketing servers.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integrations.fakes import CallbackReceiver, FakeJira, FakeZendesk
from tests.recovery_paths import (
    RESET_REASON,
    TEMP_PASSWORD,
    expect_notices,
    path_admin_codes_by_phone,
    path_backup_codes,
    path_cooldown_cancel,
    path_force_reset,
    path_force_reset_security_key,
    path_privileged,
    path_report_not_me,
    path_suspected_attack,
    path_temporary_password,
)
from tests.recovery_steps import (
    PHONE,
    World,
    act,
    active_factor_count,
    assert_no_secrets,
    audit,
    case,
    cast,
    enrol_and_close,
    in_process,
    messages,
    notices,
    open_case,
    signin,
    state,
    user_row,
    verified_case,
    verify_by_video,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def world(client: Any, factory: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> Iterator[World]:
    """The test's world; afterwards, no code, password or verification code the test handed out
    may be found outside the development channel's file (audit, outbox, dead letters, fakes, logs)."""
    # The fakes listen on 127.0.0.1, which the SSRF guard refuses unless allow-listed.
    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")
    caplog.set_level(logging.DEBUG)
    world = in_process(client, factory)
    yield world
    if world.handed_out:
        assert_no_secrets(world, logs=caplog.text)


@pytest.fixture
def zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk() as fake:
        yield fake


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()) as fake:
        yield fake


# --- every path end to end ----------------------------------------------------------------------


def test_backup_codes_remain_user_signs_in_with_one_and_reenrols_without_reset(world, jira):
    path_backup_codes(world, kind="jira", fake=jira)


@pytest.mark.parametrize("kind", ["zendesk", "jira", "standard"])
def test_force_reset_routes_to_enrolment_and_closes_with_one_ticket_comment(world, kind, zendesk, jira, receiver):
    fake = {"zendesk": zendesk, "jira": jira, "standard": receiver}[kind]
    path_force_reset(world, kind=kind, fake=fake)
    if kind == "zendesk":
        assert zendesk.comments[next(iter(zendesk.comments))][0]["public"] is False  # internal note


def test_force_reset_removes_security_keys_and_a_new_key_recovers_the_case(world):
    path_force_reset_security_key(world)


def test_federated_identity_is_recommended_and_verifies_without_reset(world):
    # Issue 8, item 5: the evidence is a sign-in Rekey observed at the user's own identity
    # provider (a real local OpenID provider), started from a link sent to a phone on file.
    from integrations.fakes.oidc import FakeOpenIDProvider
    from tests.factories import LONG_AGO
    from tests.oidc_flow import channel_of, link_path, register_provider, send_link, sign_in_via_link

    with FakeOpenIDProvider(subject="1122334455") as google:
        c = cast(world, federated=[(google.issuer, "1122334455", LONG_AGO)])
        register_provider(world.app, c.tenant, google, name="Google")
        case_id = open_case(world, c)
        assert case(world, case_id, c.agent)["recommended_path"] == {
            "path": "federated_signin",
            "reason": f"A federated identity is linked ({google.issuer}): the user signs in with it "
                      "and re-enrols; no reset needed."}
        r = send_link(world.client, c.agent, case_id, channel_of(world.app, c.user))
        assert r.status_code == 200, r.json
        page = sign_in_via_link(world.client, link_path(world.factory, world.dev_outbox))
        assert page.status_code == 200, page.get_data(as_text=True)[:300]
    assert state(world, case_id, c.agent) == "verified"
    world.quiesce()
    assert audit(world, c.tenant, "mfa.factor_admin_reset") == [] and active_factor_count(world, c.user) == 1


def test_admin_codes_go_over_the_verified_phone_only(world, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    case_id, codes = path_admin_codes_by_phone(world, fake=receiver)
    assert "dev sms stored" in caplog.text  # the logs the scan reads cover the sending
    assert_no_secrets(world, fakes=(receiver,), logs=caplog.text)


def test_video_call_codes_shown_once_and_only_to_the_agent_who_saw_the_user(world, caplog):
    caplog.set_level(logging.DEBUG)
    c = cast(world)
    case_id = open_case(world, c)
    verify_by_video(world, case_id, c.agent)
    other = world.factory.agent(c.tenant)
    for who, delivery in ((other, "video_call"), (c.agent, "verified_phone")):
        r = act(world, case_id, "generate_backup_codes", who, delivery=delivery)
        assert r.status_code == 422 and r.json["error"]["code"] == "no_verified_channel", r.json
    assert audit(world, c.tenant, "mfa.backup_codes_generated") == []

    r = act(world, case_id, "generate_backup_codes", c.agent, delivery="video_call",
            reason="Lost device and app; reading codes out on the verified video call")
    assert r.status_code == 200, r.json
    codes = r.json["backup_codes"]
    world.handed_out.extend(codes)
    assert len(set(codes)) == 10 and r.json["action"] is None
    assert r.json["case"]["state"] == "awaiting_enrolment"
    again = json.dumps(case(world, case_id, c.agent)) + json.dumps(case(world, case_id, other))
    assert not any(code in again for code in codes)  # shown that once
    r = act(world, case_id, "generate_backup_codes", other, delivery="video_call")
    assert r.status_code == 422 and r.json["error"]["code"] == "no_verified_channel"
    row = audit(world, c.tenant, "mfa.backup_codes_generated")
    assert [(e.actor_type, e.actor_id) for e in row] == [("agent", str(c.agent.agent.id))] and row[0].reason
    expect_notices(world, case_id, "mfa.backup_codes_generated", c.user)

    r = signin(world, c, backup_code=codes[0])
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    enrol_and_close(world, c, case_id, r.json["token"])
    assert_no_secrets(world, logs=caplog.text)


def test_temporary_password_over_the_verified_phone_then_change_then_enrol(world, caplog):
    caplog.set_level(logging.DEBUG)
    path_temporary_password(world)
    assert_no_secrets(world, logs=caplog.text)


def test_suspected_attack_suspends_notifies_and_recovers_only_after_reverification(world):
    path_suspected_attack(world)


def test_privileged_user_reset_needs_a_different_senior_admin(world):
    path_privileged(world)


def test_cooldown_cancel_link_stops_the_reset_and_suspends(world):
    path_cooldown_cancel(world)


def test_cooldown_elapsed_without_cancel_runs_the_reset(world):
    from tests.recovery_paths import make_due

    c = cast(world, tenant_settings={"reset_cooldown_hours": 4})
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.json["action"]["status"] == "scheduled"
    world.run_task("rekey.recovery.run_scheduled", {})  # not due yet
    assert active_factor_count(world, c.user) == 1 and state(world, case_id, c.agent) == "verified"
    make_due(world, r.json["action"]["id"])
    world.run_task("rekey.recovery.run_scheduled", {})
    assert state(world, case_id, c.agent) == "awaiting_enrolment"
    assert active_factor_count(world, c.user) == 0
    assert len(audit(world, c.tenant, "mfa.factor_admin_reset", case_id)) == 1
    expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)


def test_this_wasnt_me_link_suspends_and_escalates(world):
    path_report_not_me(world)


# --- no reset without evidence ----------------------------------------------------------------------


@pytest.mark.parametrize("action", ["force_mfa_reset", "generate_backup_codes", "set_temporary_password",
                                    "approve"])
def test_destructive_action_on_unverified_case_is_409_with_state_and_allowed_actions(world, action):
    c = cast(world)
    case_id = open_case(world, c)
    r = act(world, case_id, action, c.senior, **({"action_id": str(uuid.uuid4())} if action == "approve" else {}))
    assert r.status_code == 409, r.json
    assert r.json["error"]["code"] == "invalid_state"
    details = r.json["error"]["details"]
    assert details["state"] == "awaiting_verification"
    assert "record_evidence" in details["allowed_actions"] and action not in details["allowed_actions"]
    world.quiesce()
    assert active_factor_count(world, c.user) == 1
    assert case(world, case_id, c.agent)["pending_actions"] == []


def _case_in(world: World, c: Any, where: str) -> str:
    from tests.recovery_steps import integration, request_body

    if where == "received":  # the screen task has not run yet
        found, signing = integration(world, c.tenant)
        body, headers = request_body("standard", signing, c.user.email)
        return str(world.client.post(f"/v1/webhooks/{found.id}", data=body, headers=headers).json["case_id"])
    case_id = open_case(world, c)
    verb = {"refused": "refuse", "escalated": "escalate", "suspected_attack": "suspend_user"}[where]
    assert act(world, case_id, verb, c.agent).status_code == 200
    return case_id


@pytest.mark.parametrize("where", ["received", "refused", "escalated", "suspected_attack"])
def test_no_destructive_action_outside_a_verified_case_even_for_a_senior_admin(world, where):
    c = cast(world)
    case_id = _case_in(world, c, where)
    for action in ("force_mfa_reset", "generate_backup_codes", "set_temporary_password"):
        r = act(world, case_id, action, c.senior)
        assert r.status_code == 409, (action, r.json)
        assert r.json["error"]["details"]["state"] == where
        assert action not in r.json["error"]["details"]["allowed_actions"]
    if where == "escalated":  # a support agent may not even ask
        assert act(world, case_id, "force_mfa_reset", c.agent).json["error"]["code"] == "case_escalated"
    assert active_factor_count(world, c.user) == 1
    assert case(world, case_id, c.senior)["pending_actions"] == []


@pytest.mark.parametrize("event", ["reset.scheduled", "mfa.factor_enrolled"])
def test_this_wasnt_me_link_from_any_notice_suspends_and_escalates(world, event):
    from tests.recovery_paths import make_due
    from tests.recovery_steps import give_backup_codes, links_in

    if event == "reset.scheduled":
        c = cast(world, tenant_settings={"reset_cooldown_hours": 4})
        case_id = verified_case(world, c)
        action_id = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).json["action"]["id"]
    else:
        c = cast(world)
        codes = give_backup_codes(world, c.user)
        case_id = verified_case(world, c)
        enrol_and_close(world, c, case_id, signin(world, c, backup_code=codes[0]).json["token"])
    sent = expect_notices(world, case_id, event, c.user)
    report = links_in(next(m for m in sent if m["to"] == c.user.email), "report")[0]
    r = world.client.post(report)
    assert r.status_code == 202, r.json
    detail = case(world, case_id, c.senior)
    assert detail["state"] == "suspected_attack" and detail["pending_actions"] == []
    assert user_row(world, c.user)["status"] == "suspended"
    assert act(world, case_id, "resume", c.agent).status_code == 403  # senior admins only
    assert len(audit(world, c.tenant, "security.incident_opened", case_id)) == 1
    if event == "reset.scheduled":  # the scheduled reset was voided with the suspension
        make_due(world, action_id)
        world.run_task("rekey.recovery.run_scheduled", {})
        assert active_factor_count(world, c.user) == 1
        assert audit(world, c.tenant, "mfa.factor_admin_reset") == []


@pytest.mark.parametrize("action", ["force_mfa_reset", "generate_backup_codes", "set_temporary_password"])
def test_fresh_unusual_activity_refuses_the_next_destructive_action(world, action):
    c = cast(world)
    case_id = verified_case(world, c)
    for i in range(5):  # the tenant's threshold, from addresses never seen in a good sign-in
        assert signin(world, c, "not the password", ip=f"203.0.113.{i + 1}").status_code == 401
    r = act(world, case_id, action, c.agent)
    assert r.status_code == 422 and r.json["error"]["code"] == "refused_unusual_activity", r.json
    detail = case(world, case_id, c.senior)
    assert (detail["state"], detail["refusal_trigger"]) == ("refused", "unusual_activity")
    refused = audit(world, c.tenant, "recovery.refused", case_id)
    assert refused[-1].details["trigger"] == "unusual_activity"
    assert refused[-1].details["failed_signins_from_unknown_ips"] == 5
    world.quiesce()
    assert active_factor_count(world, c.user) == 1
    for event in ("mfa.factor_admin_reset", "mfa.backup_codes_generated", "user.password_set_by_admin"):
        assert audit(world, c.tenant, event) == []
    assert messages(world, f"case:{case_id}:notify:", to=c.senior.agent.email)  # the escalation
    assert act(world, case_id, action, c.agent).status_code == 409


def test_unusual_activity_between_request_and_task_stops_the_reset(world):
    c = cast(world)
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.json["action"]["status"] == "queued"
    for i in range(5):
        signin(world, c, "not the password", ip=f"203.0.113.{i + 1}")
    world.quiesce()  # the task runs the screen again at decision time
    assert state(world, case_id, c.senior) == "refused"
    assert active_factor_count(world, c.user) == 1
    assert audit(world, c.tenant, "mfa.factor_admin_reset") == []
    assert notices(world, case_id, "mfa.factor_admin_reset") == []
    cancelled = audit(world, c.tenant, "recovery.action_cancelled", case_id)
    assert [e.details["action"] for e in cancelled] == ["force_mfa_reset"]


# --- idempotency ------------------------------------------------------------------------------------


def test_reset_task_run_twice_resets_once_and_notifies_once(world):
    c = cast(world)
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    action_id = r.json["action"]["id"]
    for _ in range(3):
        world.run_task("rekey.recovery.execute_action", {"action_id": action_id})
    assert len(audit(world, c.tenant, "mfa.factor_admin_reset")) == 1
    sent = expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)
    assert len(sent) == 2
    told = [e.details["channel_kind"] for e in audit(world, c.tenant, "user.notified", case_id)]
    assert sorted(told) == ["email", "phone"]


def test_a_reset_before_an_attack_does_not_count_for_the_real_user(world):
    """After a suspected attack the real user gets the account back only after *their* MFA reset:
    a reset carried out for the attacker (who then enrolled their own factor) must not count."""
    c = cast(world)
    case_id = verified_case(world, c)
    act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    r = signin(world, c)
    enrol_and_close(world, c, case_id, r.json["token"])  # the attacker's own factor
    report = [m for m in notices(world, case_id, "mfa.factor_admin_reset") if m["to"] == PHONE][0]
    from tests.recovery_steps import links_in, trust_again, verify_by_callback

    assert world.client.post(links_in(report, "report")[0]).status_code == 202
    assert act(world, case_id, "resume", c.senior).status_code == 200
    trust_again(world, c)  # the owner holds the phone on file again (issue 8, item 2)
    verify_by_callback(world, case_id, c.agent)
    r = act(world, case_id, "set_temporary_password", c.agent, reason="Password reset after the incident")
    assert r.status_code == 200, r.json
    sms = world.settle(lambda: messages(world, f"action:{r.json['action']['id']}", to=PHONE), "temp password")
    match = TEMP_PASSWORD.search(sms[0]["body"])
    assert match is not None
    temporary = match.group(1)
    assert active_factor_count(world, c.user) == 1  # the attacker's factor is still there
    assert user_row(world, c.user)["status"] == "suspended"
    assert audit(world, c.tenant, "user.reactivated") == []
    assert signin(world, c, temporary).status_code == 403


# --- the auditor's question ---------------------------------------------------------------------------


def cli_env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKEY_") and k != "DATABASE_URL"}
    env.update({"DATABASE_URL": settings.database_url, "REKEY_ENCRYPTION_KEYS": settings.encryption_keys,
                "REKEY_CODE_PEPPER": settings.code_pepper, "REKEY_SECRET_KEY": settings.secret_key,
                "REKEY_BROKER_URL": settings.broker_url, "REKEY_ENV": "test", "REKEY_LOG_LEVEL": "WARNING",
                "REKEY_DEV_OUTBOX": settings.dev_outbox})
    return env


def rekey(settings: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=cli_env(settings),
                          capture_output=True, text=True, timeout=60, check=False)


def test_audit_export_lists_every_reset_with_actor_and_reason(world, settings):
    c = cast(world)
    first = verified_case(world, c)
    act(world, first, "force_mfa_reset", c.agent, reason=RESET_REASON)
    second_user = world.factory.settled_user(c.tenant, email=f"second-{c.user.email}")
    from tests.recovery_steps import Cast, enrol_old_factor

    enrol_old_factor(world, second_user)
    other_agent = world.factory.agent(c.tenant)
    c2 = Cast(c.tenant, second_user, other_agent, c.senior, None)
    second = verified_case(world, c2)
    act(world, second, "force_mfa_reset", other_agent, reason="Lost phone in a taxi; video call, ticket #99")
    world.quiesce()

    out = rekey(settings, "audit", "export", "--tenant", c.tenant.slug, "--action", "mfa.factor_admin_reset")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["action"], r["actor_type"], r["actor_id"], r["reason"], r["case_id"]) for r in rows] == [
        ("mfa.factor_admin_reset", "agent", str(c.agent.agent.id), RESET_REASON, first),
        ("mfa.factor_admin_reset", "agent", str(other_agent.agent.id),
         "Lost phone in a taxi; video call, ticket #99", second)]
    assert {r["target_user_id"] for r in rows} == {str(c.user.id), str(second_user.id)}

    out = rekey(settings, "audit", "export", "--tenant", c.tenant.slug, "--action", "mfa.factor_admin_reset",
                "--format", "csv")
    assert out.returncode == 0, out.stderr
    import csv
    import io

    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(table) == 2 and all(row["reason"] and row["actor_id"] for row in table)


def test_after_an_attack_evidence_from_before_does_not_verify_the_real_user(world):
    """A tenant that wants two evidence types: after a suspected attack, the evidence the attacker
    passed (the agent was fooled on the video call) must not count towards the real user's."""
    from tests.recovery_steps import trust_again, verify_by_callback

    c = cast(world, tenant_settings={"strict_two_evidence_types": True})
    case_id = open_case(world, c)
    verify_by_video(world, case_id, c.agent)
    verify_by_callback(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "verified"
    assert act(world, case_id, "suspend_user", c.agent).status_code == 200
    [incident] = audit(world, c.tenant, "security.incident_opened", case_id)
    assert incident.details["evidence"] == ["known_number_callback", "video_call"]  # what the suspect passed
    assert act(world, case_id, "resume", c.senior).status_code == 200
    trust_again(world, c)  # the phone the suspect answered on needs a senior admin's trust first
    verify_by_callback(world, case_id, c.agent)
    detail = case(world, case_id, c.agent)
    assert detail["state"] == "awaiting_verification", "one fresh type verified a two-type tenant's case"
    assert act(world, case_id, "force_mfa_reset", c.agent).status_code == 409
    verify_by_video(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "verified"
