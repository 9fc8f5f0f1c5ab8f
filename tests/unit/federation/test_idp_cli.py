"""`rekey idp add` and `rekey idp list`: a tenant's OpenID providers, the client secret read from
stdin and stored encrypted (never printed, never audited)."""

from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from app import cli
from app.extensions import db
from app.federation.models import IdentityProvider
from tests.casework import tenant_text

SECRET = "oidc-client-secret-7f3a9c"


@pytest.fixture
def rekey(app, monkeypatch):
    monkeypatch.setattr(cli, "_app", lambda: app)
    runner = CliRunner()

    def run(*args: str, stdin: str = ""):
        return runner.invoke(cli.main, list(args), input=stdin, catch_exceptions=False)

    return run


def test_idp_add_stores_the_secret_encrypted_and_lists_without_it(app, rekey, factory):
    tenant = factory.tenant()

    added = rekey("idp", "add", "--tenant", tenant.slug, "--issuer", "https://login.acme.example",
                  "--client-id", "rekey-prod", "--name", "Acme SSO", "--json", stdin=SECRET + "\n")
    listed = rekey("idp", "list", "--tenant", tenant.slug, "--json")

    assert added.exit_code == 0, added.output
    shown = json.loads(added.output)
    assert shown["redirect_uri"].endswith(f"/t/{tenant.slug}/oidc/callback")
    assert SECRET not in added.output and SECRET not in listed.output
    [row] = json.loads(listed.output)
    assert (row["name"], row["issuer"], row["client_id"]) == ("Acme SSO", "https://login.acme.example", "rekey-prod")
    with app.app_context():
        stored = db.session.scalars(select(IdentityProvider).where(IdentityProvider.tenant_id == tenant.id)).one()
        assert SECRET not in stored.client_secret_encrypted
        from app.federation.providers import client_secret

        assert client_secret(stored) == SECRET
    text = tenant_text(app, tenant.id)
    assert SECRET not in text


@pytest.mark.parametrize("issuer, why", [
    ("http://login.acme.example", "plain http"),  # not allow-listed: only https
    ("https://10.0.0.5", "non-global"),  # a private address: the SSRF guard
    ("https://login.acme.example?x=1", "query"),
    ("not a url", "http"),
    ("https://[::1", "not a URL"),
    ("https://idp.example:99999", "not a URL"),
    ("https://idp.example/\x00", "printable"),
    ("https://" + "a" * 400 + ".example", "at most 300"),
])
def test_idp_add_refuses_an_issuer_rekey_must_not_call(rekey, factory, issuer, why):
    tenant = factory.tenant()

    r = rekey("idp", "add", "--tenant", tenant.slug, "--issuer", issuer, "--client-id", "x", stdin=SECRET + "\n")

    assert r.exit_code == 2
    assert why in r.output and SECRET not in r.output
    assert json.loads(rekey("idp", "list", "--tenant", tenant.slug, "--json").output) == []


def test_idp_add_twice_for_one_issuer_is_a_conflict_and_needs_a_secret(rekey, factory):
    tenant = factory.tenant()
    issuer = f"https://idp-{uuid.uuid4().hex[:6]}.example"

    first = rekey("idp", "add", "--tenant", tenant.slug, "--issuer", issuer, "--client-id", "a", stdin="s1\n")
    again = rekey("idp", "add", "--tenant", tenant.slug, "--issuer", issuer, "--client-id", "b", stdin="s2\n")
    other = rekey("idp", "add", "--tenant", factory.tenant().slug, "--issuer", issuer, "--client-id", "c",
                  stdin="s3\n")
    empty = rekey("idp", "add", "--tenant", tenant.slug, "--issuer", issuer + "/x", "--client-id", "d", stdin="\n")

    assert (first.exit_code, again.exit_code, other.exit_code, empty.exit_code) == (0, 2, 0, 2)
    assert "conflict" in again.output and "client_secret" in empty.output
