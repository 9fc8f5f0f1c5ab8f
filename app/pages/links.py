"""The notice-link pages (issue 9, "the notice links"): `GET /t/<tenant>/links/report/<token>`
("this wasn't me") and `.../links/cancel/<token>` (a scheduled reset) show what the notice was
about and a confirm button; only the confirming POST acts. A mail scanner or a link preview that
fetches the URL changes nothing: the GET reads, it never redeems and never audits.

An invalid, used, expired or other tenant's link gets one page, the same for each (404). A GET
on a link in its old form, `/v1/recovery/<purpose>/<token>` (notices sent before the pages),
answers 303 to its page; the POST API at that address stays as it was.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Response, g, redirect

from app.errors import NotFound
from app.pages import pages
from app.recovery.closing import cancel_scheduled_reset, report_not_me
from app.recovery.notify import describe_link, link_tenant_slug
from app.web import client_ip
from app.webui import PageBlueprint, render_page

legacy = PageBlueprint("legacy_links", __name__, url_prefix="/v1/recovery", claims=frozenset({"GET", "HEAD"}))

# A token is URL-safe text of bounded length whatever its format: anything else (NUL, a 3000-
# character path) is invalid before any lookup.
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,256}")
_ACTS: dict[str, Callable[..., None]] = {"report": report_not_me, "cancel": cancel_scheduled_reset}


def _invalid() -> Response:
    return render_page("links/invalid.html", status=404, no_referrer=True)


def _show(purpose: str, token: str) -> Response:
    notice = describe_link(token, purpose, g.tenant.id) if _TOKEN.fullmatch(token) else None
    if notice is None:
        return _invalid()
    return render_page("links/confirm.html", notice=notice, token=token, no_referrer=True)


def _confirm(purpose: str, token: str) -> Response:
    if not _TOKEN.fullmatch(token):
        return _invalid()
    try:
        _ACTS[purpose](token, client_ip(), g.request_id, tenant_id=g.tenant.id)
    except NotFound:
        return _invalid()
    return render_page("links/done.html", purpose=purpose, no_referrer=True)


@pages.get("/links/report/<token>")
def report_page(token: str) -> Response:
    """"This wasn't me": what the notice said, and the confirm button."""
    return _show("report", token)


@pages.post("/links/report/<token>")
def report_confirm(token: str) -> Response:
    """Confirmed: suspend the account, revoke every session, escalate the case."""
    return _confirm("report", token)


@pages.get("/links/cancel/<token>")
def cancel_page(token: str) -> Response:
    """A scheduled reset: when it runs, and the cancel button."""
    return _show("cancel", token)


@pages.post("/links/cancel/<token>")
def cancel_confirm(token: str) -> Response:
    """Confirmed: cancel the reset; the case becomes a suspected attack."""
    return _confirm("cancel", token)


def _to_page(purpose: str, token: str) -> Any:
    slug = link_tenant_slug(token, purpose) if _TOKEN.fullmatch(token) else None
    if slug is None:
        return _invalid()
    response = redirect(f"/t/{slug}/links/{purpose}/{token}", code=303)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@legacy.get("/report/<token>")
def old_report_link(token: str) -> Any:
    """A "this wasn't me" link in its old form: 303 to its page."""
    return _to_page("report", token)


@legacy.get("/cancel/<token>")
def old_cancel_link(token: str) -> Any:
    """A cancel link in its old form: 303 to its page."""
    return _to_page("cancel", token)
