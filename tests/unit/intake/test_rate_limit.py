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
