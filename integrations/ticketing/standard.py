"""Kind `standard`: any sender of Standard Webhooks v1 posting our own event envelope.

Headers `webhook-id`, `webhook-timestamp`, `webhook-signature` (see `integrations.webhooks`).
Body, Standard Webhooks' recommended `{type, timestamp, data}` shape:

    {"type": "recovery.requested", "timestamp": "2024-05-01T09:30:00Z",
     "data": {"user_email": "...", "external_user_id": "...", "ticket_id": "...",
              "requester_email": "...", "subject": "...", "text": "..."}}

`type` is one of `recovery.requested`, `recovery.attested` (data: case_id, user_email,
voucher_email, relation, reference) or `verification.callback_result` (data: call_id, status,
provider_id). Unknown keys inside `data` are refused, so a misspelt field fails loudly.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from integrations.base import EVENT_TYPES, InboundEvent
from integrations.webhooks import event_from_envelope, verify_standard


class StandardAdapter:
    """Standard Webhooks signature, our envelope, all three normalised event types."""

    kind = "standard"

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str, *, now: datetime) -> str:
        """Check the Standard Webhooks signature and window; return `webhook-id`."""
        return verify_standard(headers, body, secret, now=now)

    def parse(self, headers: Mapping[str, str], payload: Any) -> InboundEvent:
        """Map our envelope to its normalised event."""
        return event_from_envelope(payload, EVENT_TYPES)
