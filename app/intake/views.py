"""`POST /v1/webhooks/<integration_id>`: the only door a ticket or HR system knocks on."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from app.errors import RuleRefused, Unauthenticated
from app.intake.services import get_integration, receive_delivery
from app.recovery.evidence import record_provider_status
from app.web import Blueprint, app_settings
from integrations.base import PayloadError
from integrations.channels.twilio import parse_status_callback, validate_twilio_signature

blp = Blueprint("webhooks", __name__, url_prefix="/v1/webhooks", description="Signed inbound webhooks")


@blp.route("/<integration_id>", methods=["POST"])
@blp.doc(responses={202: {"description": "New request accepted: {case_id, status}"},
                    200: {"description": "A repeat of a delivery: the first answer again"},
                    401: {"description": "Signature missing, invalid or stale"}})
def receive(integration_id: str) -> Any:
    """Receive one signed delivery; the signature is checked over the raw body first."""
    integration = get_integration(integration_id)
    answer = receive_delivery(integration, request.headers, request.get_data(cache=False))
    response = jsonify(answer.body)
    response.status_code = answer.status_code
    return response


@blp.route("/twilio/status", methods=["POST"])
@blp.doc(responses={204: {"description": "Status recorded"}, 401: {"description": "Bad X-Twilio-Signature"}})
def twilio_status() -> Any:
    """Twilio's status callback for a verification SMS or call, checked with its signature."""
    settings = app_settings()
    url = settings.public_url.rstrip("/") + request.full_path.rstrip("?")
    params = request.form.to_dict(flat=True)
    if not validate_twilio_signature(url, params, request.headers.get("X-Twilio-Signature", ""),
                                     settings.twilio_auth_token):
        raise Unauthenticated("The Twilio signature is missing or invalid.", code="invalid_signature")
    try:
        provider_id, status = parse_status_callback(params)
    except PayloadError as exc:
        raise RuleRefused(str(exc), code="invalid_payload") from exc
    record_provider_status(provider_id, status)
    return "", 204
