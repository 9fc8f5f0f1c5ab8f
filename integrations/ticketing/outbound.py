"""Status comments back on the originating ticket: Zendesk, Jira, and a signed Standard
Webhooks callback for any other sender.

Each comment ends with a `[rekey:<idempotency key>]` marker. Remote comment APIs are not
idempotent, so a retry after an ambiguous timeout may post twice; the marker lets an agent
(or a later search) see that two comments are the same status, and which case step sent it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from standardwebhooks.webhooks import Webhook

from integrations.base import PermanentDeliveryError, TicketRef
from integrations.http import OutboundPolicy, send

log = logging.getLogger(__name__)

# Safe inside the marker, a header and a Standard Webhooks id (which must not contain '.').
_KEY = re.compile(r"^[A-Za-z0-9_:\-]{1,200}$")
_ZENDESK_ID = re.compile(r"^[0-9]{1,20}$")
_JIRA_KEY = re.compile(r"^([A-Z][A-Z0-9_]*-[0-9]+|[0-9]+)$")
STATUS_EVENT = "recovery.status"


def comment_marker(idempotency_key: str) -> str:
    """The trailing marker that names the idempotency key in a comment."""
    if not _KEY.match(idempotency_key):
        raise ValueError("idempotency key must be 1-200 of [A-Za-z0-9_:-]")
    return f"[rekey:{idempotency_key}]"


def with_marker(body: str, idempotency_key: str) -> str:
    """The comment text with its marker appended."""
    return f"{body.rstrip()}\n\n{comment_marker(idempotency_key)}"


def has_marker(text: str, idempotency_key: str) -> bool:
    """True when `text` is a comment Rekey posted for this key."""
    return text.rstrip().endswith(comment_marker(idempotency_key))


@dataclass(frozen=True)
class TicketingClientConfig:
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy.from_env)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC), compare=False)


def _credential(ref: TicketRef, name: str) -> str:
    value = ref.credentials.get(name)
    if not value:
        raise PermanentDeliveryError(f"the integration has no '{name}' credential")
    return value


class ZendeskClient:
    """Adds a private comment through the Tickets API (Zendesk has no comment-create call)."""

    kind = "zendesk"

    def __init__(self, config: TicketingClientConfig | None = None):
        self.config = config or TicketingClientConfig()

    def post_comment(self, ref: TicketRef, body: str, *, idempotency_key: str) -> str:
        """PUT the ticket with a private comment; return the comment (or audit) id."""
        if not _ZENDESK_ID.match(ref.ticket_id):
            raise PermanentDeliveryError("a Zendesk ticket id is numeric")
        auth = (f"{_credential(ref, 'email')}/token", _credential(ref, "api_token"))
        payload = {"ticket": {"comment": {"body": with_marker(body, idempotency_key),
                                          "public": False}}}
        url = f"{ref.base_url.rstrip('/')}/api/v2/tickets/{ref.ticket_id}.json"
        response = send("PUT", url, policy=self.config.outbound, auth=auth,
                        data=json.dumps(payload).encode(), headers=_JSON)
        remote_id = _zendesk_comment_id(response.json()) or f"{ref.ticket_id}:{idempotency_key}"
        log.info("zendesk comment posted ticket=%s id=%s", ref.ticket_id, remote_id)
        return remote_id


def _zendesk_comment_id(answer: Any) -> str | None:
    audit = answer.get("audit") if isinstance(answer, dict) else None
    if not isinstance(audit, dict):
        return None
    for event in audit.get("events") or []:
        if isinstance(event, dict) and event.get("type") == "Comment" and event.get("id"):
            return str(event["id"])
    return str(audit["id"]) if audit.get("id") else None


class JiraClient:
    """Adds a comment through the Jira Cloud REST API v3 (Atlassian Document Format)."""

    kind = "jira"

    def __init__(self, config: TicketingClientConfig | None = None):
        self.config = config or TicketingClientConfig()

    def post_comment(self, ref: TicketRef, body: str, *, idempotency_key: str) -> str:
        """POST an ADF comment on the issue; return the comment id."""
        if not _JIRA_KEY.match(ref.ticket_id):
            raise PermanentDeliveryError("a Jira issue key looks like ABC-123")
        auth = (_credential(ref, "email"), _credential(ref, "api_token"))
        paragraphs = [
            {"type": "paragraph", "content": [{"type": "text", "text": line}]}
            for line in with_marker(body, idempotency_key).split("\n\n") if line
        ]
        payload = {
            "body": {"type": "doc", "version": 1, "content": paragraphs},
            # In Jira Service Management this keeps the comment internal (agents only); plain
            # Jira ignores the property.
            "properties": [{"key": "sd.public.comment", "value": {"internal": True}}],
        }
        url = f"{ref.base_url.rstrip('/')}/rest/api/3/issue/{quote(ref.ticket_id)}/comment"
        response = send("POST", url, policy=self.config.outbound, auth=auth,
                        data=json.dumps(payload).encode(), headers=_JSON)
        answer = response.json()
        remote_id = answer.get("id") if isinstance(answer, dict) else None
        remote_id = str(remote_id) if remote_id else f"{ref.ticket_id}:{idempotency_key}"
        log.info("jira comment posted issue=%s id=%s", ref.ticket_id, remote_id)
        return remote_id


class StandardWebhookClient:
    """POSTs a signed `recovery.status` event to the integration's callback URL."""

    kind = "standard"

    def __init__(self, config: TicketingClientConfig | None = None):
        self.config = config or TicketingClientConfig()

    def post_comment(self, ref: TicketRef, body: str, *, idempotency_key: str) -> str:
        """Deliver the status; return the receiver's id if it gives one, else the webhook-id."""
        message = with_marker(body, idempotency_key)  # validates the key, which is the id
        now = self.config.clock().astimezone(UTC)
        payload = json.dumps(
            {"type": STATUS_EVENT, "timestamp": now.isoformat().replace("+00:00", "Z"),
             "data": {"ticket_id": ref.ticket_id, "message": message}},
            separators=(",", ":"),
        )
        headers = signed_headers(_credential(ref, "secret"), idempotency_key, now, payload)
        response = send("POST", ref.base_url, policy=self.config.outbound,
                        data=payload.encode(), headers={**_JSON, **headers})
        answer = response.json()
        remote_id = answer.get("id") if isinstance(answer, dict) else None
        log.info("status callback delivered webhook_id=%s", idempotency_key)
        return str(remote_id) if remote_id else idempotency_key


def signed_headers(secret: str, msg_id: str, when: datetime, payload: str) -> Mapping[str, str]:
    """Standard Webhooks headers: id, attempt timestamp and `v1,` HMAC-SHA256 signature."""
    when = when.astimezone(UTC)  # the library replaces, rather than converts, the zone
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, when, payload),
    }


_JSON = {"Content-Type": "application/json", "Accept": "application/json"}
