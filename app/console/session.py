"""The console session in the browser: an opaque token in the `rekey_console` cookie (HttpOnly,
SameSite=Lax, `__Host-` and Secure outside development), rotated at each sign-in step, bound into
every CSRF token. `agent_page` guards a console page and puts the console `Actor` on `g`."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

from flask import Response, g, redirect, request

from app.console.models import AgentSession
from app.console.signin import ConsoleSessionInvalid, authenticate_console_session, console_actor, end_console_session
from app.tenants.models import Agent
from app.web import client_ip
from app.webui.cookies import clear_cookie, read_cookie, set_cookie
from app.webui.csrf import bind_to_session_cookie, rotate_csrf

COOKIE = "rekey_console"
bind_to_session_cookie(COOKIE)
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
F = TypeVar("F", bound=Callable[..., Any])


def console_token() -> str | None:
    token = g.get("console_cookie")
    token = read_cookie(COOKIE) if token is None else token
    return token if token and _TOKEN.fullmatch(token) else None


def current_session(stages: tuple[str, ...]) -> tuple[AgentSession, Agent] | None:
    """This browser's live console session in one of `stages`, or None."""
    token = console_token()
    if not token:
        return None
    try:
        return authenticate_console_session(token, stages=stages)
    except ConsoleSessionInvalid:
        return None


def begin(token: str) -> None:
    """A sign-in step succeeded: the response carries the new token; CSRF values are renewed."""
    g.console_cookie = token
    rotate_csrf(COOKIE, token)


def end() -> None:
    token = console_token()
    if token:
        end_console_session(token)
    g.console_cookie = ""
    rotate_csrf(COOKIE, None)


def send_console_cookie(response: Response) -> Response:
    token = g.get("console_cookie")
    if token is None or response.status_code >= 400:
        return response
    if token:
        set_cookie(response, COOKIE, token)
    else:
        clear_cookie(response, COOKIE)
    return response


def signin_redirect() -> Any:
    back = request.full_path.rstrip("?") if request.method == "GET" else None
    target = "/console/signin" + (f"?next={quote(back, safe='/?=&')}" if back else "")
    if request.headers.get("HX-Request"):
        # htmx follows a redirect inside the fragment; the whole page must go to the sign-in.
        response = Response(status=204)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target, code=303)


def agent_page(view: F) -> F:
    """A console page: a full console session (else the sign-in page); `g.actor`, `g.agent`,
    `g.console_session` set for the view."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        found = current_session(("full",))
        if found is None:
            return signin_redirect()
        g.console_session, g.agent = found
        g.actor = console_actor(found[0], found[1], client_ip(), g.get("request_id"))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def safe_next(value: str | None) -> str | None:
    """A console page to return to after signing in, never another site."""
    if not value or not value.startswith("/console/") or "\\" in value or "//" in value or len(value) > 512:
        return None
    return value if value.isascii() and value.isprintable() else None
