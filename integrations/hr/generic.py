"""Kind `hr`: an HR system vouching for a request (runbook step 1, DESIGN's hr_attestation).

Signed with Standard Webhooks v1, like kind `standard`. Body:

    {"type": "recovery.attested", "timestamp": "2024-05-01T09:30:00Z",
     "data": {"case_id": "<uuid>", "user_email": "...", "voucher_email": "...",
              "relation": "manager" | "hr", "reference": "HR-4711"}}

At least one of case_id / user_email. An HR integration may only attest: any other `type` is
refused, so a compromised HR secret cannot open cases or fake a call result. A valid signature
proves which system sent the call, not that the voucher is really the user's manager: the
recovery service checks that (R6).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from integrations.base import RECOVERY_ATTESTED, InboundEvent
from integrations.webhooks import event_from_envelope, verify_standard


class HRAdapter:
    """Standard Webhooks signature; `recovery.attested` only."""

    kind = "hr"

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str, *, now: datetime) -> str:
        """Check the Standard Webhooks signature and window; return `webhook-id`."""
        return verify_standard(headers, body, secret, now=now)

    def parse(self, headers: Mapping[str, str], payload: Any) -> InboundEvent:
        """Map an attestation; refuse every other event type."""
        return event_from_envelope(payload, (RECOVERY_ATTESTED,))
