"""Bad input the fuzzer will not find: look-alike emails, phone formats, NUL in every string
field, pathological JSON, oversized bodies, tampered and misdirected webhooks, malformed ids,
wrong content types, hostile link tokens and tenants in page addresses. Each gets a precise 4xx,
in the contract's error shape (or, on a page, as an HTML page), never a 500, and writes nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from app.extensions import db
from tests.adversarial.conftest import TENANT_HEADER, World, _tables, assert_error, post_signed
from tests.factories import PASSWORD
from tests.signing import body_of, standard_headers
from tests.webpages import assert_page

NUL = "ab\x00cd"
BAD_IDS = [
    "not-a-uuid", "0", "-1", "1e309", "null", "..%2F..%2Fetc%2Fpasswd", "'%20OR%201=1--",
    "%00", "%ff%fe", "%ED%A0%80", "%F0%9F%92%A9", "x" * 3000, "00000000-0000-0000-0000-000000000000",
    "%7B" + "0" * 32 + "%7D", str(uuid.uuid4()).upper(), uuid.uuid4().hex + "." + "%C3%A9" * 3,
]


# --- what a refused request must leave behind: nothing ---------------------------------------


def _row_counts(app: Any) -> dict[str, int]:
    with app.app_context():
        counts = {t.name: db.session.scalar(select(func.count()).select_from(t)) or 0 for t in _tables()}
        db.session.rollback()
    return counts


@pytest.fixture
def nothing_written(app: Any) -> Any:
    """`with nothing_written():` fails if any table gained or lost a row inside."""

    @contextmanager
    def watch() -> Iterator[None]:
        before = _row_counts(app)
        yield
        after = _row_counts(app)
        assert before == after, {k: (before[k], after[k]) for k in before if before[k] != after[k]}

    return watch


# --- one valid request per JSON operation, to break one field at a time ----------------------


def json_operations(world: World) -> dict[str, tuple[str, dict[str, str], dict[str, Any]]]:
    """operation label -> (url, headers, a body the operation would accept or refuse by rule)."""
    a = world.a
    case = f"/v1/admin/cases/{a.case_id}"
    return {
        "POST /v1/auth/signin": ("/v1/auth/signin", {TENANT_HEADER: a.tenant.slug},
                                 {"email": a.user.email, "password": PASSWORD, "otp": "123456"}),
        "POST /v1/auth/signin backup_code": (
            "/v1/auth/signin", {TENANT_HEADER: a.tenant.slug},
            {"email": a.user.email, "password": PASSWORD, "backup_code": "abcde-fghij-klmno-pqrst"}),
        "POST /v1/auth/signin/password": ("/v1/auth/signin/password", {TENANT_HEADER: a.tenant.slug},
                                          {"email": a.user.email, "password": PASSWORD}),
        "POST /v1/auth/signin/second-factor": ("/v1/auth/signin/second-factor", {TENANT_HEADER: a.tenant.slug},
                                               {"pending_token": "rk_pend_unknown", "otp": "123456"}),
        "POST /v1/auth/signin/second-factor backup_code": (
            "/v1/auth/signin/second-factor", {TENANT_HEADER: a.tenant.slug},
            {"pending_token": "rk_pend_unknown", "backup_code": "abcde-fghij-klmno-pqrst"}),
        "POST /v1/auth/signin/webauthn/options": ("/v1/auth/signin/webauthn/options",
                                                  {TENANT_HEADER: a.tenant.slug}, {"pending_token": "rk_pend_x"}),
        "POST /v1/auth/signin/webauthn/verify": ("/v1/auth/signin/webauthn/verify", {TENANT_HEADER: a.tenant.slug},
                                                 {"pending_token": "rk_pend_x", "credential": ASSERTION}),
        "POST /v1/auth/enrol/webauthn/confirm": ("/v1/auth/enrol/webauthn/confirm", a.session_headers,
                                                 {"credential": REGISTRATION, "label": "Blue key"}),
        "PATCH /v1/auth/security-keys/{key_id}": (f"/v1/auth/security-keys/{a.key_id}", a.session_headers,
                                                  {"label": "Blue key"}),
        "POST /v1/auth/enrol/totp/confirm": ("/v1/auth/enrol/totp/confirm", a.session_headers,
                                             {"code": "123456"}),
        "POST /v1/auth/password": ("/v1/auth/password", a.session_headers,
                                   {"new_password": "a brand new passphrase", "current_password": PASSWORD}),
        "POST /v1/admin/users/{user_id}/notes": (f"/v1/admin/users/{a.user_id}/notes", a.support.headers,
                                                 {"body": "Called back on the number on file."}),
        "POST /v1/admin/cases/{case_id}/evidence": (
            f"{case}/evidence", a.support.headers,
            {"type": "video_call", "details": {"reference": "VC-2"}, "reason": "seen on video"}),
        "POST /v1/admin/cases/{case_id}/verification-calls": (
            f"{case}/verification-calls", a.support.headers, {"channel_id": a.channel_id, "method": "sms"}),
        "POST /v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm": (
            f"{case}/verification-calls/{a.call_id}/confirm", a.support.headers, {"code": "12345678"}),
        "POST /v1/admin/cases/{case_id}/actions/{action}": (
            f"{case}/actions/refuse", a.senior.headers,
            {"reason": "not convinced", "trigger": "agent_judgement", "backup_codes_unusable": "lost too",
             "delivery": "verified_phone", "action_id": str(uuid.uuid4()), "channel_id": a.channel_id,
             "provider_id": str(uuid.uuid4())}),
        "POST /v1/admin/users/{user_id}/channels/{channel_id}/trust": (
            f"/v1/admin/users/{a.user_id}/channels/{a.channel_id}/trust", a.senior.headers,
            {"reason": "The carrier confirmed the number is back with its owner"}),
    }


# Well-formed WebAuthn answers (as a browser's toJSON() shapes them) that verify nothing.
_B64 = "AAAA"
REGISTRATION = {"id": _B64, "rawId": _B64, "type": "public-key", "clientExtensionResults": {},
                "response": {"clientDataJSON": _B64, "attestationObject": _B64, "transports": ["usb"]}}
ASSERTION = {"id": _B64, "rawId": _B64, "type": "public-key", "clientExtensionResults": {},
             "response": {"clientDataJSON": _B64, "authenticatorData": _B64, "signature": _B64}}


def _method(op: str) -> str:
    return op.split(" ", 1)[0]


def _spec(client: Any) -> dict[str, Any]:
    return client.get("/openapi.json").get_json()  # type: ignore[no-any-return]


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def documented_strings(spec: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """operation label -> {string property of its JSON body: its schema}."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if method == "parameters" or path.startswith("/v1/webhooks/"):
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not body:
                continue
            schema = _resolve(spec, body["schema"])
            found[f"{method.upper()} {path}"] = {
                name: prop for name, prop in schema.get("properties", {}).items()
                if _resolve(spec, prop).get("type") == "string"}
    return found


def _label(op: str) -> str:
    return op.removesuffix(" backup_code")


def _path_of(op: str) -> str:
    return _label(op).split(" ", 1)[1]


def test_every_json_operation_has_a_template(client: Any, world: World) -> None:
    """A new JSON operation (or a new string field) cannot escape the per-field tests below."""
    documented = documented_strings(_spec(client))
    templates = json_operations(world)
    assert set(documented) == {_label(op) for op in templates}
    for op, (_, _, body) in templates.items():
        assert set(documented[_label(op)]) <= set(body) | {"backup_code", "otp"}, op
    covered = {(_label(op), name) for op, (_, _, body) in templates.items() for name in body}
    missing = {(op, name) for op, names in documented.items() for name in names} - covered
    assert not missing


def _string_fields(world: World) -> list[tuple[str, str]]:
    return [(op, name) for op, (_, _, body) in json_operations(world).items()
            for name, value in body.items() if isinstance(value, str)]


def _post(client: Any, world: World, op: str, change: Any) -> Any:
    url, headers, body = json_operations(world)[op]
    body = dict(body)
    change(body)
    return client.open(url, method=_method(op), json=body, headers=headers)


# --- email look-alikes and case -------------------------------------------------------------

CYRILLIC_A = "\u0430"  # looks like the Latin "a"


def _signin(client: Any, tenant: Any, email: str, **extra: str) -> Any:
    return client.post("/v1/auth/signin", json={"email": email, "password": PASSWORD, **extra},
                       headers={TENANT_HEADER: tenant.slug})


def test_mixed_case_email_signs_in_to_the_same_account(client: Any, factory: Any) -> None:
    tenant = factory.tenant()
    factory.settled_user(tenant, email="alice@example.com")
    for spelling in ("Alice@Example.COM", "  ALICE@EXAMPLE.COM ", "alice@example.com"):
        answer = _signin(client, tenant, spelling)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["status"] == "enrolment_required"


def test_confusable_email_neither_signs_in_nor_writes(client: Any, factory: Any,
                                                      nothing_written: Any) -> None:
    tenant = factory.tenant()
    factory.settled_user(tenant, email="alice@example.com")
    for spelling in (f"{CYRILLIC_A}lice@example.com", f"alice@ex{CYRILLIC_A}mple.com",
                     "alice@example.com\u200b", "alice\u0301@example.com"):
        with nothing_written():
            assert_error(_signin(client, tenant, spelling), 400, "validation_error")


def test_confusable_email_cannot_create_a_look_alike_account(app: Any, factory: Any) -> None:
    from app.accounts.services import create_user
    from app.actor import Actor
    from app.errors import ValidationFailed
    from app.tenants.models import Tenant

    tenant = factory.tenant()
    factory.settled_user(tenant, email="alice@example.com")
    with app.app_context():
        row = db.session.get(Tenant, tenant.id)
        for spelling in (f"{CYRILLIC_A}lice@example.com", "ALICE@Example.com", "\uff41lice@example.com"):
            with pytest.raises(ValidationFailed):
                create_user(row, email=spelling, actor=Actor.system(tenant.id), password=None)
            db.session.rollback()


def test_confusable_email_in_a_ticket_never_reaches_the_real_user(app: Any, client: Any, factory: Any) -> None:
    from app.recovery.models import RecoveryCase

    tenant = factory.tenant()
    user = factory.settled_user(tenant, email="alice@example.com")
    integration, secret = factory.integration(tenant)
    answer = factory.request_recovery(client, integration, secret, f"{CYRILLIC_A}lice@example.com")
    assert answer.status_code == 202  # the same answer as for any unknown account (R24)
    with app.app_context():
        case = db.session.get(RecoveryCase, uuid.UUID(answer.get_json()["case_id"]))
        assert case.user_id is None
        assert db.session.scalars(select(RecoveryCase).where(RecoveryCase.user_id == user.id)).all() == []


def test_mixed_case_email_in_a_ticket_finds_the_user(app: Any, client: Any, factory: Any) -> None:
    from app.recovery.models import RecoveryCase

    tenant = factory.tenant()
    user = factory.settled_user(tenant, email="alice@example.com")
    integration, secret = factory.integration(tenant)
    answer = factory.request_recovery(client, integration, secret, "Alice@EXAMPLE.com")
    with app.app_context():
        case = db.session.get(RecoveryCase, uuid.UUID(answer.get_json()["case_id"]))
        assert case.user_id == user.id


def test_hr_attestation_by_look_alike_email_finds_no_case(client: Any, world: World,
                                                          nothing_written: Any) -> None:
    a = world.a
    look_alike = a.user.email.replace("a", CYRILLIC_A, 1)
    with nothing_written():
        answer = post_signed(client, a.hr, a.hr_secret, {
            "type": "recovery.attested",
            "data": {"user_email": look_alike, "voucher_email": "boss@example.com", "relation": "manager",
                     "reference": "HR-1"}})
        assert_error(answer, 404, "not_found")


# --- phone numbers compare in E.164 ---------------------------------------------------------


@pytest.mark.parametrize(("raw", "region"), [
    ("+14155552671", None), ("+1 415-555-2671", None), ("+1 (415) 555 2671", None),
    ("(415) 555-2671", "US"), ("415.555.2671", "US"), ("415 555 2671", "US"), ("1-415-555-2671", "US"),
    ("001 415 555 2671", "GB"), ("\uff0b\uff11\u3000\uff14\uff11\uff15\u3000555\u30002671", None),
])
def test_phone_in_another_format_compares_equal(app: Any, raw: str, region: str | None) -> None:
    from app.accounts.services import normalize_phone

    assert normalize_phone(raw, region) == "+14155552671"


@pytest.mark.parametrize(("raw", "region"), [
    ("(415) 555-2671", None), ("+1 415 555 267", None), ("+1 415 555 26710", None),
    ("tel:+1-415", None), ("", None), ("+", None), ("+1 415 555 2671 ext", "ZZ"),
])
def test_phone_that_is_no_number_is_refused(app: Any, raw: str, region: str | None) -> None:
    from app.accounts.services import normalize_phone
    from app.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        normalize_phone(raw, region)


def test_phone_stored_from_a_national_format_is_the_callable_e164_channel(
        app: Any, client: Any, factory: Any) -> None:
    from tests.factories import LONG_AGO

    tenant = factory.tenant()
    user = factory.user(tenant, phones=[("+1 (415) 555-2671", LONG_AGO)], email_added_at=LONG_AGO)
    agent = factory.agent(tenant)
    detail = client.get(f"/v1/admin/users/{user.id}", headers=agent.headers).get_json()
    phones = [c["value"] for c in detail["channels"] if c["kind"] == "phone"]
    assert phones == ["+141******71"]  # stored as +14155552671, shown masked


# --- NUL in every string field, query parameter and path parameter ---------------------------


def test_nul_in_every_string_field_is_400(client: Any, world: World, nothing_written: Any) -> None:
    for op, name in _string_fields(world):
        with nothing_written():
            answer = _post(client, world, op, lambda body, name=name: body.update({name: NUL}))
            assert_error(answer, 400, "malformed_request")


def test_nul_in_nested_and_key_positions_is_400(client: Any, world: World, nothing_written: Any) -> None:
    op = "POST /v1/admin/cases/{case_id}/evidence"
    for change in (lambda b: b.update(details={"reference": NUL}),
                   lambda b: b.update(details={NUL: "x"}),
                   lambda b: b.update(details={"list": [["deep", NUL]]})):
        with nothing_written():
            assert_error(_post(client, world, op, change), 400, "malformed_request")


@pytest.mark.parametrize("field", ["user_email", "ticket_id", "requester_email", "subject", "text",
                                   "external_user_id"])
def test_nul_in_every_webhook_field_is_400(client: Any, world: World, nothing_written: Any,
                                           field: str) -> None:
    a = world.a
    data = {"user_email": a.user.email, "ticket_id": "T-1", "requester_email": a.user.email,
            "subject": "Lost phone", "text": "I lost my phone", "external_user_id": "E-1"}
    data[field] = NUL
    with nothing_written():
        answer = post_signed(client, a.integration, a.secret, {"type": "recovery.requested", "data": data})
        assert_error(answer, 400, "malformed_request")


@pytest.mark.parametrize("field", ["MessageSid", "MessageStatus", "CallSid", "CallStatus", "AnsweredBy"])
def test_nul_in_a_signed_twilio_callback_is_400(client: Any, tune: Any, nothing_written: Any,
                                                field: str) -> None:
    from integrations.channels.twilio import twilio_signature

    tune(twilio_auth_token="twilio-token", public_url="http://rekey.test")
    form = {"MessageSid": "SM123", "MessageStatus": "delivered", field: NUL}
    signature = twilio_signature("http://rekey.test/v1/webhooks/twilio/status", form, "twilio-token")
    with nothing_written():
        answer = client.post("/v1/webhooks/twilio/status", data=form,
                             headers={"X-Twilio-Signature": signature})
        assert_error(answer, 400, "malformed_request")


@pytest.mark.parametrize("query", ["action=a%00b", "actor=%00", "format=jsonl%00", "since=2024%00",
                                   "user=%00", "a%00=1"])
def test_nul_in_the_audit_query_is_400(client: Any, world: World, nothing_written: Any, query: str) -> None:
    with nothing_written():
        assert_error(client.get(f"/v1/admin/audit?{query}", headers=world.a.support.headers), 400)


def test_nul_in_the_case_list_query_is_400(client: Any, world: World) -> None:
    assert_error(client.get("/v1/admin/cases?state=received%00", headers=world.a.support.headers), 400,
                 "malformed_request")


# --- pathological JSON ----------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def _raw(client: Any, url: str, headers: dict[str, str], data: bytes | str,
         content_type: str | None = "application/json", method: str = "POST") -> Any:
    return client.open(url, method=method, data=data, headers=headers, content_type=content_type)


def test_json_nested_100k_levels_is_400(client: Any, world: World, nothing_written: Any) -> None:
    for op, (url, headers, _) in json_operations(world).items():
        for raw in (DEEP, '{"reason": ' + DEEP + "}", '{"a": ' * 30_000 + "1" + "}" * 30_000):
            with nothing_written():
                assert_error(_raw(client, url, headers, raw, method=_method(op)), 400, "malformed_request")


def test_webhook_nested_100k_levels_is_400_after_its_signature(client: Any, world: World,
                                                               nothing_written: Any) -> None:
    a = world.a
    with nothing_written():
        assert_error(post_signed(client, a.integration, a.secret, DEEP.encode()), 400, "malformed_request")


def test_duplicate_json_keys_are_400(client: Any, world: World, nothing_written: Any) -> None:
    for op, (url, headers, body) in json_operations(world).items():
        name, value = next(iter(body.items()))
        raw = json.dumps(body)[:-1] + f", {json.dumps(name)}: {json.dumps(value)}}}"
        with nothing_written():
            assert_error(_raw(client, url, headers, raw, method=_method(op)), 400, "malformed_request")


def test_webhook_duplicate_keys_are_400_and_store_no_delivery(client: Any, world: World,
                                                              nothing_written: Any) -> None:
    a = world.a
    first = json.dumps({"user_email": "x@example.com"})
    second = json.dumps({"user_email": a.user.email})
    raw = f'{{"type": "recovery.requested", "data": {first}, "data": {second}}}'.encode()
    with nothing_written():
        assert_error(post_signed(client, a.integration, a.secret, raw), 400, "malformed_request")


def test_two_megabyte_bodies_are_413_on_every_post_route(app: Any, client: Any, world: World,
                                                         nothing_written: Any) -> None:
    big = b'{"reason": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    routes = [r for r in app.url_map.iter_rules() if {"POST", "PATCH"} & set(r.methods or ())]
    assert routes
    for rule in routes:
        url = _fill(rule, world)
        headers = {**world.a.senior.headers, TENANT_HEADER: world.a.tenant.slug}
        method = "PATCH" if "PATCH" in (rule.methods or ()) else "POST"
        with nothing_written():
            answer = _raw(client, url, headers, big, method=method)
            if _is_page(app, rule):
                assert "Too much data" in assert_page(answer, 413)
            else:
                assert_error(answer, 413, "payload_too_large")


def test_two_megabyte_signed_webhook_is_413(client: Any, world: World, nothing_written: Any) -> None:
    a = world.a
    payload = body_of({"type": "recovery.requested", "data": {"user_email": a.user.email,
                                                                "text": "x" * (2 * 1024 * 1024)}})
    with nothing_written():
        assert_error(post_signed(client, a.integration, a.secret, payload), 413, "payload_too_large")


# --- webhooks: tampered, misdirected, stale, replayed ---------------------------------------


def _request_body(email: str) -> bytes:
    return body_of({"type": "recovery.requested", "data": {"user_email": email, "ticket_id": "T-9",
                                                           "text": "I lost my phone"}})


def test_webhook_changed_by_one_byte_after_signing_is_401(client: Any, world: World,
                                                          nothing_written: Any) -> None:
    a = world.a
    body = _request_body(a.user.email)
    headers = standard_headers(a.secret, body)
    for position in (0, len(body) // 2, len(body) - 1):
        tampered = bytearray(body)
        tampered[position] ^= 0x01
        with nothing_written():
            answer = client.post(f"/v1/webhooks/{a.integration.id}", data=bytes(tampered), headers=headers)
            assert_error(answer, 401, "invalid_signature")
    with nothing_written():  # one byte appended
        answer = client.post(f"/v1/webhooks/{a.integration.id}", data=body + b" ", headers=headers)
        assert_error(answer, 401, "invalid_signature")


def test_webhook_signed_with_another_integrations_secret_is_401(client: Any, world: World,
                                                                nothing_written: Any) -> None:
    a, b = world.a, world.b
    for secret in (a.hr_secret, b.secret, b.hr_secret):
        with nothing_written():
            answer = post_signed(client, a.integration, secret, _request_body(a.user.email))
            assert_error(answer, 401, "invalid_signature")


@pytest.mark.parametrize("skew", [6 * 60, -6 * 60, 10**9])
def test_webhook_timestamp_outside_five_minutes_is_401(client: Any, world: World, nothing_written: Any,
                                                       skew: int) -> None:
    a = world.a
    with nothing_written():
        answer = post_signed(client, a.integration, a.secret, _request_body(a.user.email),
                             timestamp=int(time.time()) + skew)
        assert_error(answer, 401, "invalid_signature")


def test_webhook_unsigned_or_malformed_signature_headers_are_401(client: Any, world: World,
                                                                 nothing_written: Any) -> None:
    a = world.a
    body = _request_body(a.user.email)
    good = standard_headers(a.secret, body)
    variants = [{}, {**good, "webhook-signature": ""}, {**good, "webhook-signature": "v1,%%%"},
                {**good, "webhook-signature": "v2," + good["webhook-signature"][3:]},
                {**good, "webhook-id": "a.b"}, {**good, "webhook-timestamp": "1e3"},
                {**good, "webhook-timestamp": "-1"}, {**good, "webhook-id": "x" * 201}]
    for headers in variants:
        with nothing_written():
            answer = client.post(f"/v1/webhooks/{a.integration.id}", data=body, headers=headers)
            assert_error(answer, 401, "invalid_signature")


def test_delivery_id_reused_across_two_integrations_is_accepted_by_both(
        app: Any, client: Any, factory: Any) -> None:
    from app.intake.models import WebhookDelivery

    tenant, other_tenant = factory.tenant(), factory.tenant()
    user = factory.settled_user(tenant)
    first, first_secret = factory.integration(tenant)
    second, second_secret = factory.integration(tenant)
    elsewhere, elsewhere_secret = factory.integration(other_tenant)
    msg_id = f"msg_{uuid.uuid4().hex}"
    answers = [factory.request_recovery(client, integration, secret, user.email, msg_id=msg_id)
               for integration, secret in ((first, first_secret), (second, second_secret),
                                           (elsewhere, elsewhere_secret))]
    assert [r.status_code for r in answers] == [202, 202, 202], [r.get_json() for r in answers]
    # The second sender's ticket joins the user's open case; the other tenant's is its own.
    assert answers[0].get_json()["case_id"] == answers[1].get_json()["case_id"]
    assert answers[2].get_json()["case_id"] != answers[0].get_json()["case_id"]
    repeat = factory.request_recovery(client, first, first_secret, user.email, msg_id=msg_id)
    assert repeat.status_code == 200 and repeat.get_json() == answers[0].get_json()
    with app.app_context():
        rows = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.delivery_id == msg_id)).all()
        assert sorted(str(r.integration_id) for r in rows) == sorted(
            str(i.id) for i in (first, second, elsewhere))


def test_webhook_bodies_of_the_wrong_shape_are_refused_precisely(client: Any, world: World,
                                                                 nothing_written: Any) -> None:
    a = world.a
    cases: list[tuple[bytes, int, str]] = [
        (b"", 400, "malformed_request"),
        (b"not json", 400, "malformed_request"),
        (b"[]", 422, "invalid_payload"),
        (b"null", 422, "invalid_payload"),
        (b'"recovery.requested"', 422, "invalid_payload"),
        (body_of({"type": "recovery.requested", "data": []}), 422, "invalid_payload"),
        (body_of({"type": "recovery.requested", "data": {"user_email": 123}}), 422, "invalid_payload"),
        (body_of({"type": "recovery.requested", "data": {"user_email": ["a@b.c"]}}), 422, "invalid_payload"),
        (body_of({"type": "recovery.requested", "data": {"user_email": "a@b.c", "ticket_id": "T" * 201}}),
         422, "invalid_payload"),
        (body_of({"type": "recovery.requested", "data": {"user_email": "not an email"}}), 422,
         "invalid_payload"),
        (body_of({"type": "recovery.requested", "data": {"usr_email": "a@b.c"}}), 422, "invalid_payload"),
        (body_of({"type": 7, "data": {}}), 422, "invalid_payload"),
        (body_of({"type": "recovery.attested", "data": {"case_id": "not-a-uuid", "voucher_email": "b@c.d",
                                                        "relation": "manager", "reference": "R"}}),
         422, "invalid_payload"),
    ]
    for raw, status, code in cases:
        with nothing_written():
            assert_error(post_signed(client, a.integration, a.secret, raw), status, code)


def test_webhook_judges_the_signed_bytes_not_the_content_type(client: Any, world: World,
                                                              nothing_written: Any) -> None:
    # The signature covers the bytes; a sender's odd Content-Type changes nothing (and a body
    # that is not JSON is still a 400, whatever it is labelled).
    a = world.a
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        body = b"a=1&b=2"
        headers = {**standard_headers(a.secret, body), "content-type": content_type}
        with nothing_written():
            answer = client.post(f"/v1/webhooks/{a.integration.id}", data=body, headers=headers)
            assert_error(answer, 400, "malformed_request")


# --- malformed ids in every path parameter --------------------------------------------------


def _valid_args(world: World) -> dict[str, str]:
    a = world.a
    return {"case_id": a.case_id, "user_id": a.user_id, "call_id": a.call_id, "action": "refuse",
            "integration_id": str(a.integration.id), "token": uuid.uuid4().hex + ".00",
            "key_id": a.key_id, "tenant": a.tenant.slug,
            "channel_id": a.channel_id, "agent_id": str(a.support.agent.id), "fmt": "csv"}


def _is_page(app: Any, rule: Any) -> bool:
    from app.webui import PageBlueprint

    return isinstance(app.blueprints.get(rule.endpoint.rpartition(".")[0]), PageBlueprint)


def _page_csrf(client: Any, world: World) -> str:
    """A CSRF token for this client, as a browser holds one from any page it opened."""
    import re

    page = client.get(f"/t/{world.a.tenant.slug}/links/report/x")
    return re.search(r'name="csrf-token" content="([0-9a-f]{64})"', page.get_data(as_text=True)).group(1)


def _fill(rule: Any, world: World, **override: str) -> str:
    values = {**_valid_args(world), **override}
    url = rule.rule
    for name in rule.arguments:
        url = url.replace(f"<{name}>", values[name])
    return url


def _path_rules(app: Any) -> list[Any]:
    return [r for r in app.url_map.iter_rules() if r.arguments and r.endpoint != "static"]


def test_every_path_parameter_is_known(app: Any, world: World) -> None:
    names = {name for rule in _path_rules(app) for name in rule.arguments}
    assert names <= set(_valid_args(world)), names - set(_valid_args(world))


def _body_for(rule: Any, world: World) -> dict[str, Any] | None:
    """A body the route's schema accepts, so only the path parameter is wrong."""
    bodies = {"notes": {"body": "bad id probe"},
              "evidence": {"type": "video_call", "details": {}, "reason": "bad id probe"},
              "verification-calls": {"channel_id": world.a.channel_id, "method": "sms"},
              "confirm": {"code": "12345678"},
              "<action>": {"reason": "bad id probe"},
              "<key_id>": {"label": "bad id probe"},
              "trust": {"reason": "bad id probe"}}
    last = rule.rule.rsplit("/", 1)[1]
    return bodies.get(last)


def _signed_in_browser(app: Any, client: Any, world: World) -> None:
    """The client holds a browser session of A's user, as after the sign-in page (pages that name
    the user's own objects need one; without it they send the browser to the sign-in page)."""
    from app.accounts.models import User
    from app.accounts.services import open_session
    from app.extensions import db

    with app.app_context():
        user = db.session.get(User, world.a.user.id)
        token = open_session(user, scope="full", ip="203.0.113.9", kind="browser")
        db.session.commit()
    client.set_cookie("__Host-rekey_session", token)
def _console_client(app: Any, world: World) -> tuple[Any, str]:
    """A browser signed in to the console as a senior admin of A (issue 10), and its CSRF token."""
    from app.console import credentials
    from tests.consolework import console_frozen_clock, console_sign_in, make_console_agent
    from tests.webpages import form_token

    clock = console_frozen_clock()
    patch = pytest.MonkeyPatch()
    patch.setattr(credentials, "time", clock)
    try:
        who = make_console_agent(app, world.factory, world.a.tenant, clock, role="senior_admin")
        browser = app.test_client()
        console_sign_in(browser, who, clock)
    finally:
        patch.undo()
    return browser, form_token(browser.get("/console/audit"))



def test_invalid_ids_in_every_path_parameter_are_404(app: Any, client: Any, world: World,
                                                     nothing_written: Any) -> None:
    _signed_in_browser(app, client, world)
    csrf = _page_csrf(client, world)
    # The console's pages are reached in a console session (a senior admin of A's).
    console, console_csrf = _console_client(app, world)
    tried = 0
    for rule in _path_rules(app):
        method = sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})[0]
        # The user's own objects are named with the user's session, the rest with an agent's token.
        credential = world.a.session_headers if rule.rule.startswith("/v1/auth/") else world.a.senior.headers
        headers = {**credential, TENANT_HEADER: world.a.tenant.slug}
        for name in rule.arguments:
            for bad in BAD_IDS:
                url = _fill(rule, world, **{name: bad})
                with nothing_written():
                    if rule.rule.startswith("/console/"):
                        answer = console.open(url, method=method, data={"csrf_token": console_csrf})
                        assert_page(answer, 404)
                    elif _is_page(app, rule):  # a browser: a form with its CSRF token
                        answer = client.open(url, method=method, data={"csrf_token": csrf})
                        assert_page(answer, 404)
                    else:
                        answer = client.open(url, method=method, headers=headers, json=_body_for(rule, world))
                        assert_error(answer, 404)
                tried += 1
    assert tried >= 10 * len(BAD_IDS)


# --- WebAuthn answers: malformed inside the credential ------------------------------------------


def _in_credential(path: tuple[str, ...], value: Any) -> Any:
    def change(body: dict[str, Any]) -> None:
        credential = json.loads(json.dumps(body["credential"]))
        target = credential
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        body["credential"] = credential
    return change


@pytest.mark.parametrize(("path", "value", "code"), [
    (("response", "clientDataJSON"), NUL, "malformed_request"),
    (("response", "clientDataJSON"), "not base64url!", "validation_error"),
    (("response", "clientDataJSON"), "A" * 5000, "validation_error"),
    (("response", "clientDataJSON"), None, "validation_error"),
    (("response",), "text", "validation_error"),
    (("rawId",), 12345, "validation_error"),
    (("id",), "", "validation_error"),
    (("type",), "password", "validation_error"),
])
def test_malformed_webauthn_answers_are_400_naming_the_credential(client: Any, world: World,
                                                                  nothing_written: Any, path: tuple[str, ...],
                                                                  value: Any, code: str) -> None:
    for op in ("POST /v1/auth/enrol/webauthn/confirm", "POST /v1/auth/signin/webauthn/verify"):
        with nothing_written():
            body = assert_error(_post(client, world, op, _in_credential(path, value)), 400, code)
        if code == "validation_error":
            assert "credential" in body["error"]["details"]["fields"], (op, body)


def test_well_formed_webauthn_answers_that_verify_nothing_are_refused_precisely(client: Any, world: World) -> None:
    """Shaped right, meaning nothing: no live challenge, no pending sign-in; never a 500."""
    enrol = _post(client, world, "POST /v1/auth/enrol/webauthn/confirm", lambda body: None)
    assert_error(enrol, 422, "challenge_invalid")
    verify = _post(client, world, "POST /v1/auth/signin/webauthn/verify", lambda body: None)
    assert_error(verify, 401, "signin_expired")
# --- hostile link tokens and tenants in page addresses -----------------------------------------

HOSTILE_TOKENS = ["a" * 3000, "a" * 100_000, "%00", "abc%00def", uuid.uuid4().hex + ".%00" + "0" * 63,
                  "%C3%A9" * 40, "..%2F..%2Fetc%2Fpasswd", "%EF%BF%BF", "null", " ", "%20%0A"]


@pytest.mark.parametrize("purpose", ["report", "cancel"])
def test_hostile_link_tokens_get_the_invalid_link_page_and_write_nothing(client: Any, world: World,
                                                                          nothing_written: Any,
                                                                          purpose: str) -> None:
    csrf = _page_csrf(client, world)
    slug = world.a.tenant.slug
    for token in HOSTILE_TOKENS:
        with nothing_written():
            shown = client.get(f"/t/{slug}/links/{purpose}/{token}")
            confirmed = client.post(f"/t/{slug}/links/{purpose}/{token}", data={"csrf_token": csrf})
            old = client.get(f"/v1/recovery/{purpose}/{token}")
        for answer in (shown, confirmed, old):
            text = assert_page(answer, 404)
            assert "This link cannot be used" in text or "Page not found" in text, (token[:40], text)


def test_hostile_tenants_in_page_addresses_are_the_not_found_page(client: Any, world: World,
                                                                  nothing_written: Any) -> None:
    csrf = _page_csrf(client, world)
    for slug in ["x" * 3000, "%00", "acme%00", "acme%0A", "ACME", "a", "-a", "..", "%C3%A9t%C3%A9",
                 world.a.tenant.slug.upper(), world.a.tenant.slug + "%0A"]:
        with nothing_written():
            assert_page(client.get(f"/t/{slug}/links/report/abc"), 404)
            assert_page(client.post(f"/t/{slug}/links/report/abc", data={"csrf_token": csrf}), 404)


def test_nul_and_garbage_in_a_page_form_are_refused(client: Any, world: World, nothing_written: Any) -> None:
    url = f"/t/{world.a.tenant.slug}/links/report/{uuid.uuid4().hex}.{'0' * 64}"
    csrf = _page_csrf(client, world)
    for data in ({"csrf_token": csrf + "\x00"}, {"csrf_token": "\x00"}, {"csrf_token": "é" * 64},
                 {"csrf_token": ["a", "b"]}, {"csrf_token": "x" * 100_000}):
        with nothing_written():
            assert_page(client.post(url, data=data), 403)
    with nothing_written():  # the right token, an unknown link: the one invalid-link page
        assert_page(client.post(url, data={"csrf_token": csrf, "extra": "\x00"}), 404)


def test_wrong_content_type_to_a_page_is_refused_without_a_500(client: Any, world: World,
                                                               nothing_written: Any) -> None:
    url = f"/t/{world.a.tenant.slug}/links/report/{uuid.uuid4().hex}.{'0' * 64}"
    for body, kind in ((b'{"csrf_token": "x"}', "application/json"), (b"\xff\xfe", "text/plain"),
                       (b"--x\r\n", "multipart/form-data; boundary=x"),
                       (b"a=%zz", "application/x-www-form-urlencoded")):
        with nothing_written():
            answer = client.post(url, data=body, content_type=kind)
            assert answer.status_code in (400, 403), answer.status_code
            assert_page(answer, answer.status_code)


# --- wrong content types, empty bodies, wrong JSON types, overlong and blank strings ---------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml",
                                          "application/jsonx", None])
def test_wrong_content_type_is_415(client: Any, world: World, nothing_written: Any,
                                   content_type: str | None) -> None:
    for op, (url, headers, body) in json_operations(world).items():
        with nothing_written():
            answer = _raw(client, url, headers, json.dumps(body), content_type=content_type, method=_method(op))
            assert_error(answer, 415, "unsupported_media_type")


def test_empty_body_names_the_missing_fields(client: Any, world: World, nothing_written: Any) -> None:
    spec = _spec(client)
    for op, (url, headers, _) in json_operations(world).items():
        schema = _resolve(spec, spec["paths"][_path_of(op)][_method(op).lower()]["requestBody"]
                          ["content"]["application/json"]["schema"])
        for raw in (b"", b"{}"):
            with nothing_written():
                body = assert_error(_raw(client, url, headers, raw, method=_method(op)), 400, "validation_error")
            assert set(body["error"]["details"]["fields"]) == set(schema.get("required", [])), op


@pytest.mark.parametrize("raw", ["[]", "[{}]", "null", "true", "0", '"text"'])
def test_non_object_body_is_400(client: Any, world: World, nothing_written: Any, raw: str) -> None:
    for op, (url, headers, _) in json_operations(world).items():
        with nothing_written():
            answer = assert_error(_raw(client, url, headers, raw, method=_method(op)), 400, "validation_error")
        assert answer["error"]["details"]["fields"] == {"_schema": ["Invalid input type."]}


@pytest.mark.parametrize("wrong", [12345, 1.5, True, [], {}, ["text"]])
def test_wrong_type_in_every_string_field_is_400_naming_it(client: Any, world: World,
                                                           nothing_written: Any, wrong: Any) -> None:
    for op, name in _string_fields(world):
        with nothing_written():
            answer = _post(client, world, op, lambda body, name=name: body.update({name: wrong}))
            body = assert_error(answer, 400, "validation_error")
        assert name in body["error"]["details"]["fields"], (op, name, body)


def test_null_in_every_string_field_is_400_naming_it(client: Any, world: World,
                                                     nothing_written: Any) -> None:
    for op, name in _string_fields(world):
        with nothing_written():
            answer = _post(client, world, op, lambda body, name=name: body.update({name: None}))
            body = assert_error(answer, 400, "validation_error")
        assert name in body["error"]["details"]["fields"], (op, name)


def test_overlong_string_in_every_limited_field_is_400_naming_it(client: Any, world: World,
                                                                 nothing_written: Any) -> None:
    documented = documented_strings(_spec(client))
    tried = 0
    for op, name in _string_fields(world):
        limit = documented[_label(op)].get(name, {}).get("maxLength")
        if limit is None:
            continue  # an enum or a format, not free text (covered by the wrong-type tests)
        for value in ("x" * (limit + 1), "é" * (limit + 1), "x" * 100_000):
            with nothing_written():
                answer = _post(client, world, op, lambda body, name=name, value=value: body.update({name: value}))
                body = assert_error(answer, 400, "validation_error")
            assert name in body["error"]["details"]["fields"], (op, name)
        tried += 1
    assert tried >= 10


def test_unknown_field_is_400_naming_it(client: Any, world: World, nothing_written: Any) -> None:
    for op in json_operations(world):
        with nothing_written():
            answer = _post(client, world, op, lambda body: body.update({"tenant_id": str(world.b.tenant.id)}))
            body = assert_error(answer, 400, "validation_error")
        assert "tenant_id" in body["error"]["details"]["fields"], op


@pytest.mark.parametrize("blank", ["   ", "\t\t\t", "\n\n\n", "\u00a0\u2003\u3000", " \r\n \t "])
def test_reason_of_only_whitespace_is_400(client: Any, world: World, nothing_written: Any,
                                          blank: str) -> None:
    a = world.a
    case = f"/v1/admin/cases/{a.case_id}"
    attempts = [
        (f"{case}/actions/{action}", a.senior.headers, {"reason": blank})
        for action in ("refuse", "escalate", "suspend_user", "force_mfa_reset", "approve",
                       "generate_backup_codes", "set_temporary_password", "close", "resume", "reopen",
                       "send_follow_up")
    ] + [
        (f"{case}/actions/force_mfa_reset", a.senior.headers,
         {"reason": "codes lost", "backup_codes_unusable": blank}),
        (f"{case}/evidence", a.support.headers, {"type": "video_call", "details": {}, "reason": blank}),
        (f"/v1/admin/users/{a.user_id}/notes", a.support.headers, {"body": blank}),
    ]
    for url, headers, body in attempts:
        field = "backup_codes_unusable" if "backup_codes_unusable" in body else next(iter(
            {"reason", "body"} & set(body)))
        with nothing_written():
            answer = assert_error(client.post(url, json=body, headers=headers), 400, "validation_error")
        assert field in str(answer["error"]["details"]), (url, answer)


# --- provisioning input: the CLI's tenant settings and agent options --------------------------


@pytest.fixture
def rekey(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`rekey ...` in-process, bound to the test app; returns (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from app import cli

    monkeypatch.setattr(cli, "_app", lambda: app)

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(cli.main, list(args), catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return run


HOSTILE_TEXT = [NUL, "", "   ", "\t", "line\nbreak", "\x1b[31mred", "x" * 5000, "\u202eevil", "\ud800"]


@pytest.mark.parametrize("zone", [*HOSTILE_TEXT, "Mars/Olympus_Mons", "../../../../etc/passwd", "/etc/localtime",
                                  "UTC\x00", "Europe//Paris", "europe/paris", "+08:00", "EST5EDT ", "null",
                                  "123", "[\"UTC\"]", "{\"zone\": \"UTC\"}"])
def test_tenant_time_zone_that_is_no_iana_name_fails_and_writes_nothing(rekey: Any, nothing_written: Any,
                                                                         zone: str) -> None:
    with nothing_written():
        code, out, err = rekey("tenant", "create", f"tz-{uuid.uuid4().hex[:8]}", "--setting", f"time_zone={zone}")
    assert code == 2, (out, err)
    if err.startswith("{"):
        assert json.loads(err)["error"]["code"] == "validation_error"


@pytest.mark.parametrize("option", [
    *[("--external-id", bad) for bad in HOSTILE_TEXT],
    *[("--federated", bad) for bad in ("no-colon", ":subject", "https://idp.example:", ":", *HOSTILE_TEXT)],
    *[("--federated", f"https://idp.example:{bad}") for bad in HOSTILE_TEXT if bad],
    *[("--email", bad) for bad in ("\u0430na@corp.example", "ana@", "@corp.example", "ana@corp", *HOSTILE_TEXT)],
])
def test_agent_options_that_name_nothing_fail_and_write_nothing(rekey: Any, world: World, nothing_written: Any,
                                                               option: tuple[str, str]) -> None:
    name, value = option
    args = {"--email": f"agent-{uuid.uuid4().hex[:8]}@staff.example", name: value}
    with nothing_written():
        code, out, err = rekey("agent", "create", "--tenant", world.a.tenant.slug, "--role", "support_agent",
                               *[part for pair in args.items() for part in pair])
    assert code == 2, (out, err)
    if err.startswith("{"):
        assert json.loads(err)["error"]["code"] == "validation_error"


def test_agent_federated_subject_of_another_agent_is_a_conflict(rekey: Any, world: World,
                                                                nothing_written: Any) -> None:
    link = f"https://login.corp.example:00u{uuid.uuid4().hex[:8]}"
    first = rekey("agent", "create", "--tenant", world.a.tenant.slug, "--role", "support_agent",
                  "--email", f"a-{uuid.uuid4().hex[:8]}@staff.example", "--federated", link)
    assert first[0] == 0, first
    with nothing_written():
        code, _, err = rekey("agent", "create", "--tenant", world.a.tenant.slug, "--role", "support_agent",
                             "--email", f"b-{uuid.uuid4().hex[:8]}@staff.example", "--federated", link)
    assert code == 2 and json.loads(err)["error"]["code"] == "conflict"


# --- the sign-in, enrolment and account pages: hostile form fields ------------------------------

HOSTILE_FIELDS = ["", " ", "x" * 5000, "١٢٣٤٥٦", "<script>alert(1)</script>", "%00", "\ud800".encode(
    "utf-8", "surrogatepass").decode("latin-1"), '{"id": 1}', "[]", "null", "💩" * 300]


def test_page_forms_with_hostile_fields_answer_a_page_never_a_500(app: Any, client: Any, world: World) -> None:
    """Every form field of every sign-in, enrolment and account page, and the `credential` our
    WebAuthn script posts, filled with hostile text: a page (or, for the script's options routes,
    the contract's JSON) with a precise status, never a 500."""
    _signed_in_browser(app, client, world)
    csrf = _page_csrf(client, world)
    fields = {"email": None, "password": None, "next": None, "method": None, "code": None, "label": None,
              "credential": None, "current_password": None, "new_password": None, "new_password_again": None}
    routes = [r for r in app.url_map.iter_rules() if _is_page(app, r) and "POST" in (r.methods or ())
              and r.rule.startswith("/t/<tenant>/") and "/links/" not in r.rule]
    assert len(routes) >= 12
    # Signing out last, so every other form is tried signed in; A's key is never named (not removed).
    for rule in sorted(routes, key=lambda r: r.rule.endswith("/signout")):
        url = _fill(rule, world, key_id=str(uuid.uuid4()))
        for value in HOSTILE_FIELDS:
            answer = client.post(url, data={"csrf_token": csrf, **{name: value for name in fields}},
                                 headers={"X-CSRF-Token": csrf})
            assert answer.status_code < 500, (rule.rule, value[:20], answer.status_code)
            if answer.status_code >= 400:
                if rule.rule.endswith("/options"):
                    assert_error(answer, answer.status_code)
                else:
                    assert_page(answer, answer.status_code)


@pytest.fixture(scope="module")
def page_fuzz_client(app: Any) -> Any:
    return app.test_client()


def test_signin_page_fuzzed_fields_never_500_and_never_open_a_session(app: Any, page_fuzz_client: Any,
                                                                      world: World) -> None:
    """Property: whatever text the sign-in form's fields hold, the page answers with a page and a
    4xx (malformed, wrong credentials, locked), and no session is ever opened."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from app.accounts.models import UserSession

    client = page_fuzz_client
    csrf = _page_csrf(client, world)
    url = f"/t/{world.a.tenant.slug}/signin"
    with app.app_context():
        sessions_before = db.session.scalar(select(func.count()).select_from(UserSession))
        db.session.rollback()

    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(email=st.one_of(text, st.emails().map(str)), password=text, nxt=text)
    def probe(email: str, password: str, nxt: str) -> None:
        answer = client.post(url, data={"csrf_token": csrf, "email": email, "password": password, "next": nxt})
        assert 400 <= answer.status_code < 500, (answer.status_code, email[:40])
        assert_page(answer, answer.status_code)

    probe()
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(UserSession)) == sessions_before
        db.session.rollback()
