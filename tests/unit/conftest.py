"""Unit-test fixtures shared across packages: an app with a probe blueprint of pages that use the
browser-session helpers, as the sign-in, enrolment and account pages will (they come later; the
helpers and the page infrastructure are tested now)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest


def build_probe_app(settings: Any) -> Any:
    from flask import g, redirect, render_template_string, request

    from app import create_app
    from app.accounts.signin import sign_in
    from app.errors import RuleRefused
    from app.pages.sessions import (
        begin_browser_session,
        current_user,
        end_browser_session,
        safe_next,
        session_scope,
        signin_required,
    )
    from app.tenants.services import get_tenant_by_slug
    from app.web import anonymous_actor
    from app.webui import PageBlueprint

    application = create_app(settings, TESTING=True)
    probe = PageBlueprint("probe", __name__, url_prefix="/t/<tenant>/probe")

    @probe.url_value_preprocessor
    def _tenant(endpoint: str | None, values: dict[str, Any] | None) -> None:
        g.tenant = get_tenant_by_slug((values or {}).pop("tenant", ""))

    page = "<main>{{ csrf_token() }} {{ text }}</main>"

    @probe.get("/form")
    def form() -> Any:
        return render_template_string(page, text=session_scope() or "signed out")

    @probe.post("/signin")
    def signin() -> Any:
        result = sign_in(g.tenant, anonymous_actor(g.tenant.id), email=request.form["email"],
                         password=request.form["password"], otp=request.form.get("otp") or None,
                         session_kind="browser")
        if result.token is None:
            return render_template_string(page, text=result.status)
        begin_browser_session(result.token)
        # A page rendered right after the sign-in carries tokens for the new session.
        return render_template_string(page, text=f"signed in {result.status}")

    @probe.post("/signout")
    def signout() -> Any:
        end_browser_session()
        return redirect(f"/t/{g.tenant.slug}/probe/form", code=303)

    @probe.get("/whoami")
    @signin_required()
    def whoami() -> Any:
        user = current_user()
        assert user is not None and g.actor.id == str(user.id)
        return render_template_string(page, text=f"{user.email} {session_scope()}")

    @probe.get("/enrol")
    @signin_required(restricted_ok=True)
    def enrol() -> Any:
        return render_template_string(page, text=f"enrol {session_scope()}")

    @probe.post("/enrol")
    @signin_required(restricted_ok=True)
    def enrol_post() -> Any:
        return render_template_string(page, text="posted")

    @probe.get("/next")
    def next_page() -> Any:
        return render_template_string(page, text=repr(safe_next(request.args.get("next"))))

    @probe.get("/boom")
    def boom() -> Any:
        raise RuntimeError("internal detail 4242 from /srv/app.py")

    @probe.get("/refuse")
    def refuse() -> Any:
        raise RuleRefused("A rule said no to this.")

    application.register_blueprint(probe)
    return application


@pytest.fixture(scope="module")
def probe_app(settings: Any) -> Iterator[Any]:
    from app.extensions import db

    application = build_probe_app(settings)
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.fixture(scope="module")
def dev_probe_app(settings: Any) -> Iterator[Any]:
    """The same app in development (plain http: cookies not Secure, no __Host- prefix)."""
    from app.extensions import db

    application = build_probe_app(replace(settings, env="development"))
    yield application
    with application.app_context():
        db.engine.dispose()
