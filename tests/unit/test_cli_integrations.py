"""`rekey integration create|rotate-secret` through click, against the test database."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner


@pytest.fixture
def cli_env(settings):
    return {"DATABASE_URL": settings.database_url, "REKEY_ENCRYPTION_KEYS": settings.encryption_keys,
            "REKEY_CODE_PEPPER": settings.code_pepper, "REKEY_SECRET_KEY": settings.secret_key,
            "REKEY_BROKER_URL": "memory://", "REKEY_LOG_LEVEL": "WARNING"}


def _run(args, env, stdin=""):
    from app.cli import main

    result = CliRunner().invoke(main, args, env=env, input=stdin, catch_exceptions=False)
    return result


def test_create_prints_url_and_secret_once_and_rotation_keeps_the_old_one(cli_env, factory, client):
    tenant = factory.tenant()
    created = _run(["integration", "create", "--tenant", tenant.slug, "--kind", "standard", "--name", "desk",
                    "--json"], cli_env)
    assert created.exit_code == 0, created.output
    info = json.loads(created.output)
    assert info["webhook_url"].endswith(f"/v1/webhooks/{info['id']}")
    assert info["signing_secret"].startswith("whsec_")
    rotated = _run(["integration", "rotate-secret", info["id"], "--json"], cli_env)
    assert rotated.exit_code == 0, rotated.output
    new_secret = json.loads(rotated.output)["signing_secret"]
    assert new_secret != info["signing_secret"]

    class _Integration:
        id = info["id"]

    user = factory.settled_user(tenant)
    for secret in (info["signing_secret"], new_secret):  # both sign during the overlap
        assert factory.request_recovery(client, _Integration, secret, user.email).status_code == 202


def test_outbound_credentials_need_all_three_parts(cli_env, factory):
    tenant = factory.tenant()
    partial = _run(["integration", "create", "--tenant", tenant.slug, "--kind", "zendesk", "--name", "zd",
                    "--outbound-base-url", "https://acme.zendesk.com"], cli_env)
    assert partial.exit_code != 0
    full = _run(["integration", "create", "--tenant", tenant.slug, "--kind", "zendesk", "--name", "zd",
                 "--outbound-base-url", "https://acme.zendesk.com", "--outbound-email", "bot@acme.test",
                 "--outbound-token-stdin", "--json"], cli_env, stdin="zd-api-token-123\n")
    assert full.exit_code == 0, full.output
    assert "zd-api-token-123" not in full.output
