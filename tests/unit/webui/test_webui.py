"""The web infrastructure every page uses: security headers on real responses, CSRF on every
unsafe page request, error pages (never the JSON body, never a stack trace), our own static
files with the pinned htmx."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from app.webui import CSP
from tests.webpages import assert_page, main_text, set_cookie_header

STATIC = Path(__file__).resolve().parents[3] / "app" / "static"
# htmx 2.0.11 from the npm registry (package htmx.org, dist/htmx.min.js): a changed file is a
# changed dependency and must be vetted and re-pinned, never swapped silently.
HTMX_SHA256 = "d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"


@pytest.fixture
def tenant(factory: Any) -> Any:
    return factory.tenant()


@pytest.mark.parametrize("path", ["/t/{slug}/probe/form", "/t/{slug}/nothing", "/healthz", "/v1/admin/cases",
                                  "/static/css/rekey.css"])
def test_every_response_carries_the_security_headers(probe_app: Any, tenant: Any, path: str) -> None:
    answer = probe_app.test_client().get(path.format(slug=tenant.slug))
    answer.close()
    assert answer.headers["Content-Security-Policy"] == CSP
    assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP and "object-src 'none'" in CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert answer.headers["Referrer-Policy"] in ("same-origin", "no-referrer")


def test_pages_are_never_cached(probe_app: Any, tenant: Any) -> None:
    answer = probe_app.test_client().get(f"/t/{tenant.slug}/probe/form")
    assert answer.headers["Cache-Control"] == "no-store"


def test_templates_have_no_inline_script_style_or_handler() -> None:
    """The CSP would block them anyway; a page that needs one would be broken in every browser."""
    import re

    templates = Path(__file__).resolve().parents[3] / "app" / "templates"
    pages = list(templates.rglob("*.html"))
    assert len(pages) >= 3
    for page in pages:
        text = page.read_text()
        assert "<style" not in text and "style=" not in text, page
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), page
        assert not re.search(r"\son[a-z]+\s*=", text), page
        assert "javascript:" not in text, page


def test_csrf_cookie_is_httponly_lax_secure_and_host_prefixed(probe_app: Any, tenant: Any) -> None:
    answer = probe_app.test_client().get(f"/t/{tenant.slug}/probe/form")
    header = set_cookie_header(answer, "__Host-rekey_csrf")
    attributes = {part.strip().lower() for part in header.split(";")[1:]}
    assert {"httponly", "secure", "path=/", "samesite=lax"} <= attributes
    assert not any(a.startswith("domain") for a in attributes)


def test_api_answers_set_no_cookie(client: Any) -> None:
    assert client.get("/healthz").headers.getlist("Set-Cookie") == []
    assert client.post("/v1/auth/signin", json={}).headers.getlist("Set-Cookie") == []


def test_post_without_csrf_token_gets_a_clear_page(probe_app: Any, tenant: Any) -> None:
    client = probe_app.test_client()
    client.get(f"/t/{tenant.slug}/probe/form")
    text = assert_page(client.post(f"/t/{tenant.slug}/probe/signout"), 403)
    assert "This form has expired or did not come from this site" in text
    assert "Error csrf_failed" in text


def test_post_without_any_cookie_is_refused(probe_app: Any, tenant: Any) -> None:
    client = probe_app.test_client()
    token = main_text(client.get(f"/t/{tenant.slug}/probe/form")).split()[0]
    fresh = probe_app.test_client()  # the token, but not the browser it belongs to
    assert_page(fresh.post(f"/t/{tenant.slug}/probe/signout", data={"csrf_token": token}), 403)
    assert client.post(f"/t/{tenant.slug}/probe/signout", data={"csrf_token": token}).status_code == 303


def test_the_json_api_needs_no_csrf_token(client: Any) -> None:
    answer = client.post("/v1/auth/signin", json={"email": "x@example.com", "password": "y" * 12},
                         headers={"X-Rekey-Tenant": "no-such-tenant"})
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "invalid_credentials"


def test_unexpected_failure_is_a_page_without_stack_trace_or_detail(probe_app: Any, tenant: Any) -> None:
    text = assert_page(probe_app.test_client().get(f"/t/{tenant.slug}/probe/boom"), 500)
    assert "Something went wrong" in text and "Nothing was changed" in text
    body = probe_app.test_client().get(f"/t/{tenant.slug}/probe/boom").get_data(as_text=True)
    assert "4242" not in body and "RuntimeError" not in body and "/srv/app.py" not in body


def test_refusal_on_a_page_is_a_page_with_its_message(probe_app: Any, tenant: Any) -> None:
    text = assert_page(probe_app.test_client().get(f"/t/{tenant.slug}/probe/refuse"), 422)
    assert "A rule said no to this." in text


def test_wrong_method_and_unknown_page_are_pages(probe_app: Any, tenant: Any) -> None:
    client = probe_app.test_client()
    assert_page(client.put(f"/t/{tenant.slug}/probe/form"), 405)
    assert "There is no page at this address" in assert_page(client.get(f"/t/{tenant.slug}/probe/none"), 404)


def test_api_errors_keep_the_json_body(probe_app: Any) -> None:
    client = probe_app.test_client()
    for answer in (client.get("/v1/admin/cases"), client.get("/v1/nothing"), client.get("/static/none.js"),
                   client.put("/v1/recovery/report/abc")):
        body = answer.get_json()
        assert answer.mimetype == "application/json" and set(body) == {"error"}, answer.get_data(as_text=True)


def test_oversized_form_is_a_413_page(probe_app: Any, tenant: Any) -> None:
    answer = probe_app.test_client().post(f"/t/{tenant.slug}/probe/signout", data={"x": "y" * (2 * 1024 * 1024)})
    assert "Too much data" in assert_page(answer, 413)


@pytest.mark.parametrize("path, kind", [("css/rekey.css", "text/css"), ("js/rekey.js", "text/javascript"),
                                        ("vendor/htmx-2.0.11.min.js", "text/javascript")])
def test_our_static_files_are_served_from_our_origin(client: Any, path: str, kind: str) -> None:
    answer = client.get(f"/static/{path}")
    assert answer.status_code == 200 and answer.mimetype == kind
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    answer.close()


def test_vendored_htmx_is_the_pinned_release() -> None:
    data = (STATIC / "vendor" / "htmx-2.0.11.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == HTMX_SHA256
    assert (STATIC / "vendor" / "htmx-2.0.11.LICENSE").read_text().startswith("Zero-Clause BSD")


def test_pages_load_nothing_from_another_origin() -> None:
    templates = Path(__file__).resolve().parents[3] / "app" / "templates"
    for page in templates.rglob("*.html"):
        text = page.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, page
