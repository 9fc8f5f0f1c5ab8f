"""The HTTP edge shared by every blueprint: strict JSON, request ids, one commit per request,
and the credential checks that put an `Actor` on `g`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from copy import deepcopy
from functools import wraps
from typing import Any, TypeVar

import flask_smorest
import structlog
from apispec import BasePlugin
from flask import Flask, Response, current_app, g, request
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge

from app.actor import Actor
from app.errors import (
    ErrorSchema,
    Forbidden,
    MalformedRequest,
    RekeyError,
    Unauthenticated,
    ValidationFailed,
    error_response,
    flatten_locations,
)
from app.extensions import db

log = structlog.get_logger(__name__)

MAX_JSON_DEPTH = 32
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class UnsupportedMediaType(RekeyError):
    status = 415
    code = "unsupported_media_type"


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers reading one body differently ("last key wins" here, "first" elsewhere) is a
    # classic way to smuggle a value past a signature or a validator; refuse the ambiguity.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedRequest("The JSON body repeats a key.", details={"key": key[:64]})
        obj[key] = value
    return obj


def _check_values(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise MalformedRequest("The JSON body is nested too deeply.")
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_values(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_values(item, depth + 1)


def _check_text(text: str, where: str = "JSON body") -> None:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded: both would
    # otherwise surface as a 500 deep in a flush.
    if "\x00" in text:
        raise MalformedRequest(f"The {where} contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedRequest(f"The {where} contains an unpaired surrogate.") from exc


def check_form_text(params: dict[str, str]) -> None:
    """Refuse NUL and unpaired surrogates in form fields, as in JSON bodies and query strings."""
    for key, value in params.items():
        _check_text(key, "form body")
        _check_text(value, "form body")


def loads_strict(raw: bytes | str) -> Any:
    """Parse a JSON body, refusing duplicate keys, NUL, lone surrogates and deep nesting."""
    try:
        value = json.loads(raw, object_pairs_hook=_reject_duplicate_keys)
    except RecursionError as exc:
        raise MalformedRequest("The JSON body is nested too deeply.") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedRequest("The request body is not valid JSON.") from exc
    _check_values(value)
    return value


class StrictParser(FlaskParser):
    # A body or query that fails its schema is a malformed request (400), as the contract says
    # and the OpenAPI document shows; 422 is kept for rules a well-formed request breaks.
    DEFAULT_VALIDATION_STATUS = 400

    def handle_error(self, error: Any, req: Any, schema: Any, *, error_status_code: int | None,
                     error_headers: Any) -> Any:
        raise ValidationFailed("The request body failed validation.",
                               details={"fields": flatten_locations(error.messages)})

    def _raw_load_json(self, req: Any) -> Any:
        data = req.get_data(cache=True)
        if not data:
            return core.missing
        if not req.is_json:
            raise UnsupportedMediaType("Send the body as application/json.")
        return loads_strict(data)

    def load_querystring(self, req: Any, schema: Any) -> Any:
        # Query values reach SQL filters and audit details as text, like body values do.
        for key, values in req.args.lists():
            for text in (key, *values):
                _check_text(text, "query string")
        return super().load_querystring(req, schema)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()


BEARER_AUTH = "bearerAuth"
_ERROR_REF = {"$ref": "#/components/schemas/Error"}


def error_responses(described: dict[int, str]) -> dict[int, Any]:
    """OpenAPI responses for these error statuses, each with the contract's error body; for
    `@blp.doc(responses=...)`."""
    return {status: {"description": text, "content": {"application/json": {"schema": _ERROR_REF}}}
            for status, text in described.items()}


def _document(view: Any, *, security: bool, errors: dict[int, str]) -> None:
    # The credential decorators document themselves, so no authenticated route can be missing
    # its security requirement or its 401 in the OpenAPI document.
    doc = deepcopy(getattr(view, "_apidoc", {}))
    manual = doc.setdefault("manual_doc", {})
    if security:
        manual["security"] = [{BEARER_AUTH: []}]
    responses = manual.setdefault("responses", {})
    for status, response in error_responses(errors).items():
        responses.setdefault(status, response)  # the view's own wording wins
    view._apidoc = doc


class SchemaKeywordsPlugin(BasePlugin):  # type: ignore[misc]
    """Adds a marshmallow schema's `openapi_keywords` (JSON Schema a field cannot express, such
    as two fields that exclude each other) to its OpenAPI component."""

    def schema_helper(self, name: str, definition: Any, **kwargs: Any) -> dict[str, Any] | None:
        schema = kwargs.get("schema")
        keywords = getattr(schema, "openapi_keywords", None)
        return deepcopy(keywords) if keywords else None


def init_api(api: Any, app: Flask) -> None:
    """Bind flask-smorest to the app with the document the contract describes: our error body,
    the bearer scheme the credential decorators require, schema keywords fields cannot say."""
    api.ERROR_SCHEMA = ErrorSchema
    api.init_app(app, spec_kwargs={"extra_plugins": [SchemaKeywordsPlugin()]})
    api.spec.components.security_scheme(BEARER_AUTH, {
        "type": "http", "scheme": "bearer",
        "description": "An agent API token (admin routes) or a user session token (auth routes).",
    })


def client_ip() -> str | None:
    return request.remote_addr


def install_request_lifecycle(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        supplied = request.headers.get("X-Request-Id", "")
        g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        g.keep_changes = False
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        # Werkzeug enforces the body limit only when a view reads the body; a view that never
        # does (enrolment, the report links) would otherwise accept any size. Refuse it first.
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit is not None and (request.content_length or 0) > limit:
            raise RequestEntityTooLarge()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        response.headers.setdefault("Cache-Control", "no-store")
        if response.status_code < 400 or g.get("keep_changes"):
            try:
                db.session.commit()
            except IntegrityError:
                db.session.rollback()
                log.warning("commit_conflict", path=request.path)
                return error_response(409, "conflict",
                                      "A concurrent request changed this first; retry.")
            except OperationalError:
                db.session.rollback()
                log.exception("commit_failed", path=request.path)
                return error_response(503, "unavailable",
                                      "The database is unavailable; nothing was changed.")
            except SQLAlchemyError:
                db.session.rollback()
                log.exception("commit_failed", path=request.path)
                return error_response(500, "internal_error",
                                      "An internal error occurred; nothing was changed.")
        else:
            db.session.rollback()
        return response

    @app.teardown_request
    def _cleanup(exc: BaseException | None) -> None:
        structlog.contextvars.clear_contextvars()


F = TypeVar("F", bound=Callable[..., Any])


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("A bearer token is required.")
    return token.strip()


def agent_required(*roles: str) -> Callable[[F], F]:
    """Authenticate an agent token; the tenant and role come from it, never from the body."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from app.tenants.services import authenticate_agent

            agent = authenticate_agent(_bearer())
            if roles and agent.role not in roles:
                raise Forbidden("Your role may not do this.",
                                details={"required_roles": list(roles)})
            g.actor = Actor(
                type="agent", id=str(agent.id), tenant_id=agent.tenant_id, role=agent.role,
                ip=client_ip(), request_id=g.request_id,
            )
            return view(*args, **kwargs)

        _document(wrapper, security=True, errors={
            401: "The bearer token is missing or not valid.",
            403: "The agent's role, or the case's state (escalated), does not allow this."})
        return wrapper  # type: ignore[return-value]

    return decorate


def session_required(*, restricted_ok: bool) -> Callable[[F], F]:
    """Authenticate an end-user session token; `restricted_ok` admits enrol-only sessions."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from app.accounts.services import authenticate_session

            session = authenticate_session(_bearer(), restricted_ok=restricted_ok)
            g.user_session = session
            g.actor = Actor(
                type="user", id=str(session.user_id), tenant_id=session.tenant_id,
                ip=client_ip(), request_id=g.request_id,
            )
            return view(*args, **kwargs)

        errors = {401: "The session token is missing, expired or revoked."}
        if not restricted_ok:
            errors[403] = "A recovery session may only enrol a factor and change the password."
        _document(wrapper, security=True, errors=errors)
        return wrapper  # type: ignore[return-value]

    return decorate


def current_actor() -> Actor:
    return g.actor  # type: ignore[no-any-return]


def anonymous_actor(tenant_id: Any = None) -> Actor:
    return Actor(type="anonymous", id=None, tenant_id=tenant_id, ip=client_ip(),
                 request_id=g.get("request_id"))


def app_settings() -> Any:
    return current_app.extensions["rekey.settings"]
