"""`POST /v1/webhooks/<integration_id>`: the only door a ticket or HR system knocks on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from flask import g, jsonify, request

from app.errors import RuleRefused, Unauthenticated
from app.intake.schemas import IntakeOut, TwilioStatusIn, WebhookEnvelope
from app.intake.services import get_integration, receive_delivery
from app.recovery.evidence import record_provider_status
from app.web import Blueprint, app_settings, check_form_text, client_ip, error_responses
from integrations.base import PayloadError
from integrations.channels.twilio import parse_status_callback, validate_twilio_signature

blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks", description="Signed inbound webhooks")


_STANDARD_HEADERS = [
    {"in": "header", "name": name, "required": False, "schema": {"type": "string"},
     "description": f"Standard Webhooks {name} (kinds standard and hr); Zendesk and Jira send their own"}
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
]


def _answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": IntakeOut}}}


@blp.route("/<integration_id>", methods=["POST"])
@blp.doc(
    parameters=_STANDARD_HEADERS,
    requestBody={"required": True, "content": {"application/json": {"schema": WebhookEnvelope}}},
    responses={
        202: _answer("New request accepted: {case_id, status} (or {call_id, status})"),
        200: _answer("A repeat of a delivery: the first answer again"),
        **error_responses({
            400: "The signed body is not valid JSON (or repeats a key, holds NUL, nests too deep)",
            401: "Signature missing, invalid or stale",
            404: "No such integration, or no open case of its tenant matches",
            409: "The same delivery is being processed; retry later",
            413: "The body is too large",
            422: "Signed, but not an event this integration may send",
        })})
def receive(integration_id: str) -> Any:
    """Receive one signed delivery; the signature is checked over the raw body first."""
    integration = get_integration(integration_id)
    g.integration_kind = integration.kind  # the metrics label (never the integration's id)
    # Werkzeug's Headers is a case-insensitive mapping of str to str (its stubs say otherwise).
    headers = cast(Mapping[str, str], request.headers)
    answer = receive_delivery(integration, headers, request.get_data(cache=False),
                              request_id=g.request_id, ip=client_ip())
    response = jsonify(answer.body)
    response.status_code = answer.status_code
    return response


@blp.route("/twilio/status", methods=["POST"])
@blp.doc(
    parameters=[{"in": "header", "name": "X-Twilio-Signature", "required": False,
                 "schema": {"type": "string"}}],
    requestBody={"required": True,
                 "content": {"application/x-www-form-urlencoded": {"schema": TwilioStatusIn}}},
    responses={204: {"description": "Status recorded"},
               **error_responses({400: "A field holds NUL or an unpaired surrogate",
                                  401: "Bad X-Twilio-Signature",
                                  422: "Signed, but not a status callback"})})
def twilio_status() -> Any:
    """Twilio's status callback for a verification SMS or call, checked with its signature."""
    settings = app_settings()
    url = settings.public_url.rstrip("/") + request.full_path.rstrip("?")
    params = request.form.to_dict(flat=True)
    if not validate_twilio_signature(url, params, request.headers.get("X-Twilio-Signature", ""),
                                     settings.twilio_auth_token):
        raise Unauthenticated("The Twilio signature is missing or invalid.", code="invalid_signature")
    check_form_text(params)  # a NUL would reach the provider-id lookup (a 500 on PostgreSQL)
    try:
        provider_id, status = parse_status_callback(params)
    except PayloadError as exc:
        raise RuleRefused(str(exc), code="invalid_payload") from exc
    record_provider_status(provider_id, status)
    return "", 204
