"""End-user pages under `/t/<tenant>/` (a browser cannot send `X-Rekey-Tenant`, so the tenant is
in the path). An unknown tenant is the plain not-found page. The notice-link pages live in
links.py; the browser-session helpers later pages sign users in with, in sessions.py."""

from __future__ import annotations

import importlib
from typing import Any

from flask import Flask, g

from app.tenants.services import get_tenant_by_slug
from app.webui import PageBlueprint

pages = PageBlueprint("pages", __name__, url_prefix="/t/<tenant>")


@pages.url_value_preprocessor
def _load_tenant(endpoint: str | None, values: dict[str, Any] | None) -> None:
    # Runs before CSRF and the view: an unknown tenant is a 404 whatever the method.
    g.tenant = get_tenant_by_slug((values or {}).pop("tenant", ""))


@pages.url_defaults
def _tenant_in_urls(endpoint: str, values: dict[str, Any]) -> None:
    if "tenant" not in values and g.get("tenant") is not None:
        values["tenant"] = g.tenant.slug


@pages.context_processor
def _tenant_in_templates() -> dict[str, Any]:
    return {"tenant": g.get("tenant")}


def register_pages(app: Flask) -> None:
    """Register the end-user pages (and the old link addresses that now lead to them)."""
    from app.pages import account, enrol, links, sessions, signin  # noqa: F401  (routes join `pages`)

    # The federated sign-in pages put their routes on `pages`: imported before it is registered.
    importlib.import_module("app.pages.federated")

    app.register_blueprint(pages)
    app.register_blueprint(links.legacy)
    app.after_request(sessions.send_session_cookie)
