"""The runbook's paths end to end, written once and run twice: in process (queued tasks drained
here) and against a real Celery worker (tests/e2e). See tests/recovery_steps.py for the steps."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pyotp

from tests.factories import PHONE
from tests.recovery_steps import (
    BACKUP_CODE,
    JIRA_ISSUE,
    NEW_PASSWORD,
    OTHER_PHONE,
    TENANT_HEADER,
    ZENDESK_TICKET,
    World,
    act,
    active_factor_count,
    add_channel_now,
    assert_restricted,
    audit,
    bearer,
    case,
    cast,
    enrol_and_close,
    give_backup_codes,
    links_in,
    messages,
    notices,
    open_case,
    open_session,
    signin,
    state,
    trust_again,
    user_row,
    verified_case,
    verify_by_callback,
    verify_by_video,
)

RESET_REASON = "Lost device; identity verified via callback to the number on file, see ticket #1234"
TEMP_PASSWORD = re.compile(r"temporary password is (\S+) \.")


def ticket_comments(fake: Any, kind: str) -> list[str]:
    """The comments the ticketing system holds, as text."""
    if kind == "zendesk":
        return [c["body"] for c in fake.comments.get(ZENDESK_TICKET, [])]
    if kind == "jira":
        return list(fake.texts(JIRA_ISSUE))
    return [d["data"]["message"] for d in fake.deliveries]


def expect_one_comment(world: World, fake: Any, kind: str, case_id: str) -> str:
    """Runbook step 5's status comment: on the originating ticket, exactly once."""
    world.settle(lambda: ticket_comments(fake, kind), f"a status comment on the {kind} ticket")
    world.quiesce()
    comments = ticket_comments(fake, kind)
    assert len(comments) == 1, comments
    assert f"case {case_id}" in comments[0] and "complete" in comments[0]
    assert comments[0].rstrip().endswith(f"[rekey:rekey-case-{case_id}]")
    return comments[0]


def expect_notices(world: World, case_id: str, event: str, user: Any) -> list[dict[str, Any]]:
    """One notice per channel the user had before the case opened; none to a newer one."""
    sent = world.settle(lambda: len(notices(world, case_id, event)) >= 2 and notices(world, case_id, event),
                        f"{event} notices to the email and the phone on file")
    world.quiesce()
    sent = notices(world, case_id, event)
    assert sorted(m["to"] for m in sent) == sorted([user.email, PHONE]), [m["to"] for m in sent]
    for m in sent:
        assert len(links_in(m, "report")) == 1, m["body"]  # "this wasn't me", no sign-in needed
    assert messages(world, f"notice:{case_id}", to=OTHER_PHONE) == []
    return sent


def expect_one_audit(world: World, c: Any, action: str, case_id: str, actor: Any, reason: str | None = None) -> Any:
    rows = audit(world, c.tenant, action, case_id)
    assert len(rows) == 1, [(r.action, r.actor_id) for r in rows]
    row = rows[0]
    assert (row.actor_type, row.actor_id) == ("agent", str(actor.agent.id))
    assert row.reason and row.reason.strip()
    if reason is not None:
        assert row.reason == reason
    return row


# --- runbook step 2: backup codes remain ---------------------------------------------------------


def path_backup_codes(world: World, *, kind: str = "standard", fake: Any = None) -> str:
    c = cast(world)
    codes = give_backup_codes(world, c.user)
    case_id = verified_case(world, c, kind=kind, fake=fake)
    detail = case(world, case_id, c.agent)
    assert detail["recommended_path"]["path"] == "use_backup_code", detail["recommended_path"]
    assert "10 backup codes remain" in detail["recommended_path"]["reason"]

    r = act(world, case_id, "force_mfa_reset", c.agent)
    assert r.status_code == 422 and r.json["error"]["code"] == "backup_codes_remain", r.json
    assert r.json["error"]["details"] == {"remaining": 10}

    r = signin(world, c, backup_code=codes[0])
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    token = r.json["token"]
    assert_restricted(world, token)
    used = audit(world, c.tenant, "mfa.backup_code_used")
    assert [(e.actor_type, e.actor_id) for e in used] == [("user", str(c.user.id))]

    enrol_and_close(world, c, case_id, token)
    assert audit(world, c.tenant, "mfa.factor_admin_reset") == []  # the user owned the recovery
    if fake is not None:
        expect_one_comment(world, fake, kind, case_id)

    # Asking for the follow-up again sends nothing more.
    r = act(world, case_id, "send_follow_up", c.agent)
    assert r.status_code == 200, r.json
    world.quiesce()
    assert len(messages(world, f"follow-up:{case_id}", to=c.user.email)) == 1
    assert len(audit(world, c.tenant, "recovery.follow_up_sent", case_id)) == 1
    if fake is not None:
        assert len(ticket_comments(fake, kind)) == 1
    return case_id


# --- runbook step 3-4: force MFA reset -----------------------------------------------------------


def path_force_reset(world: World, *, kind: str = "standard", fake: Any = None) -> str:
    c = cast(world)
    old_session = open_session(world, c.user)
    case_id = verified_case(world, c, kind=kind, fake=fake)
    assert case(world, case_id, c.agent)["recommended_path"]["path"] == "force_mfa_reset"

    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200 and r.json["action"]["status"] == "queued", r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset carried out")
    row = expect_one_audit(world, c, "mfa.factor_admin_reset", case_id, c.agent, RESET_REASON)
    assert row.details["factors_removed"] == 1 and row.details["sessions_revoked"] == 1
    assert row.details["evidence"] == ["known_number_callback"]
    assert active_factor_count(world, c.user) == 0
    r = world.client.post("/v1/auth/enrol/totp", headers=bearer(old_session))
    assert r.status_code == 401  # every session was revoked with the factors
    expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)

    # The case cannot close before the user has enrolled.
    for action in ("close", "send_follow_up"):
        r = act(world, case_id, action, c.agent)
        assert r.status_code == 409 and r.json["error"]["details"]["state"] == "awaiting_enrolment", r.json

    r = signin(world, c)  # email + password only now route to enrolment
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    token = r.json["token"]
    assert_restricted(world, token)
    r = world.client.post("/v1/auth/backup-codes", headers=bearer(token))
    assert r.status_code == 403 and r.json["error"]["code"] == "restricted_session"
    enrol_and_close(world, c, case_id, token)
    expect_notices(world, case_id, "mfa.factor_enrolled", c.user)
    if fake is not None:
        expect_one_comment(world, fake, kind, case_id)
    return case_id


# --- "the user can't enrol a new factor either" ----------------------------------------------------


def path_admin_codes_by_phone(world: World, *, fake: Any = None) -> tuple[str, list[str]]:
    c = cast(world)
    case_id = verified_case(world, c, fake=fake)
    r = act(world, case_id, "generate_backup_codes", c.agent,
            reason="Lost device and authenticator app; verified by callback, ticket #1234")
    assert r.status_code == 200 and r.json["action"]["status"] == "queued", r.json
    assert "backup_codes" not in r.json
    answer = json.dumps(r.json)
    action_id = r.json["action"]["id"]
    sms = world.settle(lambda: messages(world, f"action:{action_id}", to=PHONE),
                       "the codes texted to the verified phone")
    assert len(sms) == 1 and sms[0]["channel"] == "sms"
    codes = BACKUP_CODE.findall(sms[0]["body"])
    assert len(set(codes)) == 10
    world.handed_out.extend(codes)
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "codes issued")
    seen_by_agent = answer + json.dumps(case(world, case_id, c.agent))
    assert not any(code in seen_by_agent for code in codes)
    row = audit(world, c.tenant, "mfa.backup_codes_generated")[-1]
    assert (row.actor_type, row.actor_id, row.details["by"]) == ("agent", str(c.agent.agent.id), "admin")
    assert row.reason
    expect_notices(world, case_id, "mfa.backup_codes_generated", c.user)

    r = signin(world, c, backup_code=codes[3])
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    assert_restricted(world, r.json["token"])
    enrol_and_close(world, c, case_id, r.json["token"])
    if fake is not None:
        expect_one_comment(world, fake, "standard", case_id)
    return case_id, codes


# --- "the user can't access their email" -----------------------------------------------------------


def path_temporary_password(world: World) -> str:
    c = cast(world)
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset carried out")

    chosen = "Admin-Chosen-Passw0rd-2026"
    for name in ("password", "temporary_password", "new_password", "value"):
        r = act(world, case_id, "set_temporary_password", c.agent, **{name: chosen})
        assert r.status_code == 400 and r.json["error"]["code"] == "validation_error", (name, r.json)
    r = act(world, case_id, "set_temporary_password", c.agent,
            reason="User cannot read email; temporary password over the verified phone")
    assert r.status_code == 200 and r.json["action"]["status"] == "queued", r.json
    action_id = r.json["action"]["id"]
    sms = world.settle(lambda: messages(world, f"action:{action_id}", to=PHONE),
                       "the temporary password texted to the verified phone")
    match = TEMP_PASSWORD.search(sms[0]["body"])
    assert match, sms[0]["body"]
    temporary = match.group(1)
    world.handed_out.append(temporary)
    assert len(temporary) >= 15 and temporary != chosen
    assert temporary not in json.dumps(r.json) + json.dumps(case(world, case_id, c.agent))
    row = expect_one_audit(world, c, "user.password_set_by_admin", case_id, c.agent)
    assert row.details["generated_by"] == "rekey"
    expect_notices(world, case_id, "user.password_set_by_admin", c.user)

    assert signin(world, c).status_code == 401  # the old password is gone
    assert signin(world, c, chosen).status_code == 401
    r = signin(world, c, temporary)
    assert r.status_code == 200 and r.json["status"] == "password_change_required", r.json
    token = r.json["token"]
    assert_restricted(world, token)
    assert signin(world, c, temporary).status_code == 401  # it worked once
    r = world.client.post("/v1/auth/password", json={"new_password": NEW_PASSWORD}, headers=bearer(token))
    assert r.status_code == 200, r.json
    enrol_and_close(world, c, case_id, token)
    r = signin(world, c, NEW_PASSWORD)
    assert r.status_code == 200 and r.json["status"] == "mfa_required", r.json
    return case_id


# --- "the request was actually a social-engineering attack" -----------------------------------------


def path_suspected_attack(world: World) -> str:
    c = cast(world)
    old_session = open_session(world, c.user)
    case_id = verified_case(world, c)
    add_channel_now(world, c.user)  # added after the case opened: never told
    reason = "Caller hesitated on details; the number on file says they did not ask: suspected attack"
    r = act(world, case_id, "suspend_user", c.agent, reason=reason)
    assert r.status_code == 200 and r.json["case"]["state"] == "suspected_attack", r.json
    assert user_row(world, c.user)["status"] == "suspended"
    assert c.totp_secret is not None
    r = signin(world, c, otp=pyotp.TOTP(c.totp_secret).now())
    assert r.status_code == 403 and r.json["error"]["code"] == "account_suspended", r.json
    r = world.client.post("/v1/auth/enrol/totp", headers=bearer(old_session))
    assert r.status_code == 401
    expect_one_audit(world, c, "user.suspended", case_id, c.agent, reason)
    incident = expect_one_audit(world, c, "security.incident_opened", case_id, c.agent, reason)
    assert incident.details["kind"] == "suspected_social_engineering"
    expect_notices(world, case_id, "user.suspended", c.user)

    # Only a senior admin lifts it, and the real user is verified again from the start.
    r = act(world, case_id, "resume", c.agent)
    assert r.status_code == 403, r.json
    r = act(world, case_id, "resume", c.senior, reason="Real user reached on the number on file")
    assert r.status_code == 200 and r.json["case"]["state"] == "awaiting_verification", r.json
    # The phone the suspect answered on verifies nobody until a senior admin trusts it again.
    assert case(world, case_id, c.agent)["callable_channels"][0]["callable"] is False
    trust_again(world, c)
    verify_by_callback(world, case_id, c.agent)  # the phone added during the case is not callable
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the real MFA reset")
    assert user_row(world, c.user)["status"] == "suspended"  # a new password is still owed
    r = act(world, case_id, "set_temporary_password", c.agent, reason="Password reset after the incident")
    assert r.status_code == 200, r.json
    action_id = r.json["action"]["id"]
    sms = world.settle(lambda: messages(world, f"action:{action_id}", to=PHONE), "the temporary password")
    temporary = TEMP_PASSWORD.search(sms[0]["body"]).group(1)  # type: ignore[union-attr]
    world.handed_out.append(temporary)
    world.settle(lambda: user_row(world, c.user)["status"] == "active", "the user reactivated")
    assert len(audit(world, c.tenant, "user.reactivated", case_id)) == 1
    r = signin(world, c, temporary)
    assert r.status_code == 200 and r.json["status"] == "password_change_required", r.json
    return case_id


# --- privileged users: two-person rule ---------------------------------------------------------------


def path_privileged(world: World) -> str:
    c = cast(world, privileged=True)
    case_id = open_case(world, c, expect="escalated")
    assert "privileged" in case(world, case_id, c.senior)["flags"]
    r = act(world, case_id, "resume", c.senior, reason="Privileged user; proceed with two evidence types")
    assert r.status_code == 200, r.json
    verify_by_callback(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "awaiting_verification"  # one type is not enough here
    verify_by_video(world, case_id, c.senior)  # a second person records the second type
    assert state(world, case_id, c.agent) == "verified"

    r = act(world, case_id, "force_mfa_reset", c.senior, reason=RESET_REASON)
    assert r.status_code == 200 and r.json["action"]["status"] == "awaiting_approval", r.json
    action_id = r.json["action"]["id"]
    r = act(world, case_id, "approve", c.senior, action_id=action_id)
    assert r.status_code == 403 and r.json["error"]["code"] == "same_person", r.json
    r = act(world, case_id, "approve", c.agent, action_id=action_id)
    assert r.status_code == 403, r.json
    world.quiesce()
    assert active_factor_count(world, c.user) == 1 and audit(world, c.tenant, "mfa.factor_admin_reset") == []

    second = world.factory.agent(c.tenant, "senior_admin")
    r = act(world, case_id, "approve", second, action_id=action_id, reason="Second person: evidence reviewed")
    assert r.status_code == 200 and r.json["action"]["status"] == "queued", r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the approved reset")
    row = expect_one_audit(world, c, "mfa.factor_admin_reset", case_id, c.senior, RESET_REASON)
    assert row.details["approved_by"] == str(second.agent.id)
    expect_one_audit(world, c, "recovery.action_approved", case_id, second)
    assert active_factor_count(world, c.user) == 0
    return case_id


# --- the optional cooldown ------------------------------------------------------------------------------


def make_due(world: World, action_id: str) -> None:
    """Move the cooldown's end into the past (as if four hours went by)."""
    from app.extensions import db, utcnow
    from app.recovery.models import CaseAction

    with world.app.app_context():
        row = db.session.get(CaseAction, uuid.UUID(action_id))
        assert row is not None
        row.execute_after = utcnow() - timedelta(seconds=1)
        db.session.commit()


def path_cooldown_cancel(world: World) -> str:
    c = cast(world, tenant_settings={"reset_cooldown_hours": 4})
    case_id = verified_case(world, c)
    add_channel_now(world, c.user)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200 and r.json["action"]["status"] == "scheduled", r.json
    action_id = r.json["action"]["id"]
    due = datetime.fromisoformat(r.json["action"]["execute_after"])
    assert abs(due - datetime.now(UTC) - timedelta(hours=4)) < timedelta(minutes=1), due
    sent = expect_notices(world, case_id, "reset.scheduled", c.user)
    # Each notice carries a cancel link of its own (a token is sealed only until its own notice
    # is sent), valid for the cooldown.
    cancel_links = {link for m in sent for link in links_in(m, "cancel")}
    assert len(cancel_links) == len(sent) and all(len(links_in(m, "cancel")) == 1 for m in sent)
    assert active_factor_count(world, c.user) == 1 and state(world, case_id, c.agent) == "verified"

    cancel = cancel_links.pop()
    r = world.client.post(cancel)
    assert r.status_code == 202 and r.json == {"status": "cancelled"}, r.json
    detail = case(world, case_id, c.senior)
    assert detail["state"] == "suspected_attack" and detail["pending_actions"] == []
    assert user_row(world, c.user)["status"] == "suspended"
    assert active_factor_count(world, c.user) == 1  # no factor removed
    r = world.client.post(cancel)
    assert r.status_code == 404  # single use

    # The cooldown running out later changes nothing: the cancelled reset never runs.
    make_due(world, action_id)
    world.run_task("rekey.recovery.run_scheduled", {})
    assert active_factor_count(world, c.user) == 1
    assert audit(world, c.tenant, "mfa.factor_admin_reset") == []
    return case_id


def path_report_not_me(world: World) -> str:
    c = cast(world)
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200, r.json
    sent = expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)
    report = links_in(next(m for m in sent if m["to"] == PHONE), "report")[0]
    r = signin(world, c)
    assert r.json["status"] == "enrolment_required"
    session = r.json["token"]

    r = world.client.post(report)
    assert r.status_code == 202 and r.json == {"status": "reported"}, r.json
    assert state(world, case_id, c.senior) == "suspected_attack"
    assert user_row(world, c.user)["status"] == "suspended"
    assert world.client.post("/v1/auth/enrol/totp", headers=bearer(session)).status_code == 401
    assert signin(world, c).status_code == 403
    reported = audit(world, c.tenant, "recovery.reported_not_me", case_id)
    assert [(e.actor_type, e.actor_id) for e in reported] == [("user_report", str(c.user.id))]
    assert len(audit(world, c.tenant, "security.incident_opened", case_id)) == 1
    assert act(world, case_id, "resume", c.agent).status_code == 403  # escalated to senior admins
    assert world.client.post(report).status_code == 404
    return case_id



# --- runbook step 4 with a security key --------------------------------------------------------------


def path_force_reset_security_key(world: World) -> str:
    """The user lost their phone (TOTP) and their security key: the reset removes both with
    everything else, the user registers a new key in the recovery session, which recovers the
    case exactly as a TOTP enrolment does; then the new key signs in, the lost one does not."""
    from tests.authenticator import SoftKey
    from tests.flows import register_key, signin_password, signin_with_key

    c = cast(world)
    lost = SoftKey()
    session = open_session(world, c.user)
    assert register_key(world.client, session, lost, label="Old key").status_code == 201
    case_id = verified_case(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset carried out")
    row = expect_one_audit(world, c, "mfa.factor_admin_reset", case_id, c.agent, RESET_REASON)
    assert (row.details["factors_removed"], row.details["security_keys_removed"]) == (2, 1), row.details
    assert user_row(world, c.user)["factors"] == [("totp", "removed"), ("webauthn", "removed")]
    assert world.client.get("/v1/auth/security-keys", headers=bearer(session)).status_code == 401

    r = signin_password(world.client, c.tenant, c.user.email)  # the password alone: enrolment only
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    token = r.json["token"]
    assert_restricted(world, token)
    new = SoftKey()
    r = register_key(world.client, token, new, label="New key")
    assert r.status_code == 201, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "closed", f"case {case_id} closed")
    timeline = [t["action"] for t in case(world, case_id, c.agent)["timeline"]]
    assert timeline.index("mfa.factor_enrolled") < timeline.index("recovery.recovered") < timeline.index(
        "recovery.closed"), timeline
    (enrolled,) = audit(world, c.tenant, "mfa.factor_enrolled", case_id)
    assert (enrolled.details["kind"], enrolled.details["factor_id"]) == ("webauthn", r.json["id"])
    expect_notices(world, case_id, "mfa.factor_enrolled", c.user)

    r = signin_password(world.client, c.tenant, c.user.email)
    assert r.json["methods"] == ["webauthn"], r.json
    done = signin_with_key(world.client, c.tenant, r.json["pending_token"], new)
    assert done.json["status"] == "ok", done.json
    pending = signin_password(world.client, c.tenant, c.user.email).json["pending_token"]
    # Bearer secrets of the two-step sign-in: never in an audit row, a task, a log.
    world.handed_out.extend([session, token, r.json["pending_token"], done.json["token"], pending])
    options = world.client.post("/v1/auth/signin/webauthn/options", json={"pending_token": pending},
                                headers={TENANT_HEADER: c.tenant.slug}).json["options"]
    r = world.client.post("/v1/auth/signin/webauthn/verify", headers={TENANT_HEADER: c.tenant.slug},
                          json={"pending_token": pending, "credential": lost.get({**options, "allowCredentials": []})})
    assert r.status_code == 401, r.json  # whoever holds the lost key cannot use it
    return case_id
