"""The browser side every page uses (the end-user pages now, the agent console later), written
once: templates and our own static files, security headers on every response, CSRF on every
unsafe request to a page, and error pages instead of JSON for page routes.

Pages are `PageBlueprint`s (render.py); cookies are set only through cookies.py.
"""

from __future__ import annotations

from flask import Flask, Response, request

from app.errors import register_page_errors
from app.webui.csrf import FIELD, check_csrf, csrf_token, send_csrf_cookie
from app.webui.render import PageBlueprint, error_page, is_page_request, render_page

# No inline script or style may run, no plugin loads, and no other site may frame a page
# (clickjacking a confirm button). `base-uri` stops an injected <base> from redirecting our
# relative URLs. The same policy goes on JSON answers: harmless there, and it covers any route.
CSP = "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'"

__all__ = ["CSP", "PageBlueprint", "init_webui", "install_security_headers", "render_page"]


def install_security_headers(app: Flask) -> None:
    """Security headers on every response. Install before the request lifecycle: after-request
    functions run in reverse, so these also land on an answer the commit step replaced."""

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("Content-Security-Policy", CSP)
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        headers.setdefault("Referrer-Policy", "same-origin")
        headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        return response


def init_webui(app: Flask) -> None:
    """Templates, CSRF and error pages for every `PageBlueprint` (after the request lifecycle)."""
    app.jinja_env.globals.update(csrf_token=csrf_token, csrf_field=FIELD)
    register_page_errors(app, wants_page=is_page_request, render=error_page)

    @app.before_request
    def _csrf() -> None:
        if request.url_rule is not None and is_page_request():  # no route: the 404 comes first
            check_csrf()

    app.after_request(send_csrf_cookie)
