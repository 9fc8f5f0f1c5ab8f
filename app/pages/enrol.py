"""The enrolment pages (issue 9, item 2): `/t/<tenant>/enrol` offers an authenticator app or a
security key, then (when the account has no backup codes) ten backup codes shown once. They are
open to the restricted, enrol-only session a reset, a temporary password, a backup-code sign-in
during a recovery or a federated sign-in opens, and to a full session adding a factor.

The authenticator app: the QR code is drawn here as inline SVG (segno; no image request, no
third party sees the secret) with the secret as text for typing in. The security key: our own
script (static/js/webauthn.js) asks for the creation options, lets the browser create the
credential and posts its `toJSON()` in the form. Each step is the service call the JSON API
makes, so an enrolment closes a recovery case exactly as it does there.
"""

from __future__ import annotations

from typing import Any

import segno
from flask import g, redirect, url_for
from markupsafe import Markup

from app.accounts import mfa, security_keys
from app.accounts.services import MIN_PASSWORD_LENGTH, active_factors, backup_codes_remaining
from app.errors import RekeyError
from app.pages import pages
from app.pages.forms import form_text, json_answer, json_refusal, posted_credential, refused_form
from app.pages.sessions import browser_session, current_user, signin_required
from app.webui import render_page


def _session_id() -> Any:
    session = browser_session()
    assert session is not None  # signin_required let the request in
    return session.id


def qr_svg(uri: str) -> Markup:
    """The otpauth URI as an inline SVG QR code (dark modules on white, a 4-module quiet zone)."""
    svg = segno.make(uri, error="m").svg_inline(scale=5, border=4, dark="#000", light="#fff",
                                                 title="QR code for your authenticator app")
    # segno's own markup: the URI is encoded into the modules, never copied into the text.
    return Markup(svg)  # noqa: S704


def _enrol_page(template: str, **context: Any) -> Any:
    user = current_user()
    assert user is not None
    return render_page(template, scope=browser_session().scope,  # type: ignore[union-attr]
                       has_factor=bool(active_factors(user)), **context)


@pages.get("/enrol")
@signin_required(restricted_ok=True)
def enrol() -> Any:
    """Choose what to set up."""
    return _enrol_page("enrol/choose.html")


@pages.post("/enrol/totp")
@signin_required(restricted_ok=True)
def enrol_totp() -> Any:
    """Start an authenticator app: its QR code and secret, shown to this session only."""
    user = current_user()
    assert user is not None
    try:
        _, secret, uri = mfa.start_totp_enrolment(g.actor, user, issuer=f"Rekey ({g.tenant.name})")
    except RekeyError as exc:
        return refused_form(exc, "enrol/choose.html", scope=browser_session().scope,  # type: ignore[union-attr]
                            has_factor=bool(active_factors(user)))
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    return _enrol_page("enrol/totp.html", secret=grouped, qr=qr_svg(uri))


@pages.post("/enrol/totp/confirm")
@signin_required(restricted_ok=True)
def enrol_totp_confirm() -> Any:
    """The first code from the app activates it."""
    user = current_user()
    assert user is not None
    try:
        mfa.confirm_totp_enrolment(g.actor, user, form_text("code", 32).replace(" ", ""))
    except RekeyError as exc:
        return refused_form(exc, "enrol/totp.html", scope=browser_session().scope,  # type: ignore[union-attr]
                            has_factor=bool(active_factors(user)), secret=None, qr=None)
    return redirect(url_for("pages.enrol_done", kind="totp"), code=303)


@pages.get("/enrol/key")
@signin_required(restricted_ok=True)
def enrol_key() -> Any:
    """Register a security key (the button needs JavaScript: WebAuthn is a browser API)."""
    return _enrol_page("enrol/key.html")


@pages.post("/enrol/key/options")
@signin_required(restricted_ok=True)
def enrol_key_options() -> Any:
    """For our script: the creation options, bound to this browser session."""
    user = current_user()
    assert user is not None
    try:
        return json_answer({"options": security_keys.registration_options(user, _session_id())})
    except RekeyError as exc:
        return json_refusal(exc)


@pages.post("/enrol/key")
@signin_required(restricted_ok=True)
def enrol_key_confirm() -> Any:
    """The browser's answer to this session's options: the key is registered."""
    user = current_user()
    assert user is not None
    label = form_text("label", 256)
    try:
        security_keys.register_key(g.actor, user, _session_id(), posted_credential(), label=label or None)
    except RekeyError as exc:
        return refused_form(exc, "enrol/key.html", scope=browser_session().scope,  # type: ignore[union-attr]
                            has_factor=bool(active_factors(user)), label=label)
    return redirect(url_for("pages.enrol_done", kind="webauthn"), code=303)


@pages.get("/enrol/done")
@signin_required(restricted_ok=True)
def enrol_done() -> Any:
    """Set up: offer backup codes when the account has none; then sign in again or go on."""
    user = current_user()
    assert user is not None
    return _enrol_page("enrol/done.html", codes_remaining=backup_codes_remaining(user.id))


@pages.post("/backup-codes")
@signin_required(restricted_ok=True)
def backup_codes() -> Any:
    """Ten new backup codes, replacing all others, shown once (the answer is never stored:
    every response carries Cache-Control: no-store)."""
    user = current_user()
    session = browser_session()
    assert user is not None and session is not None
    codes = mfa.regenerate_backup_codes(g.actor, user, session)
    return render_page("account/codes.html", codes=codes, scope=session.scope)


@pages.get("/password")
@signin_required(restricted_ok=True)
def password() -> Any:
    """Change the password (after a temporary password, without the current one)."""
    return _password_page()


def _password_page(**context: Any) -> Any:
    user, session = current_user(), browser_session()
    assert user is not None and session is not None
    return render_page("account/password.html", forced=mfa.password_change_forced(user, session),
                       min_length=MIN_PASSWORD_LENGTH, **context)


@pages.post("/password")
@signin_required(restricted_ok=True)
def password_change() -> Any:
    user, session = current_user(), browser_session()
    assert user is not None and session is not None
    new, again = form_text("new_password", 1024), form_text("new_password_again", 1024)
    try:
        if new != again:
            raise mfa.RuleRefused("The two new passwords are not the same.", code="password_mismatch")
        mfa.change_password(g.actor, user, session, new_password=new,
                            current_password=form_text("current_password", 1024) or None)
    except RekeyError as exc:
        g.keep_changes = exc.keep_changes
        response = _password_page(error=exc.message)
        response.status_code = exc.status
        return response
    target = "pages.account" if session.scope == "full" else "pages.enrol"
    return redirect(url_for(target, password_changed=1), code=303)
