"""A flood of deliveries from one integration is refused with 429 and Retry-After."""

from __future__ import annotations

from dataclasses import replace

import pytest


@pytest.fixture
def limited_app(settings):
    from app import create_app
    from app.extensions import db

    application = create_app(replace(settings, webhook_rate_per_minute=3), TESTING=True)
    yield application
    with application.app_context():
        db.engine.dispose()


def test_flood_from_one_integration_is_rate_limited(limited_app, factory):
    factory.app = limited_app
    client = limited_app.test_client()
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    other, other_secret = factory.integration(tenant)
    answers = [factory.request_recovery(client, integration, secret, f"u{i}@example.com").status_code
               for i in range(5)]
    assert answers[:3] == [202, 202, 202]
    limited = factory.request_recovery(client, integration, secret, "u9@example.com")
    assert limited.status_code == 429
    assert limited.json["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) > 0
    # The limit is per integration: another sender of the tenant is unaffected.
    assert factory.request_recovery(client, other, other_secret, "u10@example.com").status_code == 202


def test_signed_deliveries_refused_with_422_count_toward_the_limit(limited_app, factory):
    """Issue 8, item 13: a trigger looping on a body Rekey refuses got 422 at full speed forever,
    because only stored deliveries counted. Every signed delivery counts now."""
    from tests.signing import body_of, standard_headers

    factory.app = limited_app
    client = limited_app.test_client()
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    refused = body_of({"type": "recovery.requested", "data": {"ticket_id": "T-1", "text": "no account named"}})

    answers = [client.post(f"/v1/webhooks/{integration.id}", data=refused,
                           headers=standard_headers(secret, refused)).status_code for _ in range(4)]

    assert answers == [422, 422, 422, 429]
    limited = factory.request_recovery(client, integration, secret, "u1@example.com")
    assert limited.status_code == 429, limited.json
    assert 0 < int(limited.headers["Retry-After"]) <= 60


def test_forged_deliveries_are_not_counted_against_the_integration(limited_app, factory):
    """Somebody without the secret cannot lock a real sender out: a forgery is refused 401 before
    it is counted."""
    from tests.signing import body_of, standard_headers

    factory.app = limited_app
    client = limited_app.test_client()
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    body = body_of({"type": "recovery.requested", "data": {"user_email": "u@example.com"}})
    forged = standard_headers("whsec_" + "QUJD" * 11, body)

    answers = [client.post(f"/v1/webhooks/{integration.id}", data=body, headers=forged).status_code
               for _ in range(10)]

    assert answers == [401] * 10
    assert [factory.request_recovery(client, integration, secret, f"u{i}@example.com").status_code
            for i in range(3)] == [202, 202, 202]
