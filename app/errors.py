"""One error shape for the whole API: `{"error": {"code", "message", "details"}}`.

Each domain raises subclasses of `RekeyError` named for what went wrong; the status and code
live on the class, so the mapping to HTTP is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from flask import Flask, Response, current_app, g, has_request_context, jsonify
from marshmallow import Schema, fields
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = structlog.get_logger(__name__)


class RekeyError(Exception):
    """Base of every refusal the API reports."""

    status = 400
    code = "bad_request"
    # True when the refusal itself must be recorded (an audit row for a rejected attempt, a
    # failed sign-in counter): the request wrapper then commits instead of rolling back.
    keep_changes = False

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, **kw: Any):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        for key, value in kw.items():
            setattr(self, key, value)

    def to_body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ErrorDetail(Schema):
    code = fields.String(required=True, metadata={"description": "What went wrong, for programs"})
    message = fields.String(required=True, metadata={"description": "What went wrong, for people"})
    details = fields.Dict(required=True, metadata={"description": "Facts about it (fields, state)"})


class ErrorSchema(Schema):
    """The body of every error response, as the OpenAPI document describes it (`Error`)."""

    error = fields.Nested(ErrorDetail, required=True)


class ValidationFailed(RekeyError):
    status = 400
    code = "validation_error"


class MalformedRequest(RekeyError):
    status = 400
    code = "malformed_request"


class Unauthenticated(RekeyError):
    status = 401
    code = "unauthenticated"


class Forbidden(RekeyError):
    status = 403
    code = "forbidden"


class NotFound(RekeyError):
    status = 404
    code = "not_found"


class Conflict(RekeyError):
    status = 409
    code = "conflict"


class RuleRefused(RekeyError):
    status = 422
    code = "rule_refused"


class RateLimited(RekeyError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, **kw: Any):
        super().__init__(message, retry_after=retry_after, **kw)


_HTTP_CODES = {
    400: "malformed_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


_PAGES = "rekey.error_pages"


def register_page_errors(app: Flask, *, wants_page: Callable[[], bool],
                         render: Callable[[int, str, str], Response]) -> None:
    """Let the web side answer errors on its page routes with a page (`render(status, code,
    message)`) where `wants_page()` says so; every other route keeps the JSON error body."""
    app.extensions[_PAGES] = (wants_page, render)


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    """The error answer: the contract's JSON body, or on a page route an HTML error page."""
    pages = current_app.extensions.get(_PAGES) if has_request_context() else None
    if pages is not None and pages[0]():
        return pages[1](status, code, message)
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def _from_rekey_error(exc: RekeyError) -> Response:
    g.keep_changes = exc.keep_changes
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after))
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _from_http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    messages = data.get("messages")
    if status == 422 and messages is not None:
        # webargs reports schema failures as 422; the contract keeps 422 for rule refusals, and a
        # body that does not match the schema is a malformed request.
        return error_response(400, "validation_error", "The request body failed validation.",
                              {"fields": flatten_locations(messages)})
    if status == 400 and messages is not None:
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    if status == 413:
        return error_response(413, "payload_too_large", "The request body is too large.")
    code = _HTTP_CODES.get(status, "http_error")
    message = exc.description or exc.name
    response = error_response(status, code, message)
    allowed = getattr(exc, "valid_methods", None)
    if status == 405 and allowed:
        response.headers["Allow"] = ", ".join(allowed)
    return response


def flatten_locations(messages: Any) -> Any:
    """webargs nests messages by location ("json", "query"); callers only care about fields."""
    if isinstance(messages, dict) and set(messages) <= {"json", "query", "form", "headers", "view_args"}:
        merged: dict[str, Any] = {}
        for value in messages.values():
            if isinstance(value, dict):
                merged.update(value)
        return merged
    return messages


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(RekeyError, _from_rekey_error)
    app.register_error_handler(HTTPException, _from_http_exception)

    @app.errorhandler(OperationalError)
    def _database_unavailable(exc: OperationalError) -> Response:
        # A lost connection or a busy SQLite file: nothing was committed, and a retry may pass.
        log.warning("database_unavailable", error=str(exc.orig)[:200])
        response = error_response(503, "unavailable", "The database is busy or unreachable; retry.")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:  # pragma: no cover - exercised by fault tests
        log.exception("unhandled_error", error_type=type(exc).__name__)
        return error_response(500, "internal_error", "An internal error occurred; nothing was changed.")
