"""Schemathesis against `/openapi.json`, in-process, for every documented operation, with three
credentials: tenant A's own, an invalid one, and tenant B's aimed at A's ids.

Checks on every response: schemathesis's own (no 5xx, status code, content type, headers and
body conform to the document, schema-valid input is never a 400, invalid input is refused, an
operation that declares bearerAuth refuses a request without it or with a made-up one), plus
ours: every 4xx is the contract's error shape; an invalid credential is a 401 whatever the body;
tenant B's answers never name anything of A's, B aimed at A's ids gets 404 (or the 400 any
malformed body gets), and a body signed with B's secret is a 401 at A's integration.

The budget is fixed (MAX_EXAMPLES an operation and credential) and generation is seeded and
derandomized, so a rerun sends the same requests and gets the same verdict.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from integrations.channels.twilio import twilio_signature
from tests.adversarial.conftest import TENANT_HEADER, World, assert_error_shape
from tests.signing import standard_headers

MAX_EXAMPLES = 25
SEED = 20240501
MODES = ("tenant_a", "invalid", "tenant_b")
INVALID_TOKEN = "rk_agent_" + "A" * 43
TWILIO_TOKEN = "twilio-auth-token-for-the-fuzzer"
PUBLIC_URL = "http://rekey.test"
# Path parameters that name one of tenant A's objects, when the draw says so.
ID_PARAMS = ("case_id", "user_id", "call_id", "integration_id", "key_id")
# The sign-in doors: no bearer credential; the tenant is named by X-Rekey-Tenant and proven by the
# password, or by the pending sign-in's token.
SIGNIN_PATHS = {"/v1/auth/signin", "/v1/auth/signin/password", "/v1/auth/signin/second-factor",
                "/v1/auth/signin/webauthn/options", "/v1/auth/signin/webauthn/verify"}


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        # NUL in strings is refused by the JSON parser for every field, which the schema cannot
        # say; test_bad_input sends it to every field by hand instead.
        "generation": {"max-examples": MAX_EXAMPLES, "allow-x00": False},
        "checks": {
            # Schema-valid input may still break a rule (422: a wrong code, refused evidence)
            # but never fails as malformed (400): a 400 here means the document is wrong.
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]},
        },
    })


@pytest.fixture(scope="module", params=MODES)
def api_schema(request: pytest.FixtureRequest, app: Any) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=_config())


@pytest.fixture
def mode(request: pytest.FixtureRequest, tune: Any) -> str:
    tune(twilio_auth_token=TWILIO_TOKEN, public_url=PUBLIC_URL)
    return request.node.callspec.params["api_schema"]  # type: ignore[no-any-return]


schema = schemathesis.pytest.from_fixture("api_schema")

# Served, but deliberately outside the document: health probes, the document itself, our static
# files, and the HTML pages (every route of a PageBlueprint: they speak HTML forms, not JSON).
# /metrics is for the operator's scraper (a bearer token or a separate bind), not part of the API.
UNDOCUMENTED = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/static/<path:filename>"}
PUBLIC_OPERATIONS = {*SIGNIN_PATHS, "/v1/webhooks/{integration_id}", "/v1/webhooks/twilio/status",
                     "/v1/recovery/report/{token}", "/v1/recovery/cancel/{token}"}


def test_every_route_is_documented(app: Any, client: Any) -> None:
    """The fuzzer sees only the document: a route missing from it would never be fuzzed."""
    import re

    from app.webui import PageBlueprint

    spec = client.get("/openapi.json").get_json()
    pages = {name for name, bp in app.blueprints.items() if isinstance(bp, PageBlueprint)}
    served = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule) for rule in app.url_map.iter_rules()
              if rule.rule not in UNDOCUMENTED and rule.endpoint.rpartition(".")[0] not in pages}
    assert pages, "the pages are classified by their blueprint"
    assert served == set(spec["paths"])
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            declared = op.get("security") == [{"bearerAuth": []}]
            assert declared == (path not in PUBLIC_OPERATIONS), (method, path)
            assert "401" in op["responses"] or path.startswith("/v1/recovery/"), (method, path)


def _a_ids(world: World, pick: int) -> dict[str, str]:
    a = world.a
    return {"case_id": a.case_id, "user_id": a.user_id, "call_id": a.call_id, "key_id": a.key_id,
            "integration_id": str((a.integration if pick == 0 else a.hr).id)}


def _aim(case: Any, world: World, pick: int) -> bool:
    """For half the draws, put tenant A's real ids in the path; True when it did."""
    named_a = False
    if pick < 2 and case.path_parameters:
        for name in ID_PARAMS:
            if name in case.path_parameters:
                case.path_parameters[name] = _a_ids(world, pick)[name]
                named_a = True
    return named_a


def _credentials(case: Any, world: World, mode: str) -> dict[str, str]:
    """The headers that carry the mode's credential (sent explicitly, so schemathesis's
    ignored_auth check also probes the operation without them and with a made-up one)."""
    path = case.operation.path
    headers: dict[str, str] = {}
    side = world.a if mode == "tenant_a" else world.b
    if path.startswith("/v1/admin/"):
        headers["Authorization"] = ("Bearer " + INVALID_TOKEN if mode == "invalid"
                                    else side.senior.headers["Authorization"])
    elif path in SIGNIN_PATHS:
        headers[TENANT_HEADER] = "no-such-tenant" if mode == "invalid" else side.tenant.slug
    elif path.startswith("/v1/auth/"):
        headers["Authorization"] = ("Bearer rk_sess_" + "A" * 43 if mode == "invalid"
                                    else side.session_headers["Authorization"])
    return headers


def _kind(path: str) -> str:
    if path.startswith("/v1/admin/"):
        return "agent"
    if path in SIGNIN_PATHS:
        return "signin"
    if path.startswith("/v1/auth/"):
        return "session"
    if path == "/v1/webhooks/twilio/status":
        return "twilio"
    if path.startswith("/v1/webhooks/"):
        return "webhook"
    return "link"


def _signed_body(case: Any, world: World, mode: str) -> dict[str, Any]:
    """In A's own mode, sign the generated body the way the door's sender would (the secret of
    the integration in the path, or Twilio's auth token), sending exactly the signed bytes;
    returns the extra call arguments."""
    if mode == "invalid":
        return {}
    if case.operation.path == "/v1/webhooks/twilio/status" and mode == "tenant_a":
        form = case.body if isinstance(case.body, dict) else None
        if form is None or not all(isinstance(v, str) for v in form.values()):
            return {}
        signature = twilio_signature(PUBLIC_URL + case.operation.path, form, TWILIO_TOKEN)
        return {"data": form, "headers": {"X-Twilio-Signature": signature}}
    if case.operation.path != "/v1/webhooks/{integration_id}":
        return {}
    integration_id = str(case.path_parameters.get("integration_id"))
    secrets = {str(world.a.integration.id): world.a.secret, str(world.a.hr.id): world.a.hr_secret}
    if integration_id not in secrets or not isinstance(case.body, dict | list | str | int | float):
        return {}
    # Tenant B signs with its own integration's secret, aiming at A's integration.
    secret = secrets[integration_id] if mode == "tenant_a" else world.b.secret
    body = json.dumps(case.body).encode()
    return {"data": body, "headers": standard_headers(secret, body)}


def _expectations(world: World, mode: str, info: dict[str, Any], sent: dict[str, str]) -> Any:
    a_names = world.a.id_strings()

    def contract(ctx: Any, response: Any, case: Any) -> bool | None:
        status = response.status_code
        if status >= 400:
            try:
                body = json.loads(response.content)
            except ValueError as exc:
                raise AssertionError(f"{status} body is not JSON: {response.content[:200]!r}") from exc
            assert_error_shape(body)
        request_headers = response.request.headers
        if any(request_headers.get(name) != value for name, value in sent.items()
               if name in ("Authorization", TENANT_HEADER)):
            return None  # schemathesis's own probe without (or with a made-up) credential
        if mode == "invalid" and info["kind"] in ("agent", "session"):
            # The credential is checked before the body or the path is looked at.
            assert status == 401, f"an invalid credential got {status}"
        if mode == "tenant_b":
            text = response.content.decode("utf-8", "replace")
            leaked = sorted(n for n in a_names if n in text)
            assert not leaked, f"tenant B's answer names tenant A's {leaked}"
            if info["named_a"] and info["kind"] in ("agent", "session"):
                assert status in (400, 404, 415), f"tenant B aimed at A's ids got {status}"
            if info["signed_by_b"]:
                assert status == 401, f"A's integration took a body signed by B's secret: {status}"
        return None

    return contract


@settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
@schema.given(pick=st.integers(min_value=0, max_value=3))
@schema.parametrize()
def test_api(case: Any, pick: int, world: World, mode: str) -> None:
    info = {"named_a": _aim(case, world, pick), "kind": _kind(case.operation.path)}
    headers = _credentials(case, world, mode)
    extra = _signed_body(case, world, mode)
    headers.update(extra.pop("headers", {}))
    info["signed_by_b"] = mode == "tenant_b" and "data" in extra
    check = _expectations(world, mode, info, headers)
    case.call_and_validate(headers=headers, additional_checks=[check], **extra)
