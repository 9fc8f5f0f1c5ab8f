"""The runbook's recovery paths, step by step over HTTP, shared by the in-process tests
(tests/unit/recovery/test_actions.py: queued tasks run in this process) and the end-to-end
tests (tests/e2e: a real Celery worker runs them).

A `World` says how queued work gets done: `settle(check, what)` makes the tasks run (drain them
here, or wait for the worker) until `check()` holds. Everything asserted is what a user, an agent
or an auditor would see: states, statuses, audit rows, messages on the development channel,
comments on the fake ticketing servers.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pyotp
from sqlalchemy import select

from app.extensions import db
from tests.factories import LONG_AGO, PASSWORD, PHONE
from tests.signing import body_of, jira_headers, standard_headers, zendesk_headers

T = TypeVar("T")
TENANT_HEADER = "X-Rekey-Tenant"
VIDEO = {"result": "match", "matched_against": "hr_photo", "reference": "VC-2026-0517 ticket 1234"}
OTHER_PHONE = "+14155550123"
NEW_PASSWORD = "a brand new passphrase for rekey"
BACKUP_CODE = re.compile(r"\b[a-z2-7]{5}(?:-[a-z2-7]{5}){3}\b")
# A notice links to the link's page (/t/<tenant>/links/<purpose>/<token>); the tests post the
# token to the JSON API (/v1/recovery/<purpose>/<token>), which stays.
LINK = re.compile(r"/t/[a-z0-9-]+/links/(report|cancel)/([A-Za-z0-9._~-]+)")
ZENDESK_TICKET, JIRA_ISSUE = "35436", "HELP-12"


# --- the world a test runs in ---------------------------------------------------------------


def drained(factory: Any) -> Callable[[Callable[[], T], str], T]:
    """`settle` for in-process tests: run every queued task here, then check."""

    def settle(check: Callable[[], T], what: str) -> T:
        factory.drain_tasks()
        result = check()
        assert result, f"after running the queued tasks, still not: {what}"
        return result

    return settle


def polled(timeout: float = 20.0, interval: float = 0.05) -> Callable[[Callable[[], T], str], T]:
    """`settle` for worker tests: wait (bounded) until the worker has made `check()` true."""

    def settle(check: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
            time.sleep(interval)

    return settle


def in_process(client: Any, factory: Any) -> World:
    """Tasks run in this process, from the outbox rows the requests wrote."""

    def run_task(name: str, kwargs: dict[str, Any]) -> None:
        factory.app.extensions["celery"].tasks[name](**kwargs)
        factory.drain_tasks()

    def lose_queued() -> None:
        factory.forget_tasks()

    return World(client, factory, drained(factory), run_task, lambda: factory.drain_tasks(),
                 lose_queued=lose_queued)


@dataclass
class World:
    client: Any
    factory: Any
    settle: Callable[[Callable[[], Any], str], Any]
    # Run one task by name (beat's work, or a second copy of a task) and let it finish.
    run_task: Callable[[str, dict[str, Any]], None]
    # Let every queued task finish (to check that something did NOT happen).
    quiesce: Callable[[], None]
    # Hold the worker while the block runs: what the block queues waits until it ends (in
    # process nothing runs unless drained anyway).
    paused: Callable[[], AbstractContextManager[None]] = nullcontext
    # Lose every task queued so far (a broker that dropped them): only beat's sweeps find the work.
    lose_queued: Callable[[], None] = lambda: None
    handed_out: list[str] = field(default_factory=list)  # every secret the test saw
    fakes: list[Any] = field(default_factory=list)  # the vendor servers the test's cases talk to

    @property
    def app(self) -> Any:
        return self.factory.app

    @property
    def dev_outbox(self) -> str:
        return str(self.app.extensions["rekey.settings"].dev_outbox)


# --- people ---------------------------------------------------------------------------------


@dataclass
class Cast:
    tenant: Any
    user: Any
    agent: Any  # a support agent
    senior: Any
    totp_secret: str | None


def cast(world: World, *, tenant_settings: dict[str, Any] | None = None, lost_totp: bool = True,
         tenant_name: str | None = None, **user_kw: Any) -> Cast:
    """A tenant, a long-standing user (email and phone on file for a year, optionally the TOTP
    factor they lost), a support agent and a senior admin."""
    tenant = world.factory.tenant(tenant_name, **(tenant_settings or {}))
    user = world.factory.settled_user(tenant, **user_kw)
    secret = enrol_old_factor(world, user) if lost_totp else None
    return Cast(tenant, user, world.factory.agent(tenant), world.factory.agent(tenant, "senior_admin"), secret)


def enrol_old_factor(world: World, user: Any) -> str:
    """The TOTP factor the user had before losing their phone."""
    from app.accounts.mfa import confirm_totp_enrolment, start_totp_enrolment
    from app.accounts.models import MfaFactor, User
    from app.actor import Actor

    with world.app.app_context():
        row = db.session.get(User, user.id)
        assert row is not None
        actor = Actor(type="user", id=str(user.id), tenant_id=user.tenant_id, ip="192.0.2.10")
        pending, secret, _ = start_totp_enrolment(actor, row, issuer="Rekey (test)")
        confirm_totp_enrolment(actor, row, pyotp.TOTP(secret).now())
        factor = db.session.get(MfaFactor, pending.id)
        assert factor is not None
        factor.created_at = factor.activated_at = LONG_AGO
        db.session.commit()
    world.handed_out.append(secret)  # a TOTP seed must never leave the user's session either
    return secret


def give_backup_codes(world: World, user: Any) -> list[str]:
    """Codes the user saved when they enrolled."""
    from app.accounts.mfa import issue_backup_codes
    from app.accounts.models import User
    from app.actor import Actor

    with world.app.app_context():
        actor = Actor(type="user", id=str(user.id), tenant_id=user.tenant_id, ip="192.0.2.10")
        row = db.session.get(User, user.id)
        assert row is not None
        codes = issue_backup_codes(actor, row)
        db.session.commit()
    world.handed_out.extend(codes)
    return codes


def add_channel_now(world: World, user: Any, value: str = OTHER_PHONE) -> None:
    """A phone added after the case opened (an attacker's, perhaps): never told anything."""
    from app.accounts.models import Channel
    from app.extensions import utcnow

    with world.app.app_context():
        db.session.add(Channel(user_id=user.id, kind="phone", value=value, added_at=utcnow(),
                               verified_at=utcnow()))
        db.session.commit()


def open_session(world: World, user: Any) -> str:
    """A session the user (or whoever holds the token) had before the case."""
    from app.accounts.models import User
    from app.accounts.services import open_session as open_

    with world.app.app_context():
        row = db.session.get(User, user.id)
        assert row is not None
        token = open_(row, scope="full", ip="192.0.2.10")
        db.session.commit()
    return token


# --- intake and verification ------------------------------------------------------------------


def integration(world: World, tenant: Any, kind: str = "standard", *, fake: Any = None,
                secret: str | None = None) -> tuple[Any, str]:
    """An integration; with `fake`, its outbound side points at that local vendor server."""
    kw: dict[str, Any] = {}
    if kind == "standard" and fake is not None:
        kw["callback_url"] = fake.callback_url
        secret = secret or fake.secret  # the receiver checks our signature with it
    elif fake is not None:
        kw["outbound"] = {"base_url": fake.url, "email": fake.email, "api_token": fake.api_token}
    if secret is not None:
        kw["secret"] = secret
    return world.factory.integration(tenant, kind, **kw)


def request_body(kind: str, secret: str, email: str, subject: str = "Lost phone") -> tuple[bytes, dict[str, str]]:
    """A recovery request as each vendor signs and sends it."""
    text = "I lost my phone and cannot sign in."
    if kind == "zendesk":
        body = body_of({"ticket": {"id": ZENDESK_TICKET, "subject": "Cannot sign in", "description": text,
                                   "requester": {"email": email, "external_id": ""}}})
        return body, zendesk_headers(secret, body)
    if kind == "jira":
        adf = {"type": "doc", "version": 1,
               "content": [{"type": "paragraph", "content": [{"type": "text", "text": text}]}]}
        body = body_of({"timestamp": 1714555800000, "webhookEvent": "jira:issue_created",
                        "issue": {"id": "10001", "key": JIRA_ISSUE,
                                  "fields": {"summary": "Lost phone", "description": adf,
                                             "reporter": {"emailAddress": email,
                                                          "accountId": "5b10ac8d82e05b22cc7d4ef5"}}}})
        return body, jira_headers(secret, body)
    body = body_of({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                    "data": {"user_email": email, "ticket_id": f"T-{uuid.uuid4().hex[:6]}",
                             "requester_email": email, "subject": subject, "text": text}})
    return body, standard_headers(secret, body)


def open_case(world: World, c: Cast, *, kind: str = "standard", fake: Any = None,
              secret: str | None = None, expect: str = "awaiting_verification", **request: str) -> str:
    """The ticketing system opens a case; the screen task runs. `subject=` for a standard ticket."""
    found, signing = integration(world, c.tenant, kind, fake=fake, secret=secret)
    if fake is not None:
        world.fakes.append(fake)
    body, headers = request_body(kind, signing, c.user.email, **request)
    r = world.client.post(f"/v1/webhooks/{found.id}", data=body, headers=headers)
    assert r.status_code == 202, r.json
    case_id = r.json["case_id"]
    world.settle(lambda: state(world, case_id, c.agent if expect != "escalated" else c.senior) == expect,
                 f"case {case_id} screened to {expect}")
    return str(case_id)


def case(world: World, case_id: str, who: Any) -> dict[str, Any]:
    r = world.client.get(f"/v1/admin/cases/{case_id}", headers=who.headers)
    assert r.status_code == 200, r.json
    return dict(r.json)


def state(world: World, case_id: str, who: Any) -> str:
    return str(case(world, case_id, who)["state"])


def act(world: World, case_id: str, action: str, who: Any, **body: Any) -> Any:
    body.setdefault("reason", f"{action}: lost device; identity verified, see ticket #1234")
    return world.client.post(f"/v1/admin/cases/{case_id}/actions/{action}", json=body, headers=who.headers)


def messages(world: World, key_part: str, *, to: str | None = None) -> list[dict[str, Any]]:
    """What the development channel "sent" whose idempotency key contains `key_part`."""
    from integrations.channels.dev import read_messages

    return [m for m in read_messages(world.dev_outbox, to=to) if key_part in m["idempotency_key"]]


def verify_by_callback(world: World, case_id: str, agent: Any) -> str:
    """Runbook step 1: Rekey texts a code to the phone on file; the user reads it back."""
    detail = case(world, case_id, agent)
    assert [ch["kind"] for ch in detail["callable_channels"]] == ["phone"], detail["callable_channels"]
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                          json={"channel_id": detail["callable_channels"][0]["id"], "method": "sms"},
                          headers=agent.headers)
    assert r.status_code == 202, r.json
    call_id = r.json["id"]
    sent = world.settle(lambda: messages(world, f"verification-call:{call_id}", to=PHONE),
                        "the verification code texted to the phone on file")
    code = sent[0]["body"].split("code is ", 1)[1].split(".", 1)[0].replace(" ", "")
    world.handed_out.append(code)
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm",
                          json={"code": code}, headers=agent.headers)
    assert r.status_code == 200 and r.json["status"] == "verified", r.json
    return code


def verify_by_video(world: World, case_id: str, agent: Any) -> None:
    r = world.client.post(f"/v1/admin/cases/{case_id}/evidence",
                          json={"type": "video_call", "details": VIDEO, "reason": "Video call, matched HR photo"},
                          headers=agent.headers)
    assert r.status_code == 201, r.json


def trust_again(world: World, c: Cast, value: str = PHONE,
                reason: str = "Carrier confirmed the number is back with its owner; ticket #1234") -> None:
    """A senior admin marks the phone the suspect verified trusted again (issue 8, item 2)."""
    from app.accounts.models import Channel

    with world.app.app_context():
        cid = db.session.scalars(select(Channel.id).where(Channel.user_id == c.user.id,
                                                          Channel.value == value)).one()
    r = world.client.post(f"/v1/admin/users/{c.user.id}/channels/{cid}/trust", json={"reason": reason},
                          headers=c.senior.headers)
    assert r.status_code == 200, r.json


def verified_case(world: World, c: Cast, **kw: Any) -> str:
    case_id = open_case(world, c, **kw)
    verify_by_callback(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "verified"
    return case_id


# --- the end user -----------------------------------------------------------------------------


def signin(world: World, c: Cast, password: str = PASSWORD, *, ip: str = "198.51.100.7", **factor: str) -> Any:
    return world.client.post("/v1/auth/signin", json={"email": c.user.email, "password": password, **factor},
                             headers={TENANT_HEADER: c.tenant.slug}, environ_base={"REMOTE_ADDR": ip})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_restricted(world: World, token: str) -> None:
    """A recovery session: enrolment and password change only, for at most 15 minutes."""
    from app.accounts.models import UserSession
    from app.crypto import token_digest

    with world.app.app_context():
        row = db.session.scalars(select(UserSession).where(UserSession.digest == token_digest(token))).one()
        assert row.scope == "restricted"
        assert row.expires_at - row.created_at <= timedelta(minutes=15)


def enrol(world: World, token: str) -> Any:
    """Runbook step 4: the user enrols a new TOTP factor in their own session."""
    r = world.client.post("/v1/auth/enrol/totp", headers=bearer(token))
    assert r.status_code == 201, r.json
    secret = r.json["secret"]
    r = world.client.post("/v1/auth/enrol/totp/confirm", json={"code": pyotp.TOTP(secret).now()},
                          headers=bearer(token))
    assert r.status_code == 200 and r.json["status"] == "active", r.json
    return r


def enrol_and_close(world: World, c: Cast, case_id: str, token: str) -> dict[str, Any]:
    """Enrolment recovers the case; the follow-up task closes it."""
    enrol(world, token)
    world.settle(lambda: state(world, case_id, c.agent) == "closed", f"case {case_id} closed")
    detail = case(world, case_id, c.agent)
    timeline = [t["action"] for t in detail["timeline"]]
    assert timeline.index("recovery.recovered") < timeline.index("recovery.closed"), timeline
    assert timeline.count("recovery.follow_up_sent") == 1
    assert len(messages(world, f"follow-up:{case_id}", to=c.user.email)) == 1
    return detail


# --- what auditors and users see ----------------------------------------------------------------


def audit(world: World, tenant: Any, action: str | None = None, case_id: str | None = None) -> list[Any]:
    from app.audit.models import AuditEvent

    with world.app.app_context():
        stmt = select(AuditEvent).where(AuditEvent.tenant_id == tenant.id).order_by(AuditEvent.seq)
        if action:
            stmt = stmt.where(AuditEvent.action == action)
        if case_id:
            stmt = stmt.where(AuditEvent.case_id == uuid.UUID(case_id))
        rows = list(db.session.scalars(stmt).all())
        db.session.expunge_all()
        return rows


def notices(world: World, case_id: str, event: str) -> list[dict[str, Any]]:
    """The security notices sent for `event` on the case, one per channel told."""
    return messages(world, f"notice:{case_id}:{event}:")


def links_in(message: dict[str, Any], purpose: str) -> list[str]:
    """The notice's links of this purpose, as the JSON API's POST addresses."""
    return [f"/v1/recovery/{p}/{token}" for p, token in LINK.findall(message["body"]) if p == purpose]


PAGE_LINK = re.compile(r"https?://[^/\s]+(/t/[a-z0-9-]+/links/(report|cancel)/[A-Za-z0-9._~-]+)")


def page_links_in(message: dict[str, Any], purpose: str) -> list[str]:
    """The notice's links of this purpose, as the paths of their pages (what a person opens)."""
    return [path for path, p in PAGE_LINK.findall(message["body"]) if p == purpose]


def user_row(world: World, user: Any) -> Any:
    from app.accounts.models import User

    with world.app.app_context():
        row = db.session.get(User, user.id)
        assert row is not None
        factors = sorted((f.kind, f.status) for f in row.factors)
        return {"status": row.status, "factors": factors}


def active_factor_count(world: World, user: Any) -> int:
    return sum(1 for _, status in user_row(world, user)["factors"] if status == "active")


def assert_no_secrets(world: World, *, fakes: tuple[Any, ...] = (), logs: str = "",
                      extra: tuple[str, ...] = ()) -> None:
    """The codes and passwords handed out live only in the development channel's file: never in
    an audit row, a task's arguments, a dead letter, a ticket or callback body, or a log."""
    from app.audit.models import AuditEvent
    from app.jobs.models import DeadLetter, OutboxMessage

    secrets = [s for s in (*world.handed_out, *extra, *getattr(world.factory, "secrets", [])) if s]
    assert secrets, "the test handed out no secret to look for"
    fakes = (*fakes, *(f for f in world.fakes if f not in fakes))
    with world.app.app_context():
        audit_text = "\n".join(json.dumps({c.name: getattr(r, c.name) for c in AuditEvent.__table__.columns},
                                          default=str)
                               for r in db.session.scalars(select(AuditEvent)).all())
        outbox_text = "\n".join(json.dumps(r.kwargs) for r in db.session.scalars(select(OutboxMessage)).all())
        dead_text = "\n".join(json.dumps({"kwargs": r.kwargs, "error": r.error})
                              for r in db.session.scalars(select(DeadLetter)).all())
    fake_text = "\n".join(req.body.decode(errors="replace") + json.dumps(req.headers)
                          for fake in fakes for req in fake.requests)
    sinks = {"audit": audit_text, "outbox kwargs": outbox_text, "dead letters": dead_text,
             "fake servers": fake_text, "logs": logs}
    for secret in secrets:
        variants = {secret, secret.replace("-", ""), " ".join(secret)}
        for name, text in sinks.items():
            for variant in variants:
                assert variant not in text, f"a handed-out secret reached the {name}"
