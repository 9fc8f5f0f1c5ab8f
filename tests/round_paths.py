"""Issue 8's attacks on the round rule, the two-person rule, the cooldown and the case's loose
ends, written once and run twice: in process (tests/unit/recovery/test_rounds.py, queued tasks
drained there) and against a real Celery worker on PostgreSQL and Redis (tests/e2e/test_rounds.py).

Each path plays the attack as the people in the story would (the SIM-swap attacker, the real
owner raising the alarm, the fooled agent, one senior admin acting alone) and asserts what they
would notice: statuses, states, texts on the development channel, audit rows.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from app.extensions import db
from tests.factories import LONG_AGO, PHONE
from tests.recovery_paths import RESET_REASON, TEMP_PASSWORD, make_due
from tests.recovery_steps import (
    BACKUP_CODE,
    NEW_PASSWORD,
    Cast,
    World,
    act,
    active_factor_count,
    audit,
    bearer,
    case,
    cast,
    enrol,
    enrol_and_close,
    links_in,
    messages,
    notices,
    open_case,
    signin,
    state,
    user_row,
    verified_case,
    verify_by_callback,
    verify_by_video,
)

PHONE_B = "+14155550188"  # the real owner's second number, on file as long as the first
PASSWORD_CHANGE = "Password reset after the incident; temporary password over the phone verified today"


# --- steps ----------------------------------------------------------------------------------------


def channel_id(world: World, user: Any, value: str) -> str:
    from app.accounts.models import Channel

    with world.app.app_context():
        return str(db.session.scalars(select(Channel.id).where(
            Channel.user_id == user.id, Channel.value == value)).one())


def call_and_confirm(world: World, case_id: str, agent: Any, value: str) -> None:
    """A verification call to the phone on file with this number, confirmed by `agent`."""
    cid = channel_id(world, world_user(world, case_id), value)
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                          json={"channel_id": cid, "method": "sms"}, headers=agent.headers)
    assert r.status_code == 202, r.json
    call_id = r.json["id"]
    sent = world.settle(lambda: messages(world, f"verification-call:{call_id}", to=value),
                        f"the code texted to {value}")
    code = sent[0]["body"].split("code is ", 1)[1].split(".", 1)[0].replace(" ", "")
    world.handed_out.append(code)
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm",
                          json={"code": code}, headers=agent.headers)
    assert r.status_code == 200 and r.json["status"] == "verified", r.json


def world_user(world: World, case_id: str) -> Any:
    from app.accounts.models import User
    from app.recovery.models import RecoveryCase

    with world.app.app_context():
        row = db.session.get(RecoveryCase, uuid.UUID(case_id))
        assert row is not None
        user = db.session.get(User, row.user_id)
        db.session.expunge(user)
        return user


def report_link(world: World, case_id: str, event: str, to: str) -> str:
    """The "this wasn't me" link in the notice of `event` that reached `to`."""
    sent = world.settle(lambda: [m for m in notices(world, case_id, event) if m["to"] == to],
                        f"the {event} notice to {to}")
    return links_in(sent[-1], "report")[0]


def trust(world: World, user: Any, cid: str, who: Any, reason: str | None = None) -> Any:
    body = {"reason": reason} if reason is not None else {}
    return world.client.post(f"/v1/admin/users/{user.id}/channels/{cid}/trust", json=body, headers=who.headers)


def wait_texted(world: World, action_id: str, to: str) -> str:
    sent = world.settle(lambda: messages(world, f"action:{action_id}", to=to), f"the secret texted to {to}")
    world.quiesce()
    sent = messages(world, f"action:{action_id}")
    assert len(sent) == 1 and sent[0]["to"] == to, sent
    return str(sent[0]["body"])


def temporary_password(world: World, action_id: str, to: str) -> str:
    match = TEMP_PASSWORD.search(wait_texted(world, action_id, to))
    assert match is not None
    world.handed_out.append(match.group(1))
    return match.group(1)


def attested(world: World, c: Cast, case_id: str) -> None:
    """The user's manager vouches through the tenant's HR system (recorded by the system)."""
    from tests.casework import attest

    hr, secret = world.factory.integration(c.tenant, "hr")
    r = attest(world.client, hr, secret, voucher=f"manager-{uuid.uuid4().hex[:6]}@example.com", case_id=case_id)
    assert r.status_code == 202, r.json


def execute_now(world: World, action_id: str) -> None:
    """What the execute_action task does, run here while the worker is held: the secret is
    generated and sealed, its delivery queued behind the worker."""
    from app.recovery.actions import execute_action

    with world.app.app_context():
        row = execute_action(uuid.UUID(action_id))
        db.session.commit()
        assert row is not None and row.status == "done", row and row.status


def action_row(world: World, action_id: str) -> Any:
    from app.recovery.models import CaseAction

    with world.app.app_context():
        row = db.session.get(CaseAction, uuid.UUID(action_id))
        assert row is not None
        db.session.expunge(row)
        return row


def age(world: World, table: Any, row_id: str, **columns: timedelta) -> None:
    """Move the given time columns of one row into the past (as if that much time went by)."""
    from app.extensions import utcnow

    with world.app.app_context():
        db.session.execute(update(table).where(table.id == uuid.UUID(row_id))
                           .values({name: utcnow() - ago for name, ago in columns.items()}))
        db.session.commit()


def attacker_reset_then_alarm(world: World, c: Cast) -> str:
    """Item 1's story up to the alarm: an attacker who holds phone A (a SIM swap; the number
    has been on file for a year) passes the verification call and the reset runs; the real user
    taps "this wasn't me" in the notice that reached their email."""
    case_id = verified_case(world, c)  # the code went to PHONE: the attacker read it back
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the attacker's reset")
    r = world.client.post(report_link(world, case_id, "mfa.factor_admin_reset", c.user.email))
    assert r.status_code == 202, r.json
    assert state(world, case_id, c.senior) == "suspected_attack"
    return case_id


# --- item 1: a secret goes only to a channel verified in the current round -------------------------


def path_secret_not_to_the_compromised_round_phone(world: World) -> str:
    """Item 1: after the alarm, the real user is verified again on video; a temporary password
    (or codes by phone) must not go to phone A, which only the attacker's round verified."""
    c = cast(world)
    case_id = attacker_reset_then_alarm(world, c)
    r = act(world, case_id, "resume", c.senior, reason="Real user reached in person; verify again")
    assert r.status_code == 200, r.json
    verify_by_video(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "verified"
    for action in ("set_temporary_password", "generate_backup_codes"):
        r = act(world, case_id, action, c.agent, reason=PASSWORD_CHANGE)
        assert r.status_code == 422 and r.json["error"]["code"] == "no_verified_channel", (action, r.json)
        assert "current round" in r.json["error"]["message"], r.json
    world.quiesce()
    assert case(world, case_id, c.senior)["pending_actions"] == []
    assert audit(world, c.tenant, "user.password_set_by_admin") == []
    assert audit(world, c.tenant, "recovery.secret_delivered") == []
    assert user_row(world, c.user)["status"] == "suspended"
    assert signin(world, c).status_code == 403
    return case_id


# --- item 2: the compromised phone is not accepted again until a senior admin trusts it ---------------


def path_compromised_phone_needs_a_senior_admins_trust(world: World) -> str:
    """Item 2: a new call to phone A after the alarm is refused, the case says why, and only a
    senior admin (with a reason, audited) makes it callable again; then the real user recovers."""
    c = cast(world)
    case_id = attacker_reset_then_alarm(world, c)
    assert act(world, case_id, "resume", c.senior, reason="Real user called us; verify again").status_code == 200
    phone_a = channel_id(world, c.user, PHONE)
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                          json={"channel_id": phone_a, "method": "sms"}, headers=c.agent.headers)
    assert r.status_code == 422 and r.json["error"]["code"] == "channel_compromised", r.json
    [shown] = case(world, case_id, c.agent)["callable_channels"]
    assert (shown["id"], shown["callable"]) == (phone_a, False), shown
    assert "suspected attack" in shown["not_callable_reason"], shown

    assert trust(world, c.user, phone_a, c.agent, "Carrier reversed the SIM swap").status_code == 403
    assert trust(world, c.user, phone_a, c.senior).status_code == 400  # a reason is required
    assert audit(world, c.tenant, "user.channel_trusted") == []
    reason = "Carrier confirmed the SIM swap was reversed; the owner holds the number again (ticket #77)"
    r = trust(world, c.user, phone_a, c.senior, reason)
    assert r.status_code == 200 and r.json["compromised_at"] is None, r.json
    [row] = audit(world, c.tenant, "user.channel_trusted")
    assert (row.actor_id, row.reason, row.details["channel_id"]) == (str(c.senior.agent.id), reason, phone_a)
    assert trust(world, c.user, phone_a, c.senior, reason).status_code == 409  # nothing to trust any more

    verify_by_callback(world, case_id, c.agent)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the real user's reset")
    r = act(world, case_id, "set_temporary_password", c.agent, reason=PASSWORD_CHANGE)
    assert r.status_code == 200, r.json
    temporary = temporary_password(world, r.json["action"]["id"], PHONE)
    world.settle(lambda: user_row(world, c.user)["status"] == "active", "the real user reactivated")
    r = signin(world, c, temporary)
    assert r.status_code == 200 and r.json["status"] == "password_change_required", r.json
    return case_id


# --- item 3: the agent who spoke to the attacker on video reads nothing out --------------------------


def path_fooled_video_agent_reads_no_codes_out(world: World) -> str:
    """Item 3: the agent whose video call was with the attacker may not read codes out in the
    next round, although HR has since re-verified the user."""
    c = cast(world)
    case_id = open_case(world, c)
    verify_by_video(world, case_id, c.agent)  # the attacker, on video, fooled this agent
    other = world.factory.agent(c.tenant)
    r = act(world, case_id, "suspend_user", other, reason="The owner called in: they never asked for this")
    assert r.status_code == 200, r.json
    assert act(world, case_id, "resume", c.senior, reason="Owner reached; verify again").status_code == 200
    attested(world, c, case_id)
    assert state(world, case_id, c.agent) == "verified"
    r = act(world, case_id, "generate_backup_codes", c.agent, delivery="video_call",
            reason="Reading the codes out on the video call")
    assert r.status_code == 422 and r.json["error"]["code"] == "no_verified_channel", r.json
    assert "backup_codes" not in r.json
    assert audit(world, c.tenant, "mfa.backup_codes_generated") == []
    return case_id


# --- item 4: refusing a case after the reset closes the enrolment window -------------------------------


def path_refusal_after_reset_closes_enrolment(world: World) -> str:
    """Item 4: after the reset the user has no factor; whoever knows the password must not enrol
    theirs once the case is refused, until a case of the user is verified in a later round."""
    c = cast(world)
    case_id = verified_case(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    r = signin(world, c)  # the password alone opens enrolment now
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    session = r.json["token"]

    reason = "The requester could not say which laptop they use; new doubt after the reset"
    r = act(world, case_id, "refuse", c.agent, trigger="agent_judgement", reason=reason)
    assert r.status_code == 200 and r.json["case"]["state"] == "refused", r.json
    r = world.client.post("/v1/auth/enrol/totp", headers=bearer(session))
    assert r.status_code == 401, r.json  # the enrolment session died with the refusal
    r = signin(world, c)
    assert r.status_code == 403 and r.json["error"]["code"] == "enrolment_closed", r.json
    # Nor a security key, from any session the user might still hold (say, one the attacker
    # opened with an API client before the refusal and that survived by another route).
    from tests.flows import session_token

    other = session_token(world.factory.app, c.user, scope="restricted")
    for route in ("/v1/auth/enrol/webauthn", "/v1/auth/enrol/totp"):
        r = world.client.post(route, headers=bearer(other))
        assert r.status_code == 403 and r.json["error"]["code"] == "enrolment_closed", (route, r.json)
    [closed] = audit(world, c.tenant, "user.enrolment_closed", case_id)
    assert (closed.actor_id, closed.reason) == (str(c.agent.agent.id), reason)
    assert closed.details["sessions_revoked"] == 1

    # A senior admin reopens; the user is verified in the new round, and may enrol again.
    assert act(world, case_id, "reopen", c.senior, reason="Manager confirmed the laptop").status_code == 200
    assert signin(world, c).status_code == 403  # reopening is not verifying
    verify_by_callback(world, case_id, c.agent)
    assert len(audit(world, c.tenant, "user.enrolment_reopened", case_id)) == 1
    r = signin(world, c)
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    enrol(world, r.json["token"])
    return case_id


# --- item 6: a privileged user needs two people for every destructive action ----------------------------


def path_privileged_needs_two_people_for_everything(world: World) -> str:
    """Item 6: one senior admin alone cannot record both evidence types; admin codes and a
    temporary password wait, like the reset, for a second senior admin naming the action."""
    c = cast(world, privileged=True)
    case_id = open_case(world, c, expect="escalated")
    assert act(world, case_id, "resume", c.senior, reason="Privileged user: two people, two types").status_code == 200
    verify_by_callback(world, case_id, c.senior)
    verify_by_video(world, case_id, c.senior)
    detail = case(world, case_id, c.senior)
    assert detail["state"] == "awaiting_verification", "one person recorded both halves of the two-person rule"
    verify_by_video(world, case_id, c.agent)  # a second person's evidence
    assert state(world, case_id, c.agent) == "verified"

    r = act(world, case_id, "generate_backup_codes", c.agent, delivery="video_call",
            reason="Codes read out on the call")
    assert r.status_code == 422 and r.json["error"]["code"] == "delivery_not_offered", r.json
    r = act(world, case_id, "generate_backup_codes", c.senior, reason="Lost phone and app; codes by phone")
    assert r.status_code == 200 and r.json["action"]["status"] == "awaiting_approval", r.json
    codes_id = r.json["action"]["id"]
    r = act(world, case_id, "set_temporary_password", c.agent, reason=PASSWORD_CHANGE)
    assert r.status_code == 200 and r.json["action"]["status"] == "awaiting_approval", r.json
    password_id = r.json["action"]["id"]
    world.quiesce()
    assert messages(world, f"action:{codes_id}") + messages(world, f"action:{password_id}") == []
    assert audit(world, c.tenant, "mfa.backup_codes_generated") == []

    r = act(world, case_id, "approve", c.senior, reason="Reviewed")
    assert r.status_code == 400 and "action_id" in r.json["error"]["details"]["fields"], r.json
    r = act(world, case_id, "approve", c.senior, action_id=codes_id, reason="Reviewed")
    assert r.status_code == 403 and r.json["error"]["code"] == "same_person", r.json
    r = act(world, case_id, "approve", c.agent, action_id=password_id, reason="Reviewed")
    assert r.status_code == 403, r.json
    r = act(world, case_id, "approve", c.senior, action_id=str(uuid.uuid4()), reason="Reviewed")
    assert r.status_code == 404, r.json

    second = world.factory.agent(c.tenant, "senior_admin")
    r = act(world, case_id, "approve", second, action_id=codes_id, reason="Second person: evidence reviewed")
    assert r.status_code == 200 and r.json["action"]["id"] == codes_id, r.json
    codes = BACKUP_CODE.findall(wait_texted(world, codes_id, PHONE))
    world.handed_out.extend(codes)
    assert action_row(world, password_id).status == "awaiting_approval"  # approving one approves one
    r = act(world, case_id, "approve", c.senior, action_id=password_id, reason="Second person: reviewed")
    assert r.status_code == 200, r.json
    temporary_password(world, password_id, PHONE)
    [generated] = audit(world, c.tenant, "mfa.backup_codes_generated", case_id)
    assert generated.details["approved_by"] == str(second.agent.id)
    [password_set] = audit(world, c.tenant, "user.password_set_by_admin", case_id)
    assert (password_set.actor_id, password_set.details["approved_by"]) == (str(c.agent.agent.id),
                                                                           str(c.senior.agent.id))
    return case_id


# --- item 7: the cooldown holds admin codes and a temporary password too ----------------------------------


def path_cooldown_holds_every_secret(world: World) -> str:
    """Item 7: with a cooldown, admin codes (and a temporary password) are scheduled with a
    cancel link to every channel on file, not texted at once; a cancel stops them for good."""
    c = cast(world, tenant_settings={"reset_cooldown_hours": 4})
    case_id = verified_case(world, c)
    r = act(world, case_id, "generate_backup_codes", c.agent, reason="Lost phone and app; codes by phone")
    assert r.status_code == 200 and r.json["action"]["status"] == "scheduled", r.json
    codes_id = r.json["action"]["id"]
    world.quiesce()
    assert messages(world, f"action:{codes_id}") == [], "the codes went out before the cooldown"
    assert audit(world, c.tenant, "mfa.backup_codes_generated") == []
    sent = world.settle(lambda: len(notices(world, case_id, "backup_codes.scheduled")) >= 2
                        and notices(world, case_id, "backup_codes.scheduled"), "the cooldown notices")
    assert sorted(m["to"] for m in sent) == sorted([c.user.email, PHONE])
    assert all(len(links_in(m, "cancel")) == 1 for m in sent)
    [scheduled] = audit(world, c.tenant, "recovery.action_scheduled", case_id)
    assert scheduled.details["action"] == "generate_backup_codes"

    verify_by_video(world, case_id, c.agent)
    r = act(world, case_id, "generate_backup_codes", c.agent, delivery="video_call", reason="On the call")
    assert r.status_code == 422 and r.json["error"]["code"] == "delivery_not_offered", r.json

    make_due(world, codes_id)  # four hours without a cancel
    world.run_task("rekey.recovery.run_scheduled", {})
    codes = BACKUP_CODE.findall(wait_texted(world, codes_id, PHONE))
    world.handed_out.extend(codes)
    assert len(set(codes)) == 10

    r = act(world, case_id, "set_temporary_password", c.agent, reason=PASSWORD_CHANGE)
    assert r.status_code == 200 and r.json["action"]["status"] == "scheduled", r.json
    password_id = r.json["action"]["id"]
    sent = world.settle(lambda: len(notices(world, case_id, "temporary_password.scheduled")) >= 2
                        and notices(world, case_id, "temporary_password.scheduled"), "the password's notices")
    cancel = links_in(next(m for m in sent if m["to"] == c.user.email), "cancel")[0]
    assert world.client.post(cancel).status_code == 202  # the owner: "I did not ask for this"
    assert state(world, case_id, c.senior) == "suspected_attack"
    make_due(world, password_id)
    world.run_task("rekey.recovery.run_scheduled", {})
    assert messages(world, f"action:{password_id}") == []
    assert audit(world, c.tenant, "user.password_set_by_admin") == []
    return case_id


# --- item 15: no secret after the alarm; undelivered secrets expire --------------------------------------


def path_secret_discarded_after_the_alarm(world: World) -> str:
    """Item 15: the temporary password is generated and its delivery queued; before the
    delivery runs, the case is suspected. The delivery sends nothing and says so."""
    c = cast(world)
    case_id = verified_case(world, c)
    with world.paused():
        r = act(world, case_id, "set_temporary_password", c.agent, reason=PASSWORD_CHANGE)
        assert r.status_code == 200, r.json
        action_id = r.json["action"]["id"]
        execute_now(world, action_id)
        assert action_row(world, action_id).options.get("sealed")
        r = act(world, case_id, "suspend_user", c.senior, reason="The owner called: they never asked for this")
        assert r.status_code == 200, r.json
    world.quiesce()
    assert messages(world, f"action:{action_id}") == [], "the temporary password went out after the alarm"
    [discarded] = audit(world, c.tenant, "recovery.secret_discarded", case_id)
    assert discarded.details["action_id"] == action_id and "suspected_attack" in discarded.reason
    assert not action_row(world, action_id).options.get("sealed")
    return case_id


def path_undelivered_secret_expires(world: World) -> str:
    """Item 15: admin codes whose delivery was lost are erased by beat after 24 hours, with an
    audit event, and can never go out later."""
    from app.recovery.models import CaseAction

    c = cast(world)
    case_id = verified_case(world, c)
    with world.paused():
        r = act(world, case_id, "generate_backup_codes", c.agent, reason="Lost phone and app; codes by phone")
        assert r.status_code == 200, r.json
        action_id = r.json["action"]["id"]
        execute_now(world, action_id)
        world.lose_queued()  # the delivery task is lost with the broker's queue
    world.quiesce()
    assert action_row(world, action_id).options.get("sealed")
    age(world, CaseAction, action_id, done_at=timedelta(hours=25), sealed_until=timedelta(hours=1))
    world.run_task("rekey.recovery.expire_sealed_secrets", {})
    assert not action_row(world, action_id).options.get("sealed")
    [expired] = audit(world, c.tenant, "recovery.secret_expired", case_id)
    assert expired.details["action_id"] == action_id
    world.run_task("rekey.recovery.deliver_secret", {"action_id": action_id})  # a late copy
    assert messages(world, f"action:{action_id}") == []
    return case_id


# --- item 16: effects that fire once per round --------------------------------------------------------------


def path_second_automatic_refusal_tells_senior_admins_again(world: World) -> str:
    """Item 16: after a reopen, a second automatic refusal notifies the senior admins again."""
    c = cast(world)
    case_id = verified_case(world, c)
    for i in range(5):  # an attacker guesses from addresses never seen in a good sign-in
        assert signin(world, c, "not the password", ip=f"203.0.113.{i + 1}").status_code == 401
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
    assert r.status_code == 422 and r.json["error"]["code"] == "refused_unusual_activity", r.json
    world.settle(lambda: messages(world, f"case:{case_id}:", to=c.senior.agent.email), "the first escalation")
    assert act(world, case_id, "reopen", c.senior, reason="The owner was travelling; verify again").status_code == 200
    verify_by_callback(world, case_id, c.agent)
    r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)  # the guesses go on
    assert r.status_code == 422 and r.json["error"]["code"] == "refused_unusual_activity", r.json
    world.settle(lambda: len(messages(world, f"case:{case_id}:", to=c.senior.agent.email)) >= 2,
                 "the senior admin told of the second automatic refusal")
    assert len(audit(world, c.tenant, "recovery.senior_admins_notified", case_id)) == 2
    return case_id


def path_recovered_again_gets_a_follow_up_and_closes(world: World) -> str:
    """Item 16: a case recovered, closed, then suspected and recovered again by the real owner
    gets its own follow-up and closes again."""
    c = cast(world, phones=[(PHONE, LONG_AGO), (PHONE_B, LONG_AGO)])
    case_id = verified_case_with(world, c, PHONE)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    enrol_and_close(world, c, case_id, signin(world, c).json["token"])
    r = world.client.post(report_link(world, case_id, "mfa.factor_enrolled", c.user.email))
    assert r.status_code == 202, r.json
    assert act(world, case_id, "resume", c.senior, reason="Owner reached on the second number").status_code == 200
    call_and_confirm(world, case_id, c.agent, PHONE_B)
    assert act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the owner's reset")
    r = act(world, case_id, "set_temporary_password", c.agent, reason=PASSWORD_CHANGE)
    assert r.status_code == 200, r.json
    temporary = temporary_password(world, r.json["action"]["id"], PHONE_B)
    world.settle(lambda: user_row(world, c.user)["status"] == "active", "the owner reactivated")
    token = signin(world, c, temporary).json["token"]
    assert world.client.post("/v1/auth/password", json={"new_password": NEW_PASSWORD},
                             headers=bearer(token)).status_code == 200
    enrol(world, token)
    world.settle(lambda: state(world, case_id, c.agent) == "closed", "the case closed again")
    assert len(audit(world, c.tenant, "recovery.follow_up_sent", case_id)) == 2
    assert len(messages(world, f"follow-up:{case_id}", to=c.user.email)) == 2
    return case_id


def verified_case_with(world: World, c: Cast, value: str) -> str:
    case_id = open_case(world, c)
    call_and_confirm(world, case_id, c.agent, value)
    assert state(world, case_id, c.agent) == "verified"
    return case_id


# --- item 18: escalated cases expire; a suspended user is never stuck ---------------------------------------


def path_escalated_case_expires_and_senior_admins_hear(world: World) -> str:
    """Item 18: an escalated case nobody picks up expires after the tenant's TTL, counted from
    the escalation, and the senior admins are told."""
    from app.recovery.models import RecoveryCase

    c = cast(world, tenant_settings={"escalation_ttl_hours": 48}, privileged=True)
    case_id = open_case(world, c, expect="escalated")
    world.run_task("rekey.recovery.expire_cases", {})
    assert state(world, case_id, c.senior) == "escalated"  # not yet
    age(world, RecoveryCase, case_id, escalation_expires_at=timedelta(seconds=1))
    world.run_task("rekey.recovery.expire_cases", {})
    detail = case(world, case_id, c.senior)
    assert detail["state"] == "expired", detail["state"]
    [expired] = audit(world, c.tenant, "recovery.expired", case_id)
    assert expired.details["trigger"] == "escalation_expired"
    sent = world.settle(lambda: messages(world, f"case:{case_id}:escalation_expired", to=c.senior.agent.email),
                        "the senior admin told the escalation expired")
    assert "expired" in sent[0]["body"]
    return case_id


def path_suspended_user_whose_case_expired_recovers(world: World) -> str:
    """Item 18: a suspended user whose case expired is not stuck: a new case, verified and
    carried through the reset and a new password, reactivates them."""
    from app.recovery.models import RecoveryCase

    c = cast(world)
    first = open_case(world, c)
    r = act(world, first, "suspend_user", c.agent, reason="Caller did not know the employee id; suspected attack")
    assert r.status_code == 200, r.json
    assert act(world, first, "resume", c.senior, reason="Verify the owner again").status_code == 200
    age(world, RecoveryCase, first, verification_expires_at=timedelta(seconds=1))
    world.run_task("rekey.recovery.expire_cases", {})
    assert state(world, first, c.senior) == "expired"
    assert user_row(world, c.user)["status"] == "suspended"

    second = open_case(world, c, expect="escalated")  # a new request; a senior admin looks first
    assert act(world, second, "resume", c.senior, reason="Owner on the phone on file").status_code == 200
    verify_by_callback(world, second, c.agent)
    assert act(world, second, "force_mfa_reset", c.agent, reason=RESET_REASON).status_code == 200
    world.settle(lambda: state(world, second, c.agent) == "awaiting_enrolment", "the owner's reset")
    assert user_row(world, c.user)["status"] == "suspended"  # a new password is still owed
    r = act(world, second, "set_temporary_password", c.agent, reason=PASSWORD_CHANGE)
    assert r.status_code == 200, r.json
    temporary = temporary_password(world, r.json["action"]["id"], PHONE)
    world.settle(lambda: user_row(world, c.user)["status"] == "active", "the owner reactivated by the new case")
    assert len(audit(world, c.tenant, "user.reactivated", second)) == 1
    r = signin(world, c, temporary)
    assert r.status_code == 200 and r.json["status"] == "password_change_required", r.json
    assert active_factor_count(world, c.user) == 0
    assert "suspended_user" in case(world, second, c.senior)["flags"]
    return second
