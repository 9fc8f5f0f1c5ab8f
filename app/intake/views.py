"""`POST /v1/webhooks/<integration_id>`: the only door a ticket or HR system knocks on."""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from app.intake.services import get_integration, receive_delivery
from app.web import Blueprint

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
