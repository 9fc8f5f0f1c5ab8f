"""What every form page of the end-user side shares: a refusal shown on the form it came from
(instead of a bare error page), the JSON answers of the two WebAuthn helper routes, and the
short-lived cookie that carries a pending sign-in between the password and the second factor."""

from __future__ import annotations

import json
import re
from typing import Any, cast

from flask import Response, g, jsonify, request
from werkzeug.wrappers import Response as AnyResponse

from app.errors import RekeyError, ValidationFailed
from app.webui import render_page
from app.webui.cookies import clear_cookie, read_cookie, set_cookie

PENDING_COOKIE = "rekey_pending"
_PENDING = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_CREDENTIAL = 64 * 1024


def refused_form(exc: RekeyError, template: str, **context: Any) -> Response:
    """Render the form again with the refusal's message and status. The refusal's own
    `keep_changes` still decides whether this request commits (a failed attempt is recorded)."""
    g.keep_changes = exc.keep_changes
    response = render_page(template, status=exc.status, error=exc.message, **context)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after))
    return response


def json_answer(body: dict[str, Any]) -> Response:
    return jsonify(body)


def json_refusal(exc: RekeyError) -> Response:
    """A refusal for our own script, in the contract's error shape."""
    g.keep_changes = exc.keep_changes
    response = jsonify({"error": {"code": exc.code, "message": exc.message, "details": exc.details}})
    response.status_code = exc.status
    return response


def form_text(name: str, limit: int = 1024) -> str:
    """A text field of the posted form, trimmed; too long is a 400, missing is empty."""
    value = request.form.get(name, "")
    if len(value) > limit:
        raise ValidationFailed(f"The field {name} is too long.")
    return value.strip()


def posted_credential() -> dict[str, Any]:
    """The WebAuthn answer our script put in the form (`PublicKeyCredential.toJSON()`)."""
    raw = request.form.get("credential", "")
    if not raw or len(raw) > MAX_CREDENTIAL:
        raise ValidationFailed("No security key answer was sent; use the button on the page (it needs JavaScript).")
    try:
        credential = json.loads(raw)
    except ValueError as exc:
        raise ValidationFailed("The security key answer could not be read.") from exc
    if not isinstance(credential, dict):
        raise ValidationFailed("The security key answer could not be read.")
    return credential


def pending_token() -> str | None:
    """The pending sign-in this browser is finishing, if its cookie looks like one."""
    token = read_cookie(PENDING_COOKIE)
    return token if token and _PENDING.fullmatch(token) else None


def keep_pending(response: AnyResponse, token: str) -> AnyResponse:
    """The response carries the pending sign-in's token in its own HttpOnly cookie."""
    set_cookie(cast(Response, response), PENDING_COOKIE, token)
    return response


def drop_pending(response: AnyResponse) -> AnyResponse:
    """The pending sign-in is finished or gone: forget its cookie."""
    if read_cookie(PENDING_COOKIE) is not None:
        clear_cookie(cast(Response, response), PENDING_COOKIE)
    return response
