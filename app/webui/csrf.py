"""CSRF protection for pages: a signed double-submit token (OWASP's "signed double-submit
cookie"), with no server-side state, so a page that needs no sign-in (a notice link) writes
nothing when it is merely fetched.

The browser holds a random value in the `rekey_csrf` cookie (see cookies.py). Every form carries
it back as the `csrf_token` field and every script POST as the `X-CSRF-Token` header, in the form

    HMAC-SHA256(SECRET_KEY, "rekey.csrf" | cookie value | SHA-256 of the browser-session cookie)

A page on another site can make the browser send our cookies but can neither read them nor
compute the HMAC, so it cannot forge the token; binding the session cookie in means a token
learnt before a sign-in stops working after it (and the CSRF cookie itself is rotated at sign-in
and sign-out). An unsafe request to a page without a matching token, or one the browser itself
announces as cross-site (`Sec-Fetch-Site: cross-site`), is refused with a 403 page before the
view runs, so nothing is read or changed. The JSON API is not cookie-authenticated (bearer
tokens, signatures) and is not checked here.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from flask import Response, current_app, g, request

from app.errors import Forbidden
from app.webui.cookies import read_cookie, set_cookie

COOKIE = "rekey_csrf"
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXPIRED = ("This form has expired or did not come from this site, so it was not accepted. Nothing was "
           "changed: go back, reload the page and try again.")
_BOUND: list[str] = []  # the browser-session cookies every token is bound to


class CsrfRefused(Forbidden):
    code = "csrf_failed"


def bind_to_session_cookie(name: str) -> None:
    """Bind every token to this session cookie (each kind of browser session calls it once)."""
    if name not in _BOUND:
        _BOUND.append(name)


def _cookie_value() -> str:
    """This browser's CSRF value, minted (and sent with the response) on first need."""
    value = g.get("csrf_cookie") or read_cookie(COOKIE)
    if not value or len(value) > 128 or not value.isascii():
        value = secrets.token_urlsafe(32)
        g.csrf_set = True
    g.csrf_cookie = value
    return value


def _binding() -> bytes:
    pending = g.get("csrf_sessions", {})
    values = [pending[name] if name in pending else (read_cookie(name) or "") for name in _BOUND]
    return hashlib.sha256("\x00".join(values).encode("utf-8", "replace")).digest()


def _token_for(cookie_value: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    message = b"rekey.csrf\x00" + cookie_value.encode() + b"\x00" + _binding()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def csrf_token() -> str:
    """The token for this browser; templates put it in every form (and a meta tag for scripts)."""
    return _token_for(_cookie_value())


def rotate_csrf(session_cookie: str, value: str | None) -> None:
    """A new CSRF value for this browser, at sign-in and sign-out, so no token seen before still
    works; `value` is what this response sets the session cookie to (None: cleared)."""
    g.csrf_cookie = secrets.token_urlsafe(32)
    g.csrf_set = True
    g.setdefault("csrf_sessions", {})[session_cookie] = value or ""


def check_csrf() -> None:
    """Refuse an unsafe page request that does not carry this browser's token."""
    if request.method in SAFE_METHODS:
        return
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise CsrfRefused("This form was sent from another site, so it was not accepted. Nothing was changed.")
    cookie = read_cookie(COOKIE)
    sent = request.headers.get(HEADER) or request.form.get(FIELD) or ""
    # compare_digest refuses non-ASCII text with a TypeError: such a token is simply wrong.
    if not (cookie and sent and cookie.isascii() and sent.isascii()):
        raise CsrfRefused(EXPIRED)
    if not hmac.compare_digest(_token_for(cookie), sent):
        raise CsrfRefused(EXPIRED)


def send_csrf_cookie(response: Response) -> Response:
    """Set the CSRF cookie when this request minted or rotated it."""
    if g.get("csrf_set"):
        set_cookie(response, COOKIE, g.csrf_cookie)
    return response
