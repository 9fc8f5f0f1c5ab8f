"""The HTTP edge: hostile bodies are 4xx in the contract's shape and write nothing; request ids;
the OpenAPI document."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.accounts.models import Note, SigninAttempt
from app.audit.models import AuditEvent
from app.extensions import db
from tests.factories import PASSWORD
from tests.flows import TENANT_HEADER, audit_rows, signin

pytestmark = pytest.mark.usefixtures("cached_password_hashes")


def _written(app, tenant) -> tuple[int, int, int]:
    """Rows a request could have written for this tenant: attempts, audit events, notes."""
    with app.app_context():
        return tuple(  # type: ignore[return-value]
            db.session.scalar(
                select(func.count()).select_from(model).where(model.tenant_id == tenant.id)
            )
            for model in (SigninAttempt, AuditEvent, Note)
        )


def _assert_error_shape(response, status_range=range(400, 500)) -> None:
    assert response.status_code in status_range, response.get_data(as_text=True)[:300]
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["details"], dict)


GOOD = {"email": "someone@example.com", "password": PASSWORD}

# (name, raw body, content type, expected status)
BAD_BODIES = [
    ("malformed_json", b'{"email": "a@example.com", "password": ', "application/json", 400),
    ("not_utf8", b'{"email": "\xff\xfe"}', "application/json", 400),
    ("missing_fields", b"{}", "application/json", 400),
    ("missing_password", json.dumps({"email": "a@example.com"}).encode(), "application/json", 400),
    ("wrong_types", json.dumps({"email": 42, "password": ["x"]}).encode(), "application/json", 400),
    ("unknown_field", json.dumps({**GOOD, "tenant_id": "other"}).encode(), "application/json", 400),
    (
        "duplicate_keys",
        b'{"email": "a@example.com", "password": "x", "password": "y"}',
        "application/json",
        400,
    ),
    (
        "nul_in_string",
        json.dumps({**GOOD, "password": "pass\u0000word"}).encode(),
        "application/json",
        400,
    ),
    (
        "lone_surrogate",
        b'{"email": "a@example.com", "password": "\\ud800"}',
        "application/json",
        400,
    ),
    (
        "deep_nesting",
        b'{"email": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "application/json",
        400,
    ),
    (
        "moderate_nesting",
        json.dumps(
            {
                **GOOD,
                "otp": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
            }
        ).encode(),
        "application/json",
        400,
    ),
    ("top_level_array", b"[1, 2]", "application/json", 400),
    ("top_level_null", b"null", "application/json", 400),
    ("top_level_string", b'"hello"', "application/json", 400),
    (
        "two_megabytes",
        json.dumps({**GOOD, "password": "x" * (2 * 1024 * 1024)}).encode(),
        "application/json",
        413,
    ),
    ("form_encoded", b"email=a%40example.com&password=x", "application/x-www-form-urlencoded", 415),
    ("text_plain", json.dumps(GOOD).encode(), "text/plain", 415),
    ("empty_body", b"", "application/json", 400),
]


@pytest.mark.parametrize(
    ("name", "raw", "content_type", "status"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES]
)
def test_signin_bad_body_is_a_4xx_in_the_error_shape_and_writes_nothing(
    app, client, world, name, raw, content_type, status
):
    tenant = world.tenant
    before = _written(app, tenant)

    r = client.post(
        "/v1/auth/signin", data=raw, content_type=content_type, headers={TENANT_HEADER: tenant.slug}
    )

    _assert_error_shape(r)
    assert r.status_code == status
    assert _written(app, tenant) == before


@pytest.mark.parametrize(
    ("name", "raw", "content_type", "status"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES]
)
def test_note_bad_body_is_a_4xx_in_the_error_shape_and_writes_nothing(
    app, client, world, name, raw, content_type, status
):
    tenant, agent, user = world.tenant, world.agent, world.user
    before = _written(app, tenant)

    r = client.post(
        f"/v1/admin/users/{user.id}/notes",
        data=raw,
        content_type=content_type,
        headers=agent.headers,
    )

    _assert_error_shape(r)
    assert _written(app, tenant) == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/auth/signin"),
        ("PUT", "/v1/auth/password"),
        ("DELETE", "/v1/admin/users/00000000-0000-0000-0000-000000000000"),
        ("POST", "/v1/admin/audit"),
    ],
)
def test_wrong_method_is_405_in_the_error_shape(client, method, path):
    r = client.open(path, method=method)

    _assert_error_shape(r)
    assert r.status_code == 405
    assert r.json["error"]["code"] == "method_not_allowed"
    assert "Allow" in r.headers


def test_unknown_path_is_404_in_the_error_shape(client):
    r = client.get("/v1/nothing/here")

    _assert_error_shape(r)
    assert r.status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        "action=%00",
        "actor=a%00b",
        "user=not-a-uuid",
        "since=2026-01-01T00:00:00",
        "until=9999-12-31T23:59:59-14:00",
        "since=0001-01-01T00:00:00%2B14:00",
        "format=xlsx",
        "bogus=1",
    ],
)
def test_audit_export_bad_query_is_a_4xx_in_the_error_shape(app, client, world, query):
    tenant, agent = world.tenant, world.agent
    before = _written(app, tenant)

    r = client.get(f"/v1/admin/audit?{query}", headers=agent.headers)

    _assert_error_shape(r)
    assert r.status_code == 400
    assert _written(app, tenant) == before


def test_request_id_is_echoed_and_recorded_or_minted_when_unusable(app, client, factory):
    tenant = factory.tenant()
    user = factory.user(tenant)

    supplied = signin(client, tenant, user.email, headers={"X-Request-Id": "abc-123"})
    minted = client.get("/healthz", headers={"X-Request-Id": "bad id; with spaces"})

    assert supplied.headers["X-Request-Id"] == "abc-123"
    assert [e.request_id for e in audit_rows(app, tenant.id, "auth.signin_succeeded")] == [
        "abc-123"
    ]
    assert minted.headers["X-Request-Id"] not in ("", "bad id; with spaces")
    assert len(minted.headers["X-Request-Id"]) == 32


def test_openapi_document_lists_the_auth_and_admin_paths(client):
    r = client.get("/openapi.json")

    assert r.status_code == 200
    paths = r.json["paths"]
    for path in (
        "/v1/auth/signin",
        "/v1/auth/enrol/totp",
        "/v1/auth/enrol/totp/confirm",
        "/v1/auth/backup-codes",
        "/v1/auth/password",
        "/v1/admin/users/{user_id}",
        "/v1/admin/users/{user_id}/notes",
        "/v1/admin/audit",
        "/v1/admin/audit/verify",
    ):
        assert path in paths, path
    signin_body = paths["/v1/auth/signin"]["post"]["requestBody"]["content"]["application/json"]
    assert signin_body["schema"]
