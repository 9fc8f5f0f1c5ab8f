"""The sign-in pages (issue 9, item 2): `/t/<tenant>/signin` asks for the email and password, then
`/t/<tenant>/signin/verify` for the second factor the account has (a security key, an
authenticator code or a backup code); `/t/<tenant>/signout` ends the browser session.

Each step is one call to the sign-in service the API uses (`begin_sign_in`, `complete_sign_in`,
`key_options`, `complete_sign_in_with_key`), so the page passes the same throttles, lockouts,
records and audit events. Between the two steps the pending sign-in's token travels in its own
HttpOnly cookie, never in the page. The session that opens is a browser session (cookie); what
the service says comes next decides where the browser goes: the account page, enrolment (after
a reset: the session is enrol-only) or the password change (after a temporary password).
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, redirect, request, url_for

from app.accounts import signin as steps
from app.errors import RekeyError
from app.pages import pages
from app.pages.forms import (
    drop_pending,
    form_text,
    json_answer,
    json_refusal,
    keep_pending,
    pending_token,
    posted_credential,
    refused_form,
)
from app.pages.sessions import begin_browser_session, end_browser_session, safe_next
from app.web import anonymous_actor
from app.webui import render_page

# Where the browser goes for each status the sign-in service answers with.
_NEXT_PAGE = {"enrolment_required": "pages.enrol", "password_change_required": "pages.password"}


def _signin_form(**context: Any) -> dict[str, Any]:
    return {"next": safe_next(request.values.get("next")), **context}


def _opened(result: steps.SigninResult) -> Any:
    """A session opened: carry it in the cookie and go where the service says."""
    assert result.token is not None
    begin_browser_session(result.token)
    target = url_for(_NEXT_PAGE[result.status]) if result.status in _NEXT_PAGE else (
        safe_next(request.values.get("next")) or url_for("pages.account"))
    return drop_pending(redirect(target, code=303))


@pages.get("/signin")
def signin() -> Any:
    """Step 1: email and password."""
    return render_page("signin/password.html", **_signin_form())


@pages.post("/signin")
def signin_password() -> Any:
    """Step 1 posted: a session (no factor owed) or the pending sign-in for step 2."""
    email = form_text("email", 320)
    try:
        result = steps.begin_sign_in(g.tenant, anonymous_actor(g.tenant.id), email=email,
                                     password=request.form.get("password", "")[:1024], session_kind="browser")
    except RekeyError as exc:
        return refused_form(exc, "signin/password.html", email=email, **_signin_form())
    if result.pending_token is None:
        return _opened(result)
    nxt = safe_next(request.form.get("next"))
    target = url_for("pages.signin_verify", next=nxt) if nxt else url_for("pages.signin_verify")
    return keep_pending(redirect(target, code=303), result.pending_token)


def _restart(message: str) -> Any:
    """The pending sign-in is gone (expired, used, ended by wrong codes): back to step 1."""
    return drop_pending(render_page("signin/password.html", status=401, error=message, **_signin_form()))


def _step_two(**context: Any) -> Response:
    token = pending_token()
    if token is None:
        return _restart("Your sign-in expired or was already used; start again with your password.")
    try:
        methods = steps.pending_methods(g.tenant, token)
    except steps.SigninExpired as exc:
        return _restart(exc.message)
    status = context.pop("status", 200)
    return render_page("signin/verify.html", status=status, methods=methods, **_signin_form(**context))


@pages.get("/signin/verify")
def signin_verify() -> Any:
    """Step 2: the account's second factors."""
    return _step_two()


@pages.post("/signin/verify")
def signin_code() -> Any:
    """Step 2 posted with an authenticator code or a backup code."""
    token = pending_token()
    if token is None:
        return _restart("Your sign-in expired or was already used; start again with your password.")
    method = "backup_code" if request.form.get("method") == "backup_code" else "otp"
    code = form_text("code", 64)
    try:
        result = steps.complete_sign_in(g.tenant, anonymous_actor(g.tenant.id), pending_token=token,
                                        session_kind="browser", **{method: code or None})
    except steps.SigninExpired as exc:
        g.keep_changes = exc.keep_changes
        return _restart(exc.message)
    except RekeyError as exc:
        g.keep_changes = exc.keep_changes
        return _step_two(error=exc.message, status=exc.status, method=method)
    return _opened(result)


@pages.post("/signin/key/options")
def signin_key_options() -> Any:
    """For our script: the WebAuthn request options of this browser's pending sign-in."""
    token = pending_token()
    try:
        if token is None:
            raise steps.SigninExpired("Your sign-in expired; start again with your password.")
        return json_answer({"options": steps.key_options(g.tenant, anonymous_actor(g.tenant.id),
                                                         pending_token=token)})
    except RekeyError as exc:
        return json_refusal(exc)


@pages.post("/signin/key")
def signin_key() -> Any:
    """Step 2 posted with the security key's assertion (put in the form by our script)."""
    token = pending_token()
    if token is None:
        return _restart("Your sign-in expired or was already used; start again with your password.")
    try:
        result = steps.complete_sign_in_with_key(g.tenant, anonymous_actor(g.tenant.id), pending_token=token,
                                                 credential=posted_credential(), session_kind="browser")
    except steps.SigninExpired as exc:
        g.keep_changes = exc.keep_changes
        return _restart(exc.message)
    except RekeyError as exc:
        g.keep_changes = exc.keep_changes
        return _step_two(error=exc.message, status=exc.status, method="webauthn")
    return _opened(result)


@pages.post("/signout")
def signout() -> Any:
    """End this browser's session."""
    end_browser_session()
    return drop_pending(redirect(url_for("pages.signin", signed_out=1), code=303))
