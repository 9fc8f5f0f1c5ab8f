"""The cookies Rekey sets, all the same way: HttpOnly, SameSite=Lax, Path=/, and outside
development Secure with the `__Host-` prefix (a browser then refuses the cookie unless it came
over https from this very host, so a sibling subdomain cannot plant one: cookie tossing)."""

from __future__ import annotations

from flask import Response, current_app, request


def _secure() -> bool:
    return bool(current_app.extensions["rekey.settings"].secure_cookies)


def cookie_name(base: str) -> str:
    """The name on the wire: `__Host-<base>` where cookies are Secure, else `<base>`."""
    return f"__Host-{base}" if _secure() else base


def read_cookie(base: str) -> str | None:
    """This request's value of the cookie, or None."""
    return request.cookies.get(cookie_name(base)) or None


def set_cookie(response: Response, base: str, value: str) -> None:
    """A session cookie (no Max-Age: it ends with the browser; the server decides validity)."""
    # Lax, not Strict: a user following a notice link from their mail must arrive signed in as
    # they are; Lax still keeps the cookie off every cross-site POST.
    response.set_cookie(cookie_name(base), value, path="/", secure=_secure(), httponly=True,
                        samesite="Lax")


def clear_cookie(response: Response, base: str) -> None:
    response.delete_cookie(cookie_name(base), path="/", secure=_secure(), httponly=True, samesite="Lax")
