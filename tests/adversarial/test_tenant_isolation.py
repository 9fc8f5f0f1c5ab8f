"""The tenant isolation matrix (R30): every route of the app, every object type, tenant B's
credentials aimed at tenant A's ids. B gets 404 (never 403, never 200), A's rows and audit
chain are unchanged, and no answer to B names anything of A's.

The route list comes from `app.url_map`: a route nobody classified here fails the suite, so a
new endpoint cannot escape the matrix.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.adversarial.conftest import (
    PASSWORD,
    TENANT_HEADER,
    VIDEO_CALL,
    Side,
    World,
    assert_error,
    post_signed,
)
from tests.webpages import assert_page

# How each route is reached, and so how another tenant could try to reach A through it.
AGENT = "agent: B's agent token with A's ids in the path (or body)"
AGENT_LIST = "agent: B's agent token; the answer is B's own, filtered by A's ids or not"
SESSION = "user session: acts on the session's own user, names no id"
SESSION_ID = "user session: B's session with A's key id in the path; only the session's own keys exist"
SIGNIN = "sign-in: the tenant named by X-Rekey-Tenant, credentials checked inside it"
PENDING = "sign-in step 2: the pending sign-in's token, found only inside the tenant named by X-Rekey-Tenant"
WEBHOOK = "webhook: the integration in the path, proven by its own signing secret"
PROVIDER = "provider callback: Twilio's signature; the call is found by Twilio's id"
LINK = "signed link: the token is the credential, no tenant credential is involved"
LINK_PAGE = "link page: the token is the credential and the tenant in the path must be the link's own"
PUBLIC = "public: health, the API document and our static files, no tenant data"
PAGE_SIGNIN = "sign-in page: the tenant in the path, credentials checked inside it"
PAGE_PENDING = "sign-in page step 2: the pending sign-in's cookie, found only inside the tenant in the path"
PAGE_SESSION = "signed-in page: the browser session's own user; another tenant's session is no session"
PAGE_SESSION_ID = "signed-in page naming a key id: only the session's own keys exist"
CONSOLE = "console: B's agent console session with A's ids in the path (or form)"
CONSOLE_SELF = ("console sign-in and own session: the tenant named in the form, then the console session's own "
                "agent (second factor, enrolment, step-up, sign-out); names no id")
CONSOLE_LIST = "console: B's console session; the queue and the audit download are B's own"
CONSOLE_INVITATION = "console invitation: the token is the credential"
FEDERATED_PAGE = ("federated sign-in page: the tenant in the path; only its own identity providers can be "
                  "started (tests/unit/pages/test_federated_signin.py)")
OIDC_CALLBACK = ("OpenID callback: the state is the credential, found only inside the tenant in the path and "
                 "bound to the browser that started it (tests/unit/recovery/test_federated.py)")

ROUTES: dict[tuple[str, str], str] = {
    ("/v1/admin/users/<user_id>", "GET"): AGENT,
    ("/v1/admin/users/<user_id>/notes", "POST"): AGENT,
    ("/v1/admin/users/<user_id>/channels/<channel_id>/trust", "POST"): AGENT,
    ("/v1/admin/cases/<case_id>", "GET"): AGENT,
    ("/v1/admin/cases/<case_id>/evidence", "POST"): AGENT,
    ("/v1/admin/cases/<case_id>/verification-calls", "POST"): AGENT,
    ("/v1/admin/cases/<case_id>/verification-calls/<call_id>/confirm", "POST"): AGENT,
    ("/v1/admin/cases/<case_id>/actions/<action>", "POST"): AGENT,
    ("/v1/admin/cases", "GET"): AGENT_LIST,
    ("/v1/admin/audit", "GET"): AGENT_LIST,
    ("/v1/admin/audit/verify", "GET"): AGENT_LIST,
    ("/v1/admin/audit/checkpoints", "GET"): AGENT_LIST,
    ("/v1/auth/signin", "POST"): SIGNIN,
    ("/v1/auth/signin/password", "POST"): SIGNIN,
    ("/v1/auth/signin/second-factor", "POST"): PENDING,
    ("/v1/auth/signin/webauthn/options", "POST"): PENDING,
    ("/v1/auth/signin/webauthn/verify", "POST"): PENDING,
    ("/v1/auth/enrol/totp", "POST"): SESSION,
    ("/v1/auth/enrol/totp/confirm", "POST"): SESSION,
    ("/v1/auth/enrol/webauthn", "POST"): SESSION,
    ("/v1/auth/enrol/webauthn/confirm", "POST"): SESSION,
    ("/v1/auth/security-keys", "GET"): SESSION,
    ("/v1/auth/security-keys/<key_id>", "PATCH"): SESSION_ID,
    ("/v1/auth/security-keys/<key_id>", "DELETE"): SESSION_ID,
    ("/v1/auth/backup-codes", "POST"): SESSION,
    ("/v1/auth/password", "POST"): SESSION,
    ("/v1/webhooks/<integration_id>", "POST"): WEBHOOK,
    ("/v1/webhooks/twilio/status", "POST"): PROVIDER,
    ("/v1/recovery/report/<token>", "POST"): LINK,
    ("/v1/recovery/cancel/<token>", "POST"): LINK,
    ("/v1/recovery/report/<token>", "GET"): LINK,  # 303 to the link's page
    ("/v1/recovery/cancel/<token>", "GET"): LINK,
    ("/t/<tenant>/links/report/<token>", "GET"): LINK_PAGE,
    ("/t/<tenant>/links/report/<token>", "POST"): LINK_PAGE,
    ("/t/<tenant>/links/cancel/<token>", "GET"): LINK_PAGE,
    ("/t/<tenant>/links/cancel/<token>", "POST"): LINK_PAGE,
    ("/t/<tenant>/signin", "GET"): PAGE_SIGNIN,
    ("/t/<tenant>/signin", "POST"): PAGE_SIGNIN,
    ("/t/<tenant>/signin/verify", "GET"): PAGE_PENDING,
    ("/t/<tenant>/signin/verify", "POST"): PAGE_PENDING,
    ("/t/<tenant>/signin/key/options", "POST"): PAGE_PENDING,
    ("/t/<tenant>/signin/key", "POST"): PAGE_PENDING,
    ("/t/<tenant>/signout", "POST"): PAGE_SESSION,
    ("/t/<tenant>/enrol", "GET"): PAGE_SESSION,
    ("/t/<tenant>/enrol/totp", "POST"): PAGE_SESSION,
    ("/t/<tenant>/enrol/totp/confirm", "POST"): PAGE_SESSION,
    ("/t/<tenant>/enrol/key", "GET"): PAGE_SESSION,
    ("/t/<tenant>/enrol/key", "POST"): PAGE_SESSION,
    ("/t/<tenant>/enrol/key/options", "POST"): PAGE_SESSION,
    ("/t/<tenant>/enrol/done", "GET"): PAGE_SESSION,
    ("/t/<tenant>/backup-codes", "POST"): PAGE_SESSION,
    ("/t/<tenant>/password", "GET"): PAGE_SESSION,
    ("/t/<tenant>/password", "POST"): PAGE_SESSION,
    ("/t/<tenant>/account", "GET"): PAGE_SESSION,
    ("/t/<tenant>/account/keys/<key_id>/remove", "POST"): PAGE_SESSION_ID,
    ("/t/<tenant>/links/federated/<token>", "GET"): LINK_PAGE,
    ("/t/<tenant>/links/federated/<token>", "POST"): LINK_PAGE,
    ("/t/<tenant>/signin/federated", "GET"): FEDERATED_PAGE,
    ("/t/<tenant>/signin/federated", "POST"): FEDERATED_PAGE,
    ("/t/<tenant>/oidc/callback", "GET"): OIDC_CALLBACK,
    ("/healthz", "GET"): PUBLIC,
    ("/readyz", "GET"): PUBLIC,
    ("/openapi.json", "GET"): PUBLIC,
    ("/static/<path:filename>", "GET"): PUBLIC,  # our CSS, script and the vendored htmx
    # The agent console (issue 10).
    ("/console/", "GET"): CONSOLE_SELF,
    ("/console/signin", "GET"): CONSOLE_SELF,
    ("/console/signin", "POST"): CONSOLE_SELF,
    ("/console/signin/factor", "GET"): CONSOLE_SELF,
    ("/console/signin/factor", "POST"): CONSOLE_SELF,
    ("/console/signin/key/options", "POST"): CONSOLE_SELF,
    ("/console/signin/key", "POST"): CONSOLE_SELF,
    ("/console/enrol", "GET"): CONSOLE_SELF,
    ("/console/enrol/totp", "POST"): CONSOLE_SELF,
    ("/console/enrol/totp/confirm", "POST"): CONSOLE_SELF,
    ("/console/enrol/key/options", "POST"): CONSOLE_SELF,
    ("/console/enrol/key", "POST"): CONSOLE_SELF,
    ("/console/step-up/key/options", "POST"): CONSOLE_SELF,
    ("/console/step-up/key", "POST"): CONSOLE_SELF,
    ("/console/signout", "POST"): CONSOLE_SELF,
    ("/console/invitation/<token>", "GET"): CONSOLE_INVITATION,
    ("/console/invitation/<token>", "POST"): CONSOLE_INVITATION,
    ("/console/queue", "GET"): CONSOLE_LIST,
    ("/console/audit", "GET"): CONSOLE_LIST,
    ("/console/agents", "GET"): CONSOLE_LIST,
    ("/console/agents/<agent_id>/reset-mfa", "POST"): CONSOLE,
    ("/console/audit.<fmt>", "GET"): CONSOLE,
    ("/console/cases/<case_id>", "GET"): CONSOLE,
    ("/console/cases/<case_id>/live", "GET"): CONSOLE,
    ("/console/cases/<case_id>/evidence", "POST"): CONSOLE,
    ("/console/cases/<case_id>/calls", "POST"): CONSOLE,
    ("/console/cases/<case_id>/calls/<call_id>/confirm", "POST"): CONSOLE,
    ("/console/cases/<case_id>/actions/<action>", "POST"): CONSOLE,
    ("/console/users/<user_id>", "GET"): CONSOLE,
    ("/console/users/<user_id>/notes", "POST"): CONSOLE,
    # Operator-only (REKEY_METRICS_TOKEN, else 404); counts by kind/state/action, no tenant's ids or
    # names (tests/unit/test_metrics.py checks the labels).
    ("/metrics", "GET"): PUBLIC,
}

ACTIONS = ("force_mfa_reset", "generate_backup_codes", "set_temporary_password", "suspend_user", "approve",
           "resume", "refuse", "reopen", "escalate", "send_follow_up", "close", "retry_action",
           "send_federated_signin_link")


def _app_routes(app: Any) -> set[tuple[str, str]]:
    return {(rule.rule, method) for rule in app.url_map.iter_rules()
            for method in (rule.methods or ()) if method not in ("HEAD", "OPTIONS")}


def test_every_route_is_classified(app: Any) -> None:
    routes = _app_routes(app)
    assert routes - set(ROUTES) == set(), "classify the new route(s) in ROUTES and probe them"
    assert set(ROUTES) - routes == set(), "a classified route no longer exists"


def test_every_action_is_probed() -> None:
    from app.recovery.commands import AGENT_ACTIONS as SERVED

    assert set(SERVED) == set(ACTIONS)


# --- B's agents aimed at A's objects ----------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One request naming A's object(s); `route` ties it to the matrix."""

    route: tuple[str, str]
    name: str
    url: str
    body: dict[str, Any] | None = None


def agent_probes(a: Side, b: Side) -> list[Probe]:
    """Every agent route, with every object type of A's that it can name: users, cases, calls,
    channels (a body reference), each action; and B's own case with A's call or channel."""
    case = f"/v1/admin/cases/{a.case_id}"
    own = f"/v1/admin/cases/{b.case_id}"
    calls = "/v1/admin/cases/<case_id>/verification-calls"
    confirm = "/v1/admin/cases/<case_id>/verification-calls/<call_id>/confirm"
    probes = [
        Probe(("/v1/admin/users/<user_id>", "GET"), "A's user", f"/v1/admin/users/{a.user_id}"),
        Probe(("/v1/admin/users/<user_id>/notes", "POST"), "a note on A's user",
              f"/v1/admin/users/{a.user_id}/notes", {"body": "Looked at this account."}),
        Probe(("/v1/admin/users/<user_id>/channels/<channel_id>/trust", "POST"), "trusting A's phone",
              f"/v1/admin/users/{a.user_id}/channels/{a.channel_id}/trust", {"reason": "cross-tenant probe"}),
        Probe(("/v1/admin/users/<user_id>/channels/<channel_id>/trust", "POST"), "A's phone on B's user",
              f"/v1/admin/users/{b.user_id}/channels/{a.channel_id}/trust", {"reason": "cross-tenant probe"}),
        Probe(("/v1/admin/cases/<case_id>", "GET"), "A's case", case),
        Probe(("/v1/admin/cases/<case_id>/evidence", "POST"), "evidence on A's case", f"{case}/evidence",
              {"type": "video_call", "details": VIDEO_CALL, "reason": "seen on video"}),
        Probe(("/v1/admin/cases/<case_id>/evidence", "POST"), "refused evidence on A's case",
              f"{case}/evidence", {"type": "email_match", "details": {}, "reason": "address matches"}),
        Probe((calls, "POST"), "a call on A's case to A's phone", f"{case}/verification-calls",
              {"channel_id": a.channel_id, "method": "sms"}),
        Probe((calls, "POST"), "a call on B's case to A's phone", f"{own}/verification-calls",
              {"channel_id": a.channel_id, "method": "voice"}),
        Probe((confirm, "POST"), "A's call on A's case", f"{case}/verification-calls/{a.call_id}/confirm",
              {"code": "12345678"}),
        Probe((confirm, "POST"), "A's call on B's case", f"{own}/verification-calls/{a.call_id}/confirm",
              {"code": "12345678"}),
    ]
    for action in ACTIONS:
        probes.append(Probe(("/v1/admin/cases/<case_id>/actions/<action>", "POST"), f"{action} on A's case",
                            f"{case}/actions/{action}",
                            {"reason": "cross-tenant probe", "backup_codes_unusable": "lost them too"}
                            if action == "force_mfa_reset" else {"reason": "cross-tenant probe"}))
    probes.append(Probe(("/v1/admin/cases/<case_id>/actions/<action>", "POST"), "a federated link on A's case to "
                        "A's phone", f"{case}/actions/send_federated_signin_link",
                        {"reason": "cross-tenant probe", "channel_id": a.channel_id}))
    probes.append(Probe(("/v1/admin/cases/<case_id>/actions/<action>", "POST"), "a federated link on B's case to "
                        "A's phone", f"{own}/actions/send_federated_signin_link",
                        {"reason": "cross-tenant probe", "channel_id": a.channel_id}))
    return probes


def _send(client: Any, probe: Probe, headers: dict[str, str]) -> Any:
    method = probe.route[1]
    return client.open(probe.url, method=method, headers=headers, json=probe.body)


def _no_leak(answer: Any, side: Side) -> None:
    text = answer.get_data(as_text=True)
    leaked = sorted(name for name in side.id_strings() if name in text)
    assert not leaked, f"the answer names the other tenant's {leaked}"


def test_every_agent_route_is_probed(world: World) -> None:
    probed = {p.route for p in agent_probes(world.a, world.b)}
    assert probed == {route for route, kind in ROUTES.items() if kind == AGENT}


@pytest.mark.parametrize("role", ["support", "senior"])
def test_b_agents_get_404_for_every_object_of_a(client: Any, world: World, unchanged: Any, role: str) -> None:
    a, b = world.a, world.b
    headers = getattr(b, role).headers
    for probe in agent_probes(a, b):
        with unchanged(a):
            answer = _send(client, probe, headers)
            assert_error(answer, 404, "not_found")
        _no_leak(answer, a)


def test_b_user_session_is_no_agent_token(client: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    for probe in agent_probes(a, b):
        with unchanged(a):
            assert_error(_send(client, probe, b.session_headers), 401)


def test_b_case_list_never_shows_a(client: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    for query in ("", "?state=verified", "?state=awaiting_verification", "?limit=500"):
        with unchanged(a):
            answer = client.get(f"/v1/admin/cases{query}", headers=b.senior.headers)
        assert answer.status_code == 200
        ids = {c["id"] for c in answer.get_json()}
        assert a.case_id not in ids
        _no_leak(answer, a)
    assert b.case_id in {c["id"] for c in client.get("/v1/admin/cases", headers=b.senior.headers).get_json()}


def _export(client: Any, side: Side, query: str) -> list[dict[str, Any]]:
    answer = client.get(f"/v1/admin/audit{query}", headers=side.senior.headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    text = answer.get_data(as_text=True)
    if "format=csv" in query:
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines() if line]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_b_audit_export_never_contains_a_events(client: Any, world: World, unchanged: Any, fmt: str) -> None:
    a, b = world.a, world.b
    a_events = {e["id"] for e in _export(client, a, f"?format={fmt}")}
    assert len(a_events) > 5
    filters = ["", f"&user={a.user_id}", f"&case={a.case_id}", f"&actor={a.support.agent.id}",
               "&action=recovery.evidence_recorded", "&since=2000-01-01T00:00:00Z"]
    for extra in filters:
        with unchanged(a):
            rows = _export(client, b, f"?format={fmt}{extra}")
        assert not {r["id"] for r in rows} & a_events, extra
        if fmt == "jsonl":
            assert {r["tenant_id"] for r in rows} <= {str(b.tenant.id)}
        if extra == "":
            assert rows, "B's own trail is exported (the test is not vacuous)"
    answer = client.get(f"/v1/admin/audit?format={fmt}&case={a.case_id}", headers=b.senior.headers)
    _no_leak(answer, a)


def test_b_chain_verification_covers_only_b(client: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    with unchanged(a):
        answer = client.get("/v1/admin/audit/verify", headers=b.senior.headers)
    report = answer.get_json()
    assert answer.status_code == 200 and report["ok"] is True
    assert report["tenant_id"] == str(b.tenant.id)
    assert report["events"] == len(_export(client, b, "?format=jsonl")) - 1  # minus that export's own event
    _no_leak(answer, a)


# --- B's user session, B's sign-in --------------------------------------------------------------


def test_b_user_session_touches_only_b(client: Any, world: World, unchanged: Any) -> None:
    from tests.authenticator import SoftKey

    a, b = world.a, world.b
    registration = client.post("/v1/auth/enrol/webauthn", headers=a.session_headers).get_json()["options"]
    a_answer = SoftKey().create(registration)  # an answer to A's own registration options
    calls = [("POST", "/v1/auth/enrol/totp", None), ("POST", "/v1/auth/enrol/totp/confirm", {"code": "123456"}),
             ("POST", "/v1/auth/backup-codes", None),
             ("POST", "/v1/auth/password", {"new_password": "another long passphrase",
                                            "current_password": "wrong one"}),
             ("POST", "/v1/auth/enrol/webauthn", None),
             ("POST", "/v1/auth/enrol/webauthn/confirm", {"credential": a_answer}),
             ("GET", "/v1/auth/security-keys", None)]
    assert {(url, method) for method, url, _ in calls} == {r for r, kind in ROUTES.items() if kind == SESSION}
    for method, url, body in calls:
        with unchanged(a):
            answer = client.open(url, method=method, json=body, headers=b.session_headers)
        assert answer.status_code < 500
        _no_leak(answer, a)
    assert b.key_id in client.get("/v1/auth/security-keys", headers=b.session_headers).get_data(as_text=True)


@pytest.mark.parametrize(("method", "body"), [("PATCH", {"label": "mine now"}), ("DELETE", None)])
def test_b_user_session_naming_a_key_of_a_gets_404(client: Any, world: World, unchanged: Any, method: str,
                                                   body: Any) -> None:
    a, b = world.a, world.b
    assert {r for r, kind in ROUTES.items() if kind == SESSION_ID} == {
        ("/v1/auth/security-keys/<key_id>", "PATCH"), ("/v1/auth/security-keys/<key_id>", "DELETE")}
    with unchanged(a):
        answer = client.open(f"/v1/auth/security-keys/{a.key_id}", method=method, json=body,
                             headers=b.session_headers)
        assert_error(answer, 404, "not_found")
    _no_leak(answer, a)


def test_sign_in_with_a_credentials_at_b_is_the_unknown_user_answer(client: Any, world: World,
                                                                   unchanged: Any) -> None:
    a, b = world.a, world.b
    with unchanged(a):
        answer = client.post("/v1/auth/signin", json={"email": a.user.email, "password": PASSWORD},
                             headers={TENANT_HEADER: b.tenant.slug})
        assert_error(answer, 401, "invalid_credentials")
    unknown = client.post("/v1/auth/signin", json={"email": "nobody@example.com", "password": PASSWORD},
                          headers={TENANT_HEADER: b.tenant.slug})
    assert unknown.get_json() == answer.get_json()
    # ...and A's own sign-in front end does admit the same credentials (the probe is not vacuous).
    own = client.post("/v1/auth/signin", json={"email": a.user.email, "password": PASSWORD},
                      headers={TENANT_HEADER: a.tenant.slug})
    assert own.status_code == 200 and own.get_json()["status"] == "mfa_required"


def test_a_pending_sign_in_of_a_is_worthless_at_b(client: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    started = client.post("/v1/auth/signin/password", json={"email": a.user.email, "password": PASSWORD},
                          headers={TENANT_HEADER: a.tenant.slug})
    assert started.status_code == 200 and started.get_json()["methods"] == ["totp", "webauthn"]
    pending = started.get_json()["pending_token"]
    steps = [("second-factor", {"pending_token": pending, "otp": "123456"}),
             ("webauthn/options", {"pending_token": pending})]
    assert {(f"/v1/auth/signin/{p}", "POST") for p, _ in steps} | {("/v1/auth/signin/webauthn/verify", "POST")} \
        == {r for r, kind in ROUTES.items() if kind == PENDING}
    for path, body in steps:
        with unchanged(a):
            answer = client.post(f"/v1/auth/signin/{path}", json=body, headers={TENANT_HEADER: b.tenant.slug})
            assert_error(answer, 401, "signin_expired")
        _no_leak(answer, a)
    # ...and at A, the same token does reach A's keys (the probe is not vacuous).
    own = client.post("/v1/auth/signin/webauthn/options", json={"pending_token": pending},
                      headers={TENANT_HEADER: a.tenant.slug})
    assert own.status_code == 200 and len(own.get_json()["options"]["allowCredentials"]) == 1


def test_a_credentials_at_b_password_step_are_the_unknown_user_answer(client: Any, world: World,
                                                                      unchanged: Any) -> None:
    a, b = world.a, world.b
    with unchanged(a):
        answer = client.post("/v1/auth/signin/password", json={"email": a.user.email, "password": PASSWORD},
                             headers={TENANT_HEADER: b.tenant.slug})
        assert_error(answer, 401, "invalid_credentials")
    unknown = client.post("/v1/auth/signin/password", json={"email": "nobody@example.com", "password": PASSWORD},
                          headers={TENANT_HEADER: b.tenant.slug})
    assert unknown.get_json() == answer.get_json()


# --- B's integrations aimed at A ----------------------------------------------------------------


def test_webhook_to_a_signed_with_b_secret_is_401(client: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    payload = {"type": "recovery.requested", "data": {"user_email": a.user.email, "ticket_id": "T-B"}}
    for integration, secret in ((a.integration, b.secret), (a.integration, b.hr_secret),
                                (a.hr, b.hr_secret), (a.hr, b.secret)):
        with unchanged(a):
            assert_error(post_signed(client, integration, secret, payload), 401, "invalid_signature")


@pytest.mark.parametrize("target", ["case_id", "user_email"])
def test_b_hr_integration_cannot_attest_a_case(client: Any, world: World, unchanged: Any, target: str) -> None:
    a, b = world.a, world.b
    data: dict[str, Any] = {"voucher_email": "manager@example.com", "relation": "manager", "reference": "HR-9"}
    data[target] = a.case_id if target == "case_id" else a.user.email
    with unchanged(a):
        answer = post_signed(client, b.hr, b.hr_secret, {"type": "recovery.attested", "data": data})
        assert_error(answer, 404, "not_found")
    _no_leak(answer, a)


def test_b_integration_cannot_report_on_a_call(client: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    with unchanged(a):
        answer = post_signed(client, b.integration, b.secret, {
            "type": "verification.callback_result", "data": {"call_id": a.call_id, "status": "failed"}})
        assert_error(answer, 404, "not_found")


def test_b_ticket_naming_a_user_opens_nothing_at_a(app: Any, client: Any, world: World, unchanged: Any) -> None:
    from app.extensions import db
    from app.recovery.models import RecoveryCase

    a, b = world.a, world.b
    with unchanged(a):
        answer = post_signed(client, b.integration, b.secret, {
            "type": "recovery.requested", "data": {"user_email": a.user.email, "ticket_id": "T-X"}})
    assert answer.status_code == 202  # the answer for any address B does not know (R24)
    with app.app_context():
        case = db.session.get(RecoveryCase, uuid.UUID(answer.get_json()["case_id"]))
        assert case.tenant_id == b.tenant.id and case.user_id is None


# --- the doors that carry no tenant credential ----------------------------------------------


def test_provider_callback_without_twilio_signature_changes_nothing(client: Any, world: World,
                                                                    unchanged: Any) -> None:
    with unchanged(world.a):
        answer = client.post("/v1/webhooks/twilio/status",
                             data={"MessageSid": "SM1", "MessageStatus": "failed"})
        assert_error(answer, 401, "invalid_signature")


@pytest.mark.parametrize("purpose", ["report", "cancel"])
def test_links_are_404_without_a_real_token(client: Any, world: World, unchanged: Any, purpose: str) -> None:
    for token in (uuid.uuid4().hex + ".00", world.a.case_id, world.a.user_id, "x"):
        with unchanged(world.a):
            assert_error(client.post(f"/v1/recovery/{purpose}/{token}"), 404, "not_found")
            assert_page(client.get(f"/v1/recovery/{purpose}/{token}"), 404)
            for slug in (world.a.tenant.slug, world.b.tenant.slug):
                page = f"/t/{slug}/links/{purpose}/{token}"
                assert_page(client.get(page), 404)
                assert_page(client.post(page, data={"csrf_token": _csrf(client, slug)}), 404)


def _csrf(client: Any, slug: str) -> str:
    import re

    page = client.get(f"/t/{slug}/links/report/x").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def a_link(app: Any, world: World) -> str:
    """The page path of a real "this wasn't me" link of A's, from a notice the worker code sent."""
    from app.extensions import db
    from app.recovery.models import RecoveryCase
    from app.recovery.notify import announce
    from tests.recovery_steps import PAGE_LINK

    with app.app_context():
        announce(db.session.get(RecoveryCase, uuid.UUID(world.a.case_id)), "mfa.factor_enrolled")
        db.session.commit()
    world.factory.drain_tasks()
    from integrations.channels.dev import read_messages

    outbox = app.extensions["rekey.settings"].dev_outbox
    sent = [m for m in read_messages(outbox, to=world.a.user.email)
            if f"notice:{world.a.case_id}:mfa.factor_enrolled" in m["idempotency_key"]]
    return str(PAGE_LINK.findall(sent[-1]["body"])[0][0])


def test_a_link_through_b_tenant_path_shows_and_does_nothing(client: Any, world: World, unchanged: Any,
                                                            a_link: str) -> None:
    a, b = world.a, world.b
    through_b = a_link.replace(f"/t/{a.tenant.slug}/", f"/t/{b.tenant.slug}/")
    assert through_b != a_link
    with unchanged(a):
        shown = client.get(through_b)
        confirmed = client.post(through_b, data={"csrf_token": _csrf(client, b.tenant.slug)})
    for answer in (shown, confirmed):
        assert "This link cannot be used" in assert_page(answer, 404)
        _no_leak(answer, a)
    # Not vacuous: at A's own path the same link shows A's notice (a GET changes nothing).
    with unchanged(a):
        own = client.get(a_link)
    assert a.case_id in assert_page(own, 200)


def test_a_link_in_its_old_form_leads_to_a_page(client: Any, world: World, unchanged: Any, a_link: str) -> None:
    token = a_link.rsplit("/", 1)[1]
    with unchanged(world.a):
        answer = client.get(f"/v1/recovery/report/{token}")
    assert answer.status_code == 303 and answer.headers["Location"] == a_link


@pytest.mark.parametrize("url", ["/healthz", "/readyz", "/openapi.json"])
def test_public_routes_name_no_tenant(client: Any, world: World, url: str) -> None:
    answer = client.get(url, headers=world.b.senior.headers)
    assert answer.status_code in (200, 503)
    _no_leak(answer, world.a)


@pytest.mark.parametrize("name", ["x.js", "../app/config.py", "..%2F..%2Fetc%2Fpasswd", "%00", "../__init__.py",
                                  "..%2F__init__.py", "%2e%2e/config.py"])
def test_static_serves_only_our_files(client: Any, name: str) -> None:
    assert_error(client.get(f"/static/{name}"), 404)
    shown = client.get("/static/css/rekey.css")
    assert shown.status_code == 200 and shown.mimetype == "text/css"
    shown.close()


# --- the probes are not vacuous: A's own agents reach every object ----------------------------


# --- the sign-in, enrolment and account pages ---------------------------------------------------

BROWSER_COOKIE = "__Host-rekey_session"


def _browser_client(app: Any, side: Side) -> Any:
    """A browser signed in as the side's user (a full browser session in its cookie)."""
    from app.accounts.models import User
    from app.accounts.services import open_session
    from app.extensions import db

    with app.app_context():
        user = db.session.get(User, side.user.id)
        token = open_session(user, scope="full", ip="203.0.113.9", kind="browser")
        db.session.commit()
    browser = app.test_client()
    browser.set_cookie(BROWSER_COOKIE, token)
    return browser


def _page_token(browser: Any, path: str) -> str:
    from tests.webpages import form_token

    return form_token(browser.get(path))


def test_b_browser_session_is_no_session_on_a_pages(app: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    browser = _browser_client(app, b)
    session_routes = {r for r, kind in ROUTES.items() if kind == PAGE_SESSION}
    token = _page_token(browser, f"/t/{a.tenant.slug}/signin")
    probed = set()
    for rule, method in sorted(session_routes):
        path = rule.replace("<tenant>", a.tenant.slug)
        with unchanged(a):
            answer = browser.open(path, method=method, data={"csrf_token": token} if method == "POST" else None)
        probed.add((rule, method))
        if rule.endswith("/signout"):
            assert answer.status_code == 303  # signing out of nothing: nothing of A's is touched
        else:
            assert answer.status_code == 303 and answer.headers["Location"].startswith(
                f"/t/{a.tenant.slug}/signin"), (rule, method, answer.status_code)
        _no_leak(answer, a)
    assert probed == session_routes
    # ...and the same session does reach B's own account page (the probe is not vacuous).
    browser = _browser_client(app, b)
    assert "Account security" in assert_page(browser.get(f"/t/{b.tenant.slug}/account"), 200)


def test_b_browser_session_naming_a_key_of_a_gets_404(app: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    assert {r for r, kind in ROUTES.items() if kind == PAGE_SESSION_ID} == {
        ("/t/<tenant>/account/keys/<key_id>/remove", "POST")}
    browser = _browser_client(app, b)
    token = _page_token(browser, f"/t/{b.tenant.slug}/account")
    with unchanged(a):
        answer = browser.post(f"/t/{b.tenant.slug}/account/keys/{a.key_id}/remove", data={"csrf_token": token})
        assert_page(answer, 404)
    _no_leak(answer, a)


def test_a_credentials_at_b_signin_page_are_the_unknown_user_answer(app: Any, world: World,
                                                                    unchanged: Any) -> None:
    a, b = world.a, world.b
    assert {r for r, kind in ROUTES.items() if kind == PAGE_SIGNIN} == {
        ("/t/<tenant>/signin", "GET"), ("/t/<tenant>/signin", "POST")}
    browser = app.test_client()
    token = _page_token(browser, f"/t/{b.tenant.slug}/signin")
    with unchanged(a):
        answer = browser.post(f"/t/{b.tenant.slug}/signin", data={"csrf_token": token, "email": a.user.email,
                                                                  "password": PASSWORD})
        text = assert_page(answer, 401)
    unknown = browser.post(f"/t/{b.tenant.slug}/signin", data={"csrf_token": token, "email": "nobody@example.com",
                                                               "password": PASSWORD})
    assert assert_page(unknown, 401) == text.replace(a.user.email, "nobody@example.com")
    assert "The email, password or code is not correct." in text


def test_a_pending_signin_cookie_is_worthless_at_b_pages(app: Any, world: World, unchanged: Any) -> None:
    a, b = world.a, world.b
    browser = app.test_client()
    token = _page_token(browser, f"/t/{a.tenant.slug}/signin")
    started = browser.post(f"/t/{a.tenant.slug}/signin", data={"csrf_token": token, "email": a.user.email,
                                                               "password": PASSWORD})
    assert started.status_code == 303 and started.headers["Location"] == f"/t/{a.tenant.slug}/signin/verify"
    # At A the cookie reaches A's second step (the probe is not vacuous)...
    assert "Security key" in assert_page(browser.get(f"/t/{a.tenant.slug}/signin/verify"), 200)
    pending = browser.get_cookie("__Host-rekey_pending").value
    token = _page_token(browser, f"/t/{b.tenant.slug}/signin")
    pending_routes = {r for r, kind in ROUTES.items() if kind == PAGE_PENDING}
    for rule, method in sorted(pending_routes):
        path = rule.replace("<tenant>", b.tenant.slug)
        browser.set_cookie("__Host-rekey_pending", pending)  # a refusal forgets it; each probe carries it
        with unchanged(a):
            answer = browser.open(path, method=method, data={"csrf_token": token, "code": "123456"},
                                  headers={"X-CSRF-Token": token})
        assert answer.status_code == 401, (rule, method, answer.status_code)
        _no_leak(answer, a)
    # ...and at B it is no sign-in at all.


def test_a_agents_reach_every_probed_object(client: Any, world: World) -> None:
    """Run last (it changes A): the same requests with A's senior admin find every object."""
    a, b = world.a, world.b
    for probe in agent_probes(a, b):
        if f"/v1/admin/cases/{b.case_id}" in probe.url or f"/v1/admin/users/{b.user_id}" in probe.url:
            continue  # B's case and user are B's; A's agent rightly gets 404 there
        answer = _send(client, probe, a.senior.headers)
        assert answer.status_code != 404, (probe.name, answer.get_json())


# --- the agent console (issue 10): B's console session aimed at A's objects --------------------


def console_probes(a: Side, b: Side) -> list[Probe]:
    """Every console route naming an id, with A's objects (and B's own case with A's call)."""
    case, own = f"/console/cases/{a.case_id}", f"/console/cases/{b.case_id}"
    probes = [
        Probe(("/console/cases/<case_id>", "GET"), "A's case page", case),
        Probe(("/console/cases/<case_id>/live", "GET"), "A's case, polled", f"{case}/live"),
        Probe(("/console/cases/<case_id>/evidence", "POST"), "evidence on A's case", f"{case}/evidence",
              {"type": "video_call", **VIDEO_CALL, "reason": "seen on video"}),
        Probe(("/console/cases/<case_id>/evidence", "POST"), "refused evidence on A's case", f"{case}/evidence",
              {"type": "email_match", "reason": "address matches"}),
        Probe(("/console/cases/<case_id>/calls", "POST"), "a call on A's case", f"{case}/calls",
              {"channel_id": a.channel_id, "method": "sms"}),
        Probe(("/console/cases/<case_id>/calls", "POST"), "a call on B's case to A's phone", f"{own}/calls",
              {"channel_id": a.channel_id, "method": "sms"}),
        Probe(("/console/cases/<case_id>/calls/<call_id>/confirm", "POST"), "A's call",
              f"{case}/calls/{a.call_id}/confirm", {"code": "12345678"}),
        Probe(("/console/cases/<case_id>/calls/<call_id>/confirm", "POST"), "A's call on B's case",
              f"{own}/calls/{a.call_id}/confirm", {"code": "12345678"}),
        Probe(("/console/users/<user_id>", "GET"), "A's user's MFA tab", f"/console/users/{a.user_id}"),
        Probe(("/console/users/<user_id>/notes", "POST"), "a note on A's user", f"/console/users/{a.user_id}/notes",
              {"body": "Looked at this account."}),
        Probe(("/console/audit.<fmt>", "GET"), "A's case's audit", f"/console/audit.csv?case={a.case_id}"),
        Probe(("/console/agents/<agent_id>/reset-mfa", "POST"), "resetting A's agent's second factor",
              f"/console/agents/{a.senior.agent.id}/reset-mfa", {"reason": "cross-tenant probe"}),
        Probe(("/console/audit.<fmt>", "GET"), "A's user's audit", f"/console/audit.jsonl?user={a.user_id}"),
    ]
    for action in ACTIONS:
        probes.append(Probe(("/console/cases/<case_id>/actions/<action>", "POST"), f"{action} on A's case",
                            f"{case}/actions/{action}", {"reason": "cross-tenant probe", "confirm": "yes"}))
    return probes


def test_every_console_route_is_probed(world: World) -> None:
    probed = {p.route for p in console_probes(world.a, world.b)}
    assert probed == {route for route, kind in ROUTES.items() if kind == CONSOLE}


@pytest.mark.parametrize("role", ["support_agent", "senior_admin"])
def test_b_console_agents_get_404_for_every_object_of_a(app: Any, world: World, unchanged: Any, role: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.console import credentials
    from tests.consolework import console_frozen_clock, console_sign_in, make_console_agent
    from tests.webpages import form_token

    clock = console_frozen_clock()
    monkeypatch.setattr(credentials, "time", clock)
    a, b = world.a, world.b
    who = make_console_agent(app, world.factory, b.tenant, clock, role=role)
    browser = app.test_client()
    console_sign_in(browser, who, clock)
    token = form_token(browser.get("/console/queue"))
    for probe in console_probes(a, b):
        with unchanged(a):
            if probe.route[1] == "GET":
                answer = browser.get(probe.url)
            else:
                answer = browser.post(probe.url, data={"csrf_token": token, **(probe.body or {})})
            assert_page(answer, 404)
        _no_leak(answer, a)
    queue = browser.get("/console/queue")
    assert queue.status_code == 200 and a.case_id not in queue.get_data(as_text=True)
    _no_leak(queue, a)
    with unchanged(a):
        assert_page(browser.get(f"/console/audit?case={a.case_id}"), 404)
    if role == "senior_admin":
        agents = browser.get("/console/agents")
        assert agents.status_code == 200
        _no_leak(agents, a)
        assert a.senior.agent.email not in agents.get_data(as_text=True)
    everything = browser.get("/console/audit.jsonl")
    assert everything.status_code == 200
    rows = [json.loads(line) for line in everything.get_data(as_text=True).splitlines() if line]
    assert rows and {r["tenant_id"] for r in rows} == {str(b.tenant.id)}
    # B's trail may quote A's ids only where B's own agents typed them: the filters of B's earlier
    # exports probing A (this module's API tests), recorded as B's `audit.exported`. Nothing else.
    echoed = [r for r in rows if any(name in json.dumps(r) for name in a.id_strings())]
    assert all(r["action"] == "audit.exported" and r["actor_id"] != str(a.support.agent.id) for r in echoed), echoed


def test_a_agent_console_credentials_at_b_are_the_unknown_answer(app: Any, world: World, unchanged: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from app.console import credentials
    from tests.consolework import AGENT_PASSWORD, console_frozen_clock, make_console_agent
    from tests.webpages import form_token

    clock = console_frozen_clock()
    monkeypatch.setattr(credentials, "time", clock)
    who = make_console_agent(app, world.factory, world.a.tenant, clock)
    browser = app.test_client()
    page = browser.get("/console/signin")
    with unchanged(world.a):
        answer = browser.post("/console/signin", data={"csrf_token": form_token(page), "tenant": world.b.tenant.slug,
                                                       "email": who.agent.email, "password": AGENT_PASSWORD})
    assert "not correct" in assert_page(answer, 401)
