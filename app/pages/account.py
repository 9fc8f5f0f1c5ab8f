"""The account security page (issue 9, item 2): `/t/<tenant>/account` lists the user's factors
with their labels and last use, the backup codes remaining and recent sign-ins; a key can be
removed (never the last factor: the service refuses it, the page only offers what it allows),
keys and apps added through the enrolment pages, backup codes regenerated (enrol.py, shown
once) and the password changed. A full session only: the enrol-only session after a reset
reaches enrolment and the password change alone."""

from __future__ import annotations

from typing import Any

from flask import g, redirect, request, url_for

from app.accounts import security_keys
from app.accounts.overview import security_overview
from app.errors import RekeyError
from app.pages import pages
from app.pages.forms import refused_form
from app.pages.sessions import current_user, signin_required
from app.webui import render_page

_NOTES = {"removed": "The security key was removed.", "password_changed": "Your password was changed."}


@pages.get("/account")
@signin_required()
def account() -> Any:
    """The user's factors, backup codes and recent sign-ins."""
    user = current_user()
    assert user is not None
    notes = [text for flag, text in _NOTES.items() if request.args.get(flag)]
    return render_page("account/security.html", user=user, notes=notes, **security_overview(user))


@pages.post("/account/keys/<key_id>/remove")
@signin_required()
def remove_key(key_id: str) -> Any:
    """Remove one of the user's security keys."""
    user = current_user()
    assert user is not None
    try:
        security_keys.remove_key(g.actor, user, key_id)
    except RekeyError as exc:
        return refused_form(exc, "account/security.html", user=user, notes=[], **security_overview(user))
    return redirect(url_for("pages.account", removed=1), code=303)
