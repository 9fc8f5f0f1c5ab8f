"""The Protocols every adapter implements, and the normalised events they produce."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# Normalised inbound event types (DESIGN.md, external contract).
RECOVERY_REQUESTED = "recovery.requested"
RECOVERY_ATTESTED = "recovery.attested"
CALLBACK_RESULT = "verification.callback_result"
EVENT_TYPES = (RECOVERY_REQUESTED, RECOVERY_ATTESTED, CALLBACK_RESULT)


class IntegrationError(Exception):
    """Base of adapter failures."""


class SignatureError(IntegrationError):
    """The request is not provably from the integration (missing, forged, stale): answer 401."""


class PayloadError(IntegrationError):
    """Signed, but not a payload we can map to a normalised event: answer 422."""


class TransientDeliveryError(IntegrationError):
    """The peer failed in a way that may pass (network, 5xx, 429): retry, after `retry_after`."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(IntegrationError):
    """The peer refused in a way that will not pass (4xx other than 408/409/425/429)."""


@dataclass(frozen=True)
class InboundEvent:
    """One normalised event from a verified delivery.

    `data` by type:
    - recovery.requested: user_email, external_user_id, ticket_id, requester_email, subject, text
      (absent values are None)
    - recovery.attested: case_id, user_email, voucher_email, relation (manager|hr), reference
    - verification.callback_result: call_id, status (delivered|failed|answered|no_answer), provider_id
    """

    type: str
    data: dict[str, Any] = field(default_factory=dict)


class WebhookAdapter(Protocol):
    """Verifies one vendor's signature scheme and maps its payloads to `InboundEvent`s."""

    kind: str

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str, *, now: datetime) -> str:
        """Check the signature over the raw body before any parsing; return the delivery id
        (the vendor's, or a digest of the signed content when the vendor sends none)."""
        ...

    def parse(self, headers: Mapping[str, str], payload: Any) -> InboundEvent:
        """Map the already-verified, JSON-decoded payload to a normalised event."""
        ...


@dataclass(frozen=True)
class TicketRef:
    """Where a status comment goes: the integration's outbound settings and the ticket id."""

    base_url: str
    ticket_id: str
    credentials: Mapping[str, str]


class TicketingClient(Protocol):
    """Posts a status comment back on the originating ticket (never with a secret in it)."""

    kind: str

    def post_comment(self, ref: TicketRef, body: str, *, idempotency_key: str) -> str:
        """Post the comment; return the remote comment id. Raises Transient/PermanentDeliveryError."""
        ...


@dataclass(frozen=True)
class SentMessage:
    provider_id: str
    channel: str  # sms | voice | email


class MessageChannel(Protocol):
    """Delivers a message to a contact channel: a verification code, a notification."""

    kind: str

    def send_sms(self, to_e164: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Send a text message."""
        ...

    def place_call(self, to_e164: str, spoken_text: str, *, idempotency_key: str) -> SentMessage:
        """Place a voice call that reads `spoken_text` aloud (text-to-speech)."""
        ...

    def send_email(self, to: str, subject: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Send an email."""
        ...
