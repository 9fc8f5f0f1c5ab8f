"""Browser sessions for end users, for the pages that sign people in (the sign-in, enrolment and
account pages: signin.py, enrol.py, account.py).

The cookie carries only an opaque token; the session is a `UserSession` row of kind `browser`,
so everything that revokes a user's sessions (a force reset, a temporary password, a
suspension, a "this wasn't me" report) ends browser sessions too. A session is rotated at
sign-in (whatever the browser held before is revoked and a fresh token is set: no session
fixation), ends after `REKEY_WEB_IDLE_TIMEOUT_SECONDS` without use on top of the absolute
lifetimes, and a restricted (enrol-only) session after a reset reaches only the pages marked
`restricted_ok`.

Pages under `/t/<tenant>/` find their tenant on `g.tenant`; a session of another tenant is no
session there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

from flask import Response, g, redirect, request

from app.accounts.models import User, UserSession
from app.accounts.services import authenticate_session, end_session, get_user
from app.actor import Actor
from app.errors import Forbidden, Unauthenticated
from app.web import client_ip
from app.webui.cookies import clear_cookie, read_cookie, set_cookie
from app.webui.csrf import bind_to_session_cookie, rotate_csrf

COOKIE = "rekey_session"
bind_to_session_cookie(COOKIE)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")

F = TypeVar("F", bound=Callable[..., Any])


class RestrictedSession(Forbidden):
    code = "restricted_session"


def browser_session() -> UserSession | None:
    """This request's live browser session for the page's tenant, or None (signed out, ended,
    idle too long, revoked, the user suspended, or another tenant's)."""
    if "browser_session" not in g:
        # A sign-in earlier in this request decided the cookie the response will carry.
        token = g.get("session_cookie")
        token = read_cookie(COOKIE) if token is None else token
        session = None
        if token and _TOKEN.fullmatch(token):
            try:
                session = authenticate_session(token, restricted_ok=True, kind="browser")
            except Unauthenticated:
                session = None
        if session is not None and session.tenant_id != g.tenant.id:
            session = None
        g.browser_session = session
    return g.browser_session  # type: ignore[no-any-return]


def current_user() -> User | None:
    """The signed-in user of this request, or None."""
    session = browser_session()
    return get_user(session.tenant_id, session.user_id) if session else None


def session_scope() -> str | None:
    """`full`, `restricted` (enrol and change the password only), or None when signed out."""
    session = browser_session()
    return session.scope if session else None


def begin_browser_session(token: str) -> None:
    """After a successful sign-in service call (`sign_in(..., session_kind="browser")`): the
    response carries `token` in the session cookie. Whatever session the browser held before is
    revoked and the CSRF value renewed, so nothing planted or seen before the sign-in survives
    it. Forms rendered after this call carry tokens for the new session."""
    previous = read_cookie(COOKIE)
    if previous and previous != token and _TOKEN.fullmatch(previous):
        end_session(previous)
    g.session_cookie = token
    g.pop("browser_session", None)
    rotate_csrf(COOKIE, token)


def end_browser_session() -> None:
    """Sign out: revoke this browser's session and clear its cookie."""
    token = read_cookie(COOKIE)
    if token and _TOKEN.fullmatch(token):
        end_session(token)
    g.session_cookie = ""
    g.browser_session = None
    rotate_csrf(COOKIE, None)


def send_session_cookie(response: Response) -> Response:
    """Set or clear the cookie a sign-in or sign-out of this request decided, unless the
    request failed (its session row was rolled back with it)."""
    token = g.get("session_cookie")
    if token is None or response.status_code >= 400:
        return response
    if token:
        set_cookie(response, COOKIE, token)
    else:
        clear_cookie(response, COOKIE)
    return response


def signin_path(next_path: str | None = None) -> str:
    """The tenant's sign-in page, returning to `next_path` afterwards."""
    path = f"/t/{g.tenant.slug}/signin"
    return f"{path}?next={quote(next_path, safe='/')}" if next_path else path


def safe_next(value: str | None) -> str | None:
    """`value` if it is a page of this tenant to return to after signing in, else None: never
    another site (`//evil.example`, `https:...`, a backslash trick), so no open redirect."""
    prefix = f"/t/{g.tenant.slug}/"
    if not value or not value.startswith(prefix) or "\\" in value or "//" in value or len(value) > 512:
        return None
    return value if value.isascii() and value.isprintable() else None


def signin_required(*, restricted_ok: bool = False) -> Callable[[F], F]:
    """A page for signed-in users: no session sends the browser to the sign-in page; a restricted
    session (after a reset) gets a 403 page unless `restricted_ok` (enrolment, password change).
    The view finds the user's `Actor` on `g.actor`."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            session = browser_session()
            if session is None:
                back = request.path if request.method == "GET" else None
                return redirect(signin_path(back), code=303)
            if session.scope != "full" and not restricted_ok:
                raise RestrictedSession("After an account recovery you may only set up a sign-in factor and "
                                        "change your password until you sign in again with the new factor.")
            g.actor = Actor(type="user", id=str(session.user_id), tenant_id=session.tenant_id, ip=client_ip(),
                            request_id=g.get("request_id"))
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
