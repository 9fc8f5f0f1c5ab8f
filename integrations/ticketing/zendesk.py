"""Kind `zendesk`: Zendesk webhooks connected to a trigger whose JSON body we define.

Signature (https://developer.zendesk.com/documentation/webhooks/verifying/):
`X-Zendesk-Webhook-Signature` = base64(HMAC-SHA256(key, TIMESTAMP + BODY)), no separator, the
key being the signing secret's UTF-8 bytes (never base64-decoded), and
`X-Zendesk-Webhook-Signature-Timestamp` an ISO 8601 time held to our 5-minute window. An older
Zendesk page gave BODY + TIMESTAMP; that order is refused.

Delivery id: `X-Zendesk-Webhook-Invocation-Id` (one invocation keeps its id across retry
attempts). Without it, the SHA-256 of the body: the body is rendered once per invocation and
is identical on every attempt, while the signature timestamp is per attempt, so a digest that
included the timestamp would make each retry look new. A replay of the same signed request is
caught by the same digest inside the window and by the window outside it.

Recommended trigger (condition "Ticket is Created" plus your "cannot sign in" form or tag;
action "Notify by webhook", JSON body):

    {"ticket": {"id": "{{ticket.id}}", "subject": "{{ticket.title}}",
                "description": "{{ticket.description}}",
                "requester": {"email": "{{ticket.requester.email}}",
                              "external_id": "{{ticket.requester.external_id}}"}}}

The requester is taken to be the locked-out user. When an agent files for someone else, add
`"user": {"email": "{{ticket.ticket_field_<id>}}"}` (a custom field naming the account): the
user then comes from `user` and the requester stays the requester. Placeholders that render
empty count as absent.

Event-subscription webhooks (`{"type": "zen:event-type:ticket.created", "detail": {...}}`)
are recognised but refused: their `detail` carries only Zendesk's numeric `requester_id`,
which is not the platform's user id (mapping it to external_user_id could name the wrong
account), and no email. Such a webhook must be connected to the trigger above instead.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from integrations.base import InboundEvent, PayloadError, SignatureError
from integrations.webhooks import (
    MAX_SUBJECT,
    MAX_TEXT,
    as_object,
    body_digest,
    check_window,
    delivery_id_from,
    hmac_sha256,
    lower_headers,
    optional_object,
    read_email,
    read_id,
    read_text,
    recovery_requested,
    require_header,
    utf8_key,
)

SIGNATURE = "x-zendesk-webhook-signature"
TIMESTAMP = "x-zendesk-webhook-signature-timestamp"
INVOCATION_ID = "x-zendesk-webhook-invocation-id"
_ISO_8601 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)", re.ASCII)
_TICKET_CREATED = "zen:event-type:ticket.created"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Zendesk's signature header value for `body` sent at `timestamp` (ISO 8601)."""
    digest = hmac_sha256(utf8_key(secret), timestamp.encode("ascii") + body)
    return base64.b64encode(digest).decode("ascii")


class ZendeskAdapter:
    """Zendesk's signature; trigger bodies as documented above."""

    kind = "zendesk"

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str, *, now: datetime) -> str:
        """Check the signature over timestamp + raw body and the window; return the delivery id."""
        h = lower_headers(headers)
        signature = require_header(h, SIGNATURE)
        timestamp = require_header(h, TIMESTAMP)
        try:
            if not _ISO_8601.fullmatch(timestamp):
                raise ValueError
            sent_at = datetime.fromisoformat(timestamp)
        except ValueError:  # also a well-shaped but impossible date (month 13)
            raise SignatureError(f"malformed {TIMESTAMP} header") from None
        check_window(sent_at.timestamp(), now)
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError(f"malformed {SIGNATURE} header") from None
        expected = hmac_sha256(utf8_key(secret), timestamp.encode("ascii") + body)
        if not hmac.compare_digest(expected, given):
            raise SignatureError("no matching signature")
        invocation = h.get(INVOCATION_ID)
        return delivery_id_from(invocation, INVOCATION_ID) if invocation else body_digest(body)

    def parse(self, headers: Mapping[str, str], payload: Any) -> InboundEvent:
        """Map a trigger body to `recovery.requested`; refuse event-subscription envelopes."""
        body = as_object(payload, "payload")
        if "ticket" in body:
            return _from_trigger(as_object(body["ticket"], "ticket"))
        event_type = body.get("type")
        if isinstance(event_type, str) and event_type.startswith("zen:event-type:"):
            _refuse_event(body, event_type)
        raise PayloadError("not a Zendesk trigger body: expected {\"ticket\": {...}} as "
                           "documented in integrations/ticketing/zendesk.py")


def _from_trigger(ticket: Mapping[str, Any]) -> InboundEvent:
    requester = optional_object(ticket, "requester", "ticket")
    requester_email = read_email(requester, "email", "ticket.requester")
    if "user" in ticket and ticket["user"] is not None:
        user = as_object(ticket["user"], "ticket.user")
        user_email = read_email(user, "email", "ticket.user")
        external_user_id = read_id(user, "external_id", "ticket.user")
    else:
        user_email = requester_email
        external_user_id = read_id(requester, "external_id", "ticket.requester")
    return recovery_requested(
        user_email=user_email,
        external_user_id=external_user_id,
        ticket_id=read_id(ticket, "id", "ticket", required=True),
        requester_email=requester_email,
        subject=read_text(ticket, "subject", "ticket", max_len=MAX_SUBJECT, truncate=True),
        text=read_text(ticket, "description", "ticket", max_len=MAX_TEXT, truncate=True),
    )


def _refuse_event(envelope: Mapping[str, Any], event_type: str) -> None:
    if event_type != _TICKET_CREATED:
        raise PayloadError(f"Zendesk event type is not supported (only {_TICKET_CREATED})")
    detail = as_object(envelope.get("detail"), "detail")
    ticket_id = read_id(detail, "id", "detail", required=True)
    raise PayloadError(
        f"Zendesk {_TICKET_CREATED} for ticket {ticket_id} names no requester email; connect "
        "the webhook to a trigger with the JSON body documented in integrations/ticketing/"
        "zendesk.py")
