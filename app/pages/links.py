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
from functools import partial
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
    """What the notice said, and the confirm button (a GET: reads only)."""
    notice = describe_link(token, purpose, g.tenant.id) if _TOKEN.fullmatch(token) else None
    if notice is None:
        return _invalid()
    return render_page("links/confirm.html", notice=notice, token=token, no_referrer=True)


def _confirm(purpose: str, token: str) -> Response:
    """Confirmed: "this wasn't me" suspends the account, revokes every session and escalates the
    case; a cancel stops the scheduled reset and makes the case a suspected attack."""
    if not _TOKEN.fullmatch(token):
        return _invalid()
    try:
        _ACTS[purpose](token, client_ip(), g.request_id, tenant_id=g.tenant.id)
    except NotFound:
        return _invalid()
    return render_page("links/done.html", purpose=purpose, no_referrer=True)


def _to_page(purpose: str, token: str) -> Any:
    """A link in its old form: 303 to its page."""
    slug = link_tenant_slug(token, purpose) if _TOKEN.fullmatch(token) else None
    if slug is None:
        return _invalid()
    response = redirect(f"/t/{slug}/links/{purpose}/{token}", code=303)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


# Endpoints pages.report_page, pages.report_confirm, legacy_links.old_report_link, and the same
# for cancel.
for _purpose in _ACTS:
    pages.add_url_rule(f"/links/{_purpose}/<token>", f"{_purpose}_page", partial(_show, _purpose), methods=["GET"])
    pages.add_url_rule(f"/links/{_purpose}/<token>", f"{_purpose}_confirm", partial(_confirm, _purpose),
                       methods=["POST"])
    legacy.add_url_rule(f"/{_purpose}/<token>", f"old_{_purpose}_link", partial(_to_page, _purpose), methods=["GET"])
