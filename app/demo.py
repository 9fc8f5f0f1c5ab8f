"""`rekey demo`: one whole recovery, told in the runbook's words, against the running service.

Provisioning (a tenant, two agents, a user, a `standard` integration) runs in this process on
the service's database with the services the CLI uses, as an operator would. Every runbook step
then goes over HTTP to the service `rekey run` started (signed webhook, admin API, auth API),
and its worker does the rest: the risk screen, the code to the phone, the reset, the notices,
the follow-up. The demo reads the verification code from the development channel's file, so it
runs only against a development service, and it never prints a secret (no code, password, token
or TOTP secret).
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import pyotp
import requests

from app.accounts.services import mask_phone
from app.config import Settings
from integrations.channels import mask_email

PHONE = "+14155552671"
SETTLED_DAYS = 400  # the user's email and phone have been on file for over a year: no risk flag
TERMINAL = ("refused", "escalated", "suspected_attack", "expired")
NOTIFIED_EVENTS = ("mfa.factor_admin_reset", "mfa.factor_enrolled")
RUN_HINT = "is `rekey run` (or `make run`) running, with its worker?"


class DemoFailed(Exception):
    """A step did not happen; the message names what, and the likely cause."""


def default_url(settings: Settings) -> str:
    """Where `rekey run` serves: REKEY_PUBLIC_URL, else http://REKEY_HOST:REKEY_PORT."""
    import os

    from app.devserver import display_url

    return os.environ.get("REKEY_PUBLIC_URL") or display_url(settings.host, settings.port)


# --- provisioning (in-process, as the CLI does) ------------------------------------------------


@dataclass
class Cast:
    """Who and what the demo created; tokens and the password stay in memory, never printed."""

    slug: str
    agent_id: str
    agent_token: str
    senior_id: str
    senior_token: str
    user_id: str
    email: str
    password: str
    integration_id: str
    signing_secret: str
    settled_since: datetime
    channels: int = 2  # email and phone, both from long before the case

    def actor_label(self, actor_type: str, actor_id: str | None) -> str:
        names = {self.agent_id: "agent Sam (support)", self.senior_id: "agent Riley (senior)",
                 self.user_id: "user Alex", self.integration_id: "integration helpdesk"}
        return names.get(actor_id or "", actor_type)


def provision(settings: Settings) -> Cast:
    """Create the demo's tenant, agents, user and integration, committed in one transaction."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from app import create_app
    from app.accounts.services import PhoneSpec, create_user
    from app.actor import Actor
    from app.errors import RekeyError
    from app.extensions import db
    from app.intake.services import create_integration
    from app.tenants.services import create_agent, create_tenant

    slug = f"demo-{secrets.token_hex(3)}"
    domain = f"{slug}.example.com"
    password = secrets.token_urlsafe(18)
    settled = datetime.now(UTC).replace(microsecond=0) - timedelta(days=SETTLED_DAYS)
    app = create_app(settings)
    with app.app_context():
        try:
            tenant = create_tenant(slug=slug, name="Demo Corp (rekey demo)")
            agent, agent_token = create_agent(tenant, email=f"sam@{domain}", name="Sam (support agent)",
                                              role="support_agent")
            senior, senior_token = create_agent(tenant, email=f"riley@{domain}", name="Riley (senior admin)",
                                                role="senior_admin")
            user = create_user(tenant, email=f"alex.rivera@{domain}", actor=Actor.system(tenant.id),
                               password=password, display_name="Alex Rivera",
                               phones=[PhoneSpec(PHONE, settled)], email_added_at=settled)
            integration, signing_secret = create_integration(tenant, kind="standard", name="Demo helpdesk")
            db.session.commit()
            return Cast(slug=slug, agent_id=str(agent.id), agent_token=agent_token,
                        senior_id=str(senior.id), senior_token=senior_token, user_id=str(user.id),
                        email=user.email, password=password, integration_id=str(integration.id),
                        signing_secret=signing_secret, settled_since=settled)
        except (SQLAlchemyError, RekeyError) as exc:
            db.session.rollback()
            where = make_url(settings.database_url).render_as_string(hide_password=True)
            # The driver's message only: SQLAlchemy's own text would carry the statement's parameters.
            why = exc.message if isinstance(exc, RekeyError) else str(getattr(exc, "orig", None) or type(exc).__name__)
            raise DemoFailed(
                f"could not provision the demo in {where} ({why[:200]}). "
                "Is this the database `rekey run` uses? Run `rekey demo` from the same directory, with the "
                "same DATABASE_URL / REKEY_INSTANCE_DIR.") from exc
        finally:
            db.session.remove()
            db.engine.dispose()


# --- HTTP ----------------------------------------------------------------------------------------


class Service:
    """The running service over HTTP; no answer at all is a DemoFailed naming what to start."""

    def __init__(self, url: str, request_timeout: float):
        self.url = url.rstrip("/")
        self.timeout = request_timeout
        self.http = requests.Session()

    def call(self, method: str, path: str, *, token: str | None = None, tenant: str | None = None,
             body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None,
             params: dict[str, str] | None = None) -> requests.Response:
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        if tenant:
            sent["X-Rekey-Tenant"] = tenant
        try:
            return self.http.request(method, self.url + path, json=body, data=raw, headers=sent,
                                     params=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise DemoFailed(f"{method} {path}: no answer from {self.url} ({type(exc).__name__}): "
                             f"{RUN_HINT} Or pass --url.") from exc

    def expect(self, response: requests.Response, *statuses: int, doing: str) -> Any:
        if response.status_code not in statuses:
            raise DemoFailed(f"{doing}: expected HTTP {'/'.join(map(str, statuses))}, got "
                             f"{response.status_code}: {response.text[:400]}")
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            return response.text
        try:
            return response.json()
        except ValueError as exc:
            raise DemoFailed(f"{doing}: the answer is not JSON: {response.text[:200]}") from exc


def error_of(response: requests.Response) -> dict[str, Any]:
    try:
        return dict(response.json().get("error") or {})
    except (ValueError, AttributeError):
        return {"code": "?", "message": response.text[:200]}


def wait_for(check: Callable[[], Any], timeout: float, failure: str) -> tuple[Any, float]:
    """Poll `check` until it returns something truthy; DemoFailed(`failure`) after `timeout`."""
    started = time.monotonic()
    while True:
        found = check()
        if found:
            return found, time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise DemoFailed(failure)
        time.sleep(0.25)


# --- the story -----------------------------------------------------------------------------------


@dataclass
class Story:
    """Prints the story as it happens (or keeps it for --json) and drives every step."""

    settings: Settings
    service: Service
    timeout: float
    as_json: bool
    steps: list[dict[str, Any]] = field(default_factory=list)
    cast: Cast | None = None
    case_id: str = ""
    ticket_id: str = ""
    opened_at: str = ""
    callable_phones: list[dict[str, Any]] = field(default_factory=list)

    def say(self, text: str = "") -> None:
        if not self.as_json:
            click.echo(text)

    def heading(self, text: str) -> None:
        self.say()
        self.say(text)

    def done(self, step: str, **facts: Any) -> None:
        self.steps.append({"step": step, **facts})

    # -- helpers over the admin API --

    @property
    def c(self) -> Cast:
        assert self.cast is not None
        return self.cast

    def case(self) -> dict[str, Any]:
        r = self.service.call("GET", f"/v1/admin/cases/{self.case_id}", token=self.c.agent_token)
        return dict(self.service.expect(r, 200, doing="reading the case"))

    def wait_state(self, wanted: str, failure: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            detail = self.case()
            if detail["state"] in TERMINAL and wanted not in TERMINAL:
                raise DemoFailed(f"the case became {detail['state']} instead of {wanted} "
                                 f"(flags {detail['flags']}, trigger {detail['refusal_trigger']})")
            return detail if detail["state"] == wanted else None

        detail, seconds = wait_for(reached, self.timeout, f"{failure} within {self.timeout:.0f} s: {RUN_HINT}")
        self.say(f"  -> {wanted} after {seconds:.1f} s")
        return dict(detail)

    def post_case(self, path: str, body: dict[str, Any]) -> requests.Response:
        return self.service.call("POST", f"/v1/admin/cases/{self.case_id}{path}", token=self.c.agent_token,
                                 body=body)

    # -- the steps --

    def preflight(self) -> None:
        if self.settings.is_production:
            raise DemoFailed("rekey demo creates tenants and users; it does not run with REKEY_ENV=production")
        if self.settings.phone_channel != "dev":
            raise DemoFailed("rekey demo reads the verification code from the development channel, but "
                             f"REKEY_PHONE_CHANNEL is {self.settings.phone_channel!r}; run it with 'dev'")
        r = self.service.call("GET", "/readyz")
        checks = self.service.expect(r, 200, 503, doing="GET /readyz").get("checks") or (
            error_of(r).get("details", {}).get("checks"))
        if r.status_code != 200:
            raise DemoFailed(f"the service at {self.service.url} is not ready: {checks}")
        self.say(f"Rekey demo against {self.service.url} (ready: {checks})")
        self.done("preflight", url=self.service.url, checks=checks)

    def provision(self) -> None:
        from sqlalchemy.engine import make_url

        where = make_url(self.settings.database_url).render_as_string(hide_password=True)
        self.heading("Provisioning (what `rekey tenant create`, `rekey agent create`, `rekey user create` "
                     "and `rekey integration create` do), in this process on " + where)
        self.cast = c = provision(self.settings)
        since = c.settled_since.date().isoformat()
        self.say(f"  tenant       {c.slug}")
        self.say("  agents       Sam (support_agent) drives the case; Riley (senior_admin) checks the audit "
                 "chain. API tokens are kept in memory, never printed.")
        self.say(f"  user         Alex Rivera <{c.email}>; email and phone {mask_phone(PHONE)} on file since "
                 f"{since}, so no recent-channel-change flag fires")
        self.say(f"  integration  kind standard (Standard Webhooks signatures), id {c.integration_id}; "
                 "signing secret kept in memory")
        # The service must see what we wrote: the same database and the same token pepper.
        r = self.service.call("GET", "/v1/admin/cases", token=c.agent_token)
        if r.status_code == 401:
            raise DemoFailed(f"the service at {self.service.url} does not know the demo's agent token: it "
                             f"uses another database than {where} (or another REKEY_CODE_PEPPER). Run "
                             "`rekey demo` with the environment and working directory of `rekey run`.")
        self.service.expect(r, 200, doing="listing cases as the new agent")
        self.done("provisioning", tenant=c.slug, user_id=c.user_id, integration_id=c.integration_id)

    def before_the_ticket(self) -> None:
        c = self.c
        self.heading("Before the ticket: Alex enrols an authenticator app on the phone they are about to lose")
        r = self.service.call("POST", "/v1/auth/signin", tenant=c.slug,
                              body={"email": c.email, "password": c.password})
        signin = self.service.expect(r, 200, doing="the first sign-in")
        self.say(f"  POST /v1/auth/signin (X-Rekey-Tenant: {c.slug}) -> {signin['status']}")
        self._enrol_totp(signin["token"], doing="the first enrolment")
        self.say("  POST /v1/auth/enrol/totp, then .../confirm with the app's code -> factor active")
        self.done("before_the_ticket", signin=signin["status"])

    def _enrol_totp(self, session_token: str, *, doing: str) -> None:
        r = self.service.call("POST", "/v1/auth/enrol/totp", token=session_token)
        secret = self.service.expect(r, 201, doing=doing)["secret"]
        r = self.service.call("POST", "/v1/auth/enrol/totp/confirm", token=session_token,
                              body={"code": pyotp.TOTP(secret).now()})
        factor = self.service.expect(r, 200, doing=f"{doing} (confirm)")
        if factor.get("status") != "active":
            raise DemoFailed(f"{doing}: the factor is {factor.get('status')}, not active")

    def ticket(self) -> None:
        c = self.c
        self.heading("The ticket: \"I lost my phone and can't sign in\"")
        ticket_id = self.ticket_id = f"DEMO-{secrets.randbelow(9000) + 1000}"
        body = json.dumps({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                           "data": {"user_email": c.email, "ticket_id": ticket_id, "requester_email": c.email,
                                    "subject": "Lost my phone, can't sign in",
                                    "text": "Hi, I lost my phone with my authenticator app on it and "
                                            "can't sign in any more. Can you help me get back in?"}}).encode()
        headers = self._signed(body)
        r = self.service.call("POST", f"/v1/webhooks/{c.integration_id}", raw=body, headers=headers)
        answer = self.service.expect(r, 202, doing="posting the signed ticket webhook")
        self.case_id = answer["case_id"]
        self.say(f"  POST /v1/webhooks/{c.integration_id}  ticket {ticket_id}, signed with webhook-id, "
                 "webhook-timestamp, webhook-signature")
        self.say(f"  -> {r.status_code} {json.dumps(answer)}")
        again = self.service.call("POST", f"/v1/webhooks/{c.integration_id}", raw=body, headers=headers)
        repeat = self.service.expect(again, 200, doing="repeating the same delivery")
        self.say(f"  the helpdesk retries the same delivery (same webhook-id) -> {again.status_code}, the "
                 f"same answer{'' if repeat == answer else ' (DIFFERENT!)'}, no second case")
        if repeat != answer:
            raise DemoFailed(f"a repeated delivery answered {repeat}, not the first answer {answer}")
        self.say("  the worker runs the risk screen (unusual activity, urgency, recent channel change, "
                 "privileged, repeat recovery)")
        detail = self.wait_state("awaiting_verification", "the worker did not screen the case")
        self.opened_at = detail["opened_at"]
        path = detail["recommended_path"] or {}
        phones = ", ".join(f"{ch['value']} (on file since {ch['added_at'][:10]})"
                           for ch in detail["callable_channels"]) or "none"
        self.say(f"  GET /v1/admin/cases/{self.case_id}")
        self.say(f"    flags: {', '.join(detail['flags']) or 'none'}")
        self.say(f"    recommended path: {path.get('path')}: {path.get('reason')}")
        self.say(f"    callable phones (on the account before today): {phones}")
        self.say(f"    allowed actions now: {', '.join(detail['allowed_actions'])}")
        self.done("ticket", case_id=self.case_id, ticket_id=ticket_id, answer=answer,
                  repeat_status=again.status_code, state=detail["state"], flags=detail["flags"],
                  recommended_path=path.get("path"))
        self.callable_phones = detail["callable_channels"]

    def _signed(self, body: bytes) -> dict[str, str]:
        from integrations.webhooks import sign_standard

        msg_id, ts = f"msg_{uuid.uuid4().hex}", int(time.time())
        return {"Content-Type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts),
                "webhook-signature": sign_standard(self.c.signing_secret, msg_id, ts, body)}

    def step1_verify(self) -> None:
        self.heading("Step 1 - Verify identity out of band")
        r = self.post_case("/evidence", {"type": "email_match", "details": {},
                                         "reason": "The caller told me the account's email address"})
        if r.status_code != 422:
            raise DemoFailed(f"email_match evidence was not refused: HTTP {r.status_code} {r.text[:200]}")
        refusal = error_of(r)
        self.say("  refused shortcut: POST .../evidence {\"type\": \"email_match\"}")
        self.say(f"    -> 422 {refusal.get('code')}: {refusal.get('message')}")
        r = self.post_case("/actions/force_mfa_reset", {"reason": "Skipping verification"})
        if r.status_code != 409:
            raise DemoFailed(f"a reset before verification was not refused: HTTP {r.status_code} {r.text[:200]}")
        early = error_of(r)
        self.say("  refused shortcut: POST .../actions/force_mfa_reset before verification")
        self.say(f"    -> 409 {early.get('code')}: {early.get('message')}")
        if not self.callable_phones:
            raise DemoFailed("the case lists no callable phone, although the user's phone predates the case")
        phone = self.callable_phones[0]
        r = self.post_case("/verification-calls", {"channel_id": phone["id"], "method": "sms"})
        call = self.service.expect(r, 202, doing="placing the verification call")
        self.say(f"  POST .../verification-calls (the phone on file {phone['value']}, sms; the agent never types "
                 f"a number) -> 202, call {call['status']}")
        code, seconds = self._read_code(call["id"])
        self.say(f"  the worker sent a one-time code to {phone['value']}; the demo read it from the dev channel "
                 f"({self.settings.dev_outbox}) after {seconds:.1f} s, as the user reads it from the phone")
        r = self.post_case(f"/verification-calls/{call['id']}/confirm", {"code": code})
        confirmed = self.service.expect(r, 200, doing="confirming the code")
        if confirmed["status"] != "verified":
            raise DemoFailed(f"the code was not accepted: call {confirmed['status']}")
        detail = self.case()
        evidence = [e["type"] for e in detail["evidence"] if e["accepted"]]
        self.say(f"  POST .../verification-calls/{call['id']}/confirm (the code the user read back) -> "
                 f"{confirmed['status']}")
        self.say(f"  case: {detail['state']}; accepted evidence: {', '.join(evidence)}")
        if detail["state"] != "verified":
            raise DemoFailed(f"the case is {detail['state']} after a confirmed call, not verified")
        self.done("step1_verify", refused=[refusal.get("code"), early.get("code")], evidence=evidence,
                  state=detail["state"])

    def _read_code(self, call_id: str) -> tuple[str, float]:
        from integrations.channels.dev import read_messages

        def arrived() -> str | None:
            for message in read_messages(self.settings.dev_outbox, to=PHONE):
                if call_id in str(message.get("idempotency_key")):
                    found = re.search(r"code is ([0-9 ]+)\.", str(message.get("body")))
                    if found:
                        return found.group(1).replace(" ", "")
            return None

        code, seconds = wait_for(arrived, self.timeout, (
            f"the verification code did not reach the dev channel file {self.settings.dev_outbox} within "
            f"{self.timeout:.0f} s: is `rekey run` running, with its worker writing to the same "
            "REKEY_DEV_OUTBOX (REKEY_PHONE_CHANNEL=dev)?"))
        return str(code), seconds

    def step2_backup_codes(self) -> None:
        self.heading("Step 2 - Check backup codes")
        r = self.service.call("GET", f"/v1/admin/users/{self.c.user_id}", token=self.c.agent_token)
        user = self.service.expect(r, 200, doing="reading the user detail")
        remaining = user["backup_codes"]["remaining"]
        factors = [f"{f['kind']} {f['status']}" for f in user["factors"]]
        self.say(f"  GET /v1/admin/users/{self.c.user_id}: backup codes {user['backup_codes']['label']}; "
                 f"factors: {', '.join(factors) or 'none'}")
        if remaining:
            raise DemoFailed(f"the user has {remaining} backup codes; the runbook says use one, not a reset")
        self.say("  none to use, so continue to step 3")
        self.done("step2_backup_codes", remaining=remaining, factors=factors)

    def step3_reset(self) -> None:
        self.heading("Step 3 - Force MFA reset")
        reason = f"Lost device; verified by a call to a number on file; no backup codes; ticket {self.ticket_id}"
        r = self.post_case("/actions/force_mfa_reset", {"reason": reason})
        action = self.service.expect(r, 200, doing="requesting force_mfa_reset")["action"]
        self.say(f"  POST .../actions/force_mfa_reset {{\"reason\": \"{reason}\"}}")
        self.say(f"    -> 200, action {action['status']}: the worker removes factors, backup codes, sessions "
                 "and remembered devices in one transaction with its audit event")
        self.wait_state("awaiting_enrolment", "the worker did not carry out the reset")
        self.done("step3_reset", action=action["status"])

    def step4_enrol(self) -> None:
        c = self.c
        self.heading("Step 4 - The user signs in and enrols")
        r = self.service.call("POST", "/v1/auth/signin", tenant=c.slug,
                              body={"email": c.email, "password": c.password})
        signin = self.service.expect(r, 200, doing="signing in after the reset")
        self.say(f"  POST /v1/auth/signin (email + password) -> {signin['status']} (a session that can "
                 "only enrol a factor or change the password, for at most 15 minutes)")
        if signin["status"] != "enrolment_required":
            raise DemoFailed(f"sign-in after the reset answered {signin['status']}, not enrolment_required")
        self._enrol_totp(signin["token"], doing="enrolling the new factor")
        self.say("  POST /v1/auth/enrol/totp, then .../confirm with a code from pyotp -> a new TOTP factor "
                 "is enrolled (its secret went to the user's session only)")
        r = self.service.call("POST", "/v1/auth/backup-codes", token=signin["token"])
        codes = self.service.expect(r, 201, doing="regenerating backup codes")
        self.say(f"  POST /v1/auth/backup-codes -> {codes['remaining']} new backup codes, shown once to the "
                 "user (not printed): next time the user owns the recovery")
        detail = self.case()
        if "recovery.recovered" not in [t["action"] for t in detail["timeline"]]:
            raise DemoFailed(f"the enrolment did not close the loop: the case is {detail['state']}")
        self.say(f"  the enrolment is linked to the case (recovery.recovered); case: {detail['state']}")
        self.done("step4_enrol", signin=signin["status"], factor="totp", backup_codes=codes["remaining"],
                  state=detail["state"])

    def step5_follow_up(self) -> None:
        from integrations.channels.dev import read_messages

        self.heading("Step 5 - Follow-up and close")
        self.say("  the worker sends the follow-up to the user's email and closes the case")
        detail = self.wait_state("closed", "the worker did not send the follow-up and close the case")
        expected = self.c.channels * len(NOTIFIED_EVENTS)

        def notified() -> bool:
            timeline = self.case()["timeline"]
            return sum(t["action"] == "user.notified" for t in timeline) >= expected

        wait_for(notified, self.timeout, f"the worker did not send the {expected} security notices within "
                                         f"{self.timeout:.0f} s: {RUN_HINT}")
        sent = [m for m in read_messages(self.settings.dev_outbox) if self.case_id in str(m.get("idempotency_key"))]
        for message in sent:
            to = mask_email(message["to"]) if message["channel"] == "email" else mask_phone(message["to"])
            what = str(message.get("body", "")).split("\n")[0].split(": ", 1)[-1]
            if str(message.get("idempotency_key", "")).startswith("follow-up:"):
                what = f"follow-up: {message.get('subject')}"
            self.say(f"    {message['channel']:<5} to {to}: {what[:110]}")
        self.say("  (every notice carries a single-use \"this wasn't me\" link; no ticket comment, as the demo "
                 "integration has no callback URL)")
        self.done("step5_follow_up", state=detail["state"], messages=len(sent))

    def _export(self, params: dict[str, str]) -> list[dict[str, Any]]:
        r = self.service.call("GET", "/v1/admin/audit", token=self.c.agent_token, params=params)
        text = self.service.expect(r, 200, doing=f"exporting the audit trail ({params})")
        return [json.loads(line) for line in str(text).splitlines() if line.strip()]

    def _table(self, rows: list[dict[str, Any]]) -> None:
        self.say(f"  {'seq':>4}  {'action':<34} {'actor':<21} reason")
        for row in rows:
            reason = row.get("reason") or ""
            if not reason:  # a few non-secret details say what an unexplained row was about
                shown = {k: v for k, v in (row.get("details") or {}).items() if k in AUDIT_HINTS}
                reason = "[" + ", ".join(f"{k}={v}" for k, v in shown.items()) + "]" if shown else ""
            actor = self.c.actor_label(row["actor_type"], row["actor_id"])
            self.say(f"  {row['seq']:>4}  {row['action']:<34} {actor:<21} {reason[:90]}")

    def audit(self) -> None:
        c = self.c
        self.heading(f"Audit trail for the case (GET /v1/admin/audit?case={self.case_id})")
        rows = self._export({"case": self.case_id})
        self._table(rows)
        # The user's own acts (sign-in, new backup codes) are on their record, not the case; the
        # enrolment that completed the recovery is on the case.
        on_user = [row for row in self._export({"user": c.user_id, "since": self.opened_at})
                   if row.get("case_id") is None]
        self.heading(f"On Alex's record since the case opened, not tied to the case "
                     f"(GET /v1/admin/audit?user={c.user_id}&since=...)")
        self._table(on_user)
        r = self.service.call("GET", "/v1/admin/audit/verify", token=c.senior_token)
        chain = self.service.expect(r, 200, doing="verifying the audit chain")
        self.done("audit", case_events=[_brief(x) for x in rows], user_events=[_brief(x) for x in on_user],
                  chain=chain)
        if not chain.get("ok"):
            raise DemoFailed(f"the audit chain is broken at seq {chain.get('first_broken_seq')}: "
                             f"{chain.get('problem')}")
        self.say()
        self.say(f"Chain verified (GET /v1/admin/audit/verify as the senior admin): {chain['events']} events "
                 f"in tenant {c.slug}, every hash links: ok")


AUDIT_HINTS = ("ticket_id", "method", "event", "channel_kind", "kind", "new_ip", "emails", "status", "count")


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in ("seq", "action", "actor_type", "actor_id", "reason")}


def run_demo(settings: Settings, *, url: str | None, timeout: float, as_json: bool,
             browser: bool = False, screenshots: str | None = None) -> int:
    """Run the whole story; 0 when every step happened, 1 otherwise (naming what did not).
    `browser`: step 4 in headless Chromium on the pages, a screenshot of each in `screenshots`."""
    story = Story(settings=settings, service=Service(url or default_url(settings), min(max(timeout, 5.0), 30.0)),
                  timeout=timeout, as_json=as_json)
    step4: Callable[[], None] = story.step4_enrol
    if browser:
        from pathlib import Path

        from app.demo_browser import BrowserStep

        in_browser = BrowserStep(Path(screenshots or "demo-screenshots"), timeout)
        step4 = lambda: in_browser.run(story)  # noqa: E731
    try:
        for step in (story.preflight, story.provision, story.before_the_ticket, story.ticket,
                     story.step1_verify, story.step2_backup_codes, story.step3_reset, step4,
                     story.step5_follow_up, story.audit):
            step()
    except (KeyError, TypeError, ValueError) as exc:  # an answer without the documented shape
        failure: Exception = DemoFailed(f"unexpected answer from the service ({type(exc).__name__}: {exc})")
        return _fail(story, failure, as_json)
    except DemoFailed as exc:
        return _fail(story, exc, as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, "url": story.service.url, "tenant": story.c.slug,
                               "case_id": story.case_id, "steps": story.steps}, default=str))
    return 0


def _fail(story: Story, exc: Exception, as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": str(exc), "steps": story.steps}, default=str))
    else:
        click.echo(f"\nrekey demo FAILED: {exc}", err=True)
    return 1
