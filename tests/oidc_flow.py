"""Driving the federated sign-in as a browser and a user would, with Flask's test client (which
keeps cookies) and a real local OpenID provider (integrations/fakes/oidc.py) reached over HTTP:
Rekey's page sends the browser to the provider, the provider signs the user in and sends the
browser back to Rekey's callback, Rekey exchanges the code and checks the ID token itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select

from app.extensions import db
from integrations.fakes.oidc import FakeOpenIDProvider
from tests.webpages import form_token


@contextmanager
def local_provider(monkeypatch: pytest.MonkeyPatch, **kw: Any) -> Iterator[FakeOpenIDProvider]:
    """A running local OpenID provider; the SSRF guard stays on, with the loopback address where
    the provider listens allow-listed (as an operator allow-lists an internal provider)."""
    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")
    kw.setdefault("subject", f"00u{uuid.uuid4().hex[:10]}")
    with FakeOpenIDProvider(**kw) as provider:
        yield provider


def register_provider(app: Any, tenant: Any, provider: FakeOpenIDProvider, name: str = "Acme SSO") -> str:
    """`rekey idp add` for the fake provider; the provider's id."""
    from app.actor import Actor
    from app.federation.providers import add_identity_provider
    from app.tenants.models import Tenant

    with app.app_context():
        row = add_identity_provider(db.session.get(Tenant, tenant.id), Actor(type="operator", id="test",
                                    tenant_id=tenant.id), issuer=provider.issuer, client_id=provider.client_id,
                                    client_secret=provider.client_secret, name=name)
        db.session.commit()
        return str(row.id)


def channel_of(app: Any, user: Any, kind: str = "phone") -> str:
    from app.accounts.models import Channel

    with app.app_context():
        return str(db.session.scalars(select(Channel.id).where(Channel.user_id == user.id, Channel.kind == kind))
                   .first())


def send_link(client: Any, agent: Any, case_id: str, channel_id: str, **extra: Any) -> Any:
    return client.post(f"/v1/admin/cases/{case_id}/actions/send_federated_signin_link", headers=agent.headers,
                       json={"reason": "User still has their SSO identity", "channel_id": channel_id, **extra})


def link_path(factory: Any, dev_outbox: Any) -> str:
    """Run the queued tasks and read the path of the newest federated link the user was sent."""
    from integrations.channels.dev import read_messages

    factory.drain_tasks()
    sent = [m for m in read_messages(dev_outbox) if m["idempotency_key"].startswith("federated-link:")]
    assert sent, "no federated sign-in link was sent"
    url = next(word for word in sent[-1]["body"].split() if "/links/federated/" in word)
    return urlsplit(url).path


def to_provider(client: Any, path: str, **fields: str) -> Any:
    """Press the page's button: Rekey answers 303 to the provider's authorization endpoint."""
    page = client.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)[:300]
    return client.post(path, data={"csrf_token": form_token(page), **fields})


def at_provider(location: str) -> str:
    """The browser at the provider: it signs the user in and redirects back; the callback's
    path and query (Rekey's public URL is not served in the test client)."""
    answer = requests.get(location, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text[:300]
    back = urlsplit(answer.headers["Location"])
    return f"{back.path}?{back.query}"


def sign_in_via_link(client: Any, path: str) -> Any:
    """The whole flow from the link's page to Rekey's answer at the callback."""
    started = to_provider(client, path)
    assert started.status_code == 303, started.get_data(as_text=True)[:300]
    return client.get(at_provider(started.headers["Location"]))
