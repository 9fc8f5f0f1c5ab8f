"""Page blueprints, rendering, and error pages instead of the API's JSON body.

A `PageBlueprint` is an ordinary Flask blueprint whose routes are pages: unsafe requests to it
need the CSRF token, and its errors (and 404s under its path, such as an unknown tenant) render
as HTML pages. Error pages say what went wrong in words and give the request id; they never
carry a stack trace or the JSON error body.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, g, render_template, request

# Headings for error pages by status; the message under it is the refusal's own.
_TITLES = {
    400: "This request could not be read",
    401: "Please sign in",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    409: "This changed in the meantime",
    413: "Too much data",
    415: "This request could not be read",
    422: "This could not be done",
    429: "Too many attempts",
    503: "Temporarily unavailable",
}
_PLAIN_404 = "There is no page at this address. Check the link, or ask your organisation's support."


class PageBlueprint(Blueprint):
    """A blueprint of HTML pages (CSRF-checked, errors as pages). A request under its fixed path
    prefix that matches no route (`/t/<tenant>/nothing`) gets a page too, for the methods in
    `claims` (all by default); a blueprint sharing its prefix with the JSON API (the old link
    addresses, which a browser only ever GETs) claims GET alone."""

    def __init__(self, *args: Any, claims: frozenset[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.claims = claims

    def claims_path(self, method: str, path: str) -> bool:
        """Whether an unrouted request with this method and path is one of this blueprint's pages."""
        prefix = (self.url_prefix or "").split("<", 1)[0]
        return (len(prefix) > 1 and path.startswith(prefix)
                and (self.claims is None or method in self.claims))


def is_page_request() -> bool:
    """Whether this request is for a page (its route, or its path when no route matched)."""
    blueprint = current_app.blueprints.get(request.blueprint or "")
    if blueprint is not None:
        return isinstance(blueprint, PageBlueprint)
    return any(bp.claims_path(request.method, request.path) for bp in current_app.blueprints.values()
               if isinstance(bp, PageBlueprint))


def render_page(template: str, *, status: int = 200, no_referrer: bool = False, **context: Any) -> Response:
    """Render a page. `no_referrer` for pages whose URL holds a secret (a link's token): the
    browser then never sends that URL to another site, nor to our own other pages."""
    response = current_app.make_response((render_template(template, **context), status))
    if no_referrer:
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def error_page(status: int, code: str, message: str) -> Response:
    """The page for a refusal (`RekeyError`, HTTP error or failure) on a page route."""
    if status == 404 and code == "not_found" and request.url_rule is None:
        message = _PLAIN_404  # no route: Werkzeug's own wording speaks to developers
    if status >= 500:
        title, message = "Something went wrong", "Nothing was changed. Please try again in a moment."
    else:
        title = _TITLES.get(status, "This request could not be completed")
    # Link pages hold a token in their path; an error there must not leak it as a referrer either.
    return render_page("errors/error.html", status=status, no_referrer=True, title=title, message=message,
                       code=code, request_id=g.get("request_id", ""))
