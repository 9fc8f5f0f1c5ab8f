"""Federated sign-in pages (OpenID Connect; issue 8 item 5, issue 9 "sign in with a linked
federated identity"):

- `GET /t/<tenant>/links/federated/<token>`: the page of the single-use link an agent sent; it
  names the identity provider and has a button. A GET reads only (a mail scanner uses nothing
  up); the confirming POST uses the link and sends the browser to the provider.
- `GET /t/<tenant>/signin/federated`: "Sign in with <provider>" for each of the tenant's
  identity providers; the POST starts that provider's flow.
- `GET /t/<tenant>/oidc/callback`: where the provider sends the browser back. Everything is
  verified there (app/recovery/federated.py); a link's sign-in is recorded as evidence on its
  case, a sign-in page's sign-in opens a restricted, enrol-only session and goes to enrolment.

The `state` of a started flow rides in a cookie of the browser that started it: the callback
must bring the same one back, so a callback URL opened in another browser proves nothing.
"""

from __future__ import annotations

import re
from typing import cast

from flask import Response, g, redirect, request

from app.federation.providers import list_identity_providers
from app.pages import pages
from app.pages.sessions import begin_browser_session
from app.recovery.federated import (
    complete_federated_signin,
    describe_federated_link,
    start_from_link,
    start_from_signin_page,
)
from app.web import client_ip
from app.webui import render_page
from app.webui.cookies import clear_cookie, read_cookie, set_cookie

STATE_COOKIE = "rekey_oidc"
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,256}")


def _to_provider(url: str, state: str) -> Response:
    response = cast(Response, redirect(url, code=303))
    set_cookie(response, STATE_COOKIE, state)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@pages.route("/links/federated/<token>", methods=["GET"])
def federated_link_page(token: str) -> Response:
    """The link's page: which provider, until when, and the button (reads only)."""
    link = describe_federated_link(token, g.tenant.id) if _TOKEN.fullmatch(token) else None
    if link is None:
        return render_page("links/invalid.html", status=404, no_referrer=True)
    return render_page("federated/link.html", link=link, no_referrer=True)


@pages.route("/links/federated/<token>", methods=["POST"])
def federated_link_start(token: str) -> Response:
    """Use the link and go to the provider's sign-in (a fresh one: prompt=login, max_age=0)."""
    if not _TOKEN.fullmatch(token):
        return render_page("links/invalid.html", status=404, no_referrer=True)
    url, state = start_from_link(token, g.tenant)
    return _to_provider(url, state)


@pages.route("/signin/federated", methods=["GET"])
def federated_signin_page() -> Response:
    """"Sign in with <provider>" for each of the tenant's identity providers."""
    return render_page("federated/signin.html", providers=list_identity_providers(g.tenant.id))


@pages.route("/signin/federated", methods=["POST"])
def federated_signin_start() -> Response:
    """Start the chosen provider's sign-in."""
    url, state = start_from_signin_page(g.tenant, request.form.get("provider_id", ""))
    return _to_provider(url, state)


@pages.route("/oidc/callback", methods=["GET"])
def oidc_callback() -> Response:
    """The provider's answer: verified, then recorded as evidence or turned into a session."""
    outcome = complete_federated_signin(
        g.tenant, state=request.args.get("state", ""), browser_state=read_cookie(STATE_COOKIE),
        code=request.args.get("code"), error=request.args.get("error"), ip=client_ip(),
        request_id=g.get("request_id"))
    if outcome.purpose == "signin":
        assert outcome.session_token is not None
        begin_browser_session(outcome.session_token)
        response = cast(Response, redirect(f"/t/{g.tenant.slug}/enrol", code=303))
    else:
        response = render_page("federated/done.html", evidence=outcome.evidence, no_referrer=True)
    clear_cookie(response, STATE_COOKIE)
    return response
