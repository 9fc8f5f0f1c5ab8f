"""Kind `jira`: Jira Cloud / Jira Service Management admin webhooks registered with a secret.

Signature: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret as UTF-8, raw body)>` (WebSub
style, https://developer.atlassian.com/cloud/jira/platform/webhooks/). Jira signs no
timestamp, so there is no replay window: `now` is accepted and unused. Delivery id:
`X-Atlassian-Webhook-Identifier`, unchanged across Jira's retries; without it, the SHA-256 of
the body. That header is not signed, so someone holding a captured request could replay it
under a fresh identifier; what stops a second case is the recovery service's "one open case
per user" rule, not this id.

Payload: `{"timestamp", "webhookEvent": "jira:issue_created", "issue": {"id", "key",
"fields": {"summary", "description", "reporter": {"emailAddress", "accountId"}}}}` ->
`recovery.requested` with ticket_id = the issue key, user and requester = the reporter's
email. `description` is a string (REST v2) or an Atlassian Document Format tree (v3), reduced
to plain text. `accountId` is Atlassian's id, not the platform's user id, so it is not mapped
to external_user_id; a reporter whose email is hidden by profile visibility is refused.
"""

from __future__ import annotations

import hashlib
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
    delivery_id_from,
    lower_headers,
    optional_object,
    read_email,
    read_id,
    read_text,
    recovery_requested,
    require_header,
    utf8_key,
)

SIGNATURE = "x-hub-signature"
IDENTIFIER = "x-atlassian-webhook-identifier"
_HUB_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_ISSUE_CREATED = "jira:issue_created"
# ADF nodes that end a line of text; the rest are inline.
_ADF_BLOCKS = frozenset({"paragraph", "heading", "blockquote", "codeBlock", "listItem",
                         "tableRow", "panel", "rule", "mediaSingle", "decisionItem", "taskItem"})
_ADF_MAX_DEPTH = 64
_ADF_MAX_NODES = 20_000


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature` value for `body`: `sha256=<hex>`."""
    return "sha256=" + hmac.new(utf8_key(secret), body, hashlib.sha256).hexdigest()


class JiraAdapter:
    """Jira's hub signature; `jira:issue_created` only."""

    kind = "jira"

    def verify(self, headers: Mapping[str, str], body: bytes, secret: str, *, now: datetime) -> str:
        """Check `X-Hub-Signature` over the raw body; return the delivery id (no window)."""
        h = lower_headers(headers)
        match = _HUB_SIGNATURE.fullmatch(require_header(h, SIGNATURE))
        if match is None:
            raise SignatureError(f"malformed {SIGNATURE} header (expected sha256=<hex>)")
        expected = hmac.new(utf8_key(secret), body, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, bytes.fromhex(match.group(1))):
            raise SignatureError("no matching signature")
        identifier = h.get(IDENTIFIER)
        return delivery_id_from(identifier, IDENTIFIER) if identifier else body_digest(body)

    def parse(self, headers: Mapping[str, str], payload: Any) -> InboundEvent:
        """Map `jira:issue_created` to `recovery.requested`."""
        body = as_object(payload, "payload")
        if body.get("webhookEvent") != _ISSUE_CREATED:
            raise PayloadError(f"payload.webhookEvent must be {_ISSUE_CREATED}")
        issue = as_object(body.get("issue"), "issue")
        fields = as_object(issue.get("fields"), "issue.fields")
        reporter = optional_object(fields, "reporter", "issue.fields")
        email = read_email(reporter, "emailAddress", "issue.fields.reporter")
        if email is None:
            raise PayloadError("issue.fields.reporter.emailAddress is missing (no reporter, or "
                               "hidden by the reporter's profile visibility)")
        return recovery_requested(
            user_email=email,
            external_user_id=None,
            ticket_id=read_id(issue, "key", "issue", required=True),
            requester_email=email,
            subject=read_text(fields, "summary", "issue.fields", max_len=MAX_SUBJECT,
                              truncate=True),
            text=_description(fields.get("description")),
        )


def _description(value: Any) -> str | None:
    if isinstance(value, dict):
        value = adf_to_text(value)
    return read_text({"description": value}, "description", "issue.fields", max_len=MAX_TEXT,
                     truncate=True)


def adf_to_text(doc: Mapping[str, Any]) -> str:
    """Plain text of an Atlassian Document Format tree: text nodes, one line per block."""
    if doc.get("type") != "doc":
        raise PayloadError("issue.fields.description is neither a string nor an ADF document")
    parts: list[str] = []
    end_of_block = object()
    stack: list[tuple[Any, int]] = [(doc, 0)]
    seen = 0
    # Iterative, with depth and size limits: a hostile tree cannot exhaust the stack or CPU.
    while stack:
        node, depth = stack.pop()
        if node is end_of_block:
            parts.append("\n")
            continue
        seen += 1
        if depth > _ADF_MAX_DEPTH or seen > _ADF_MAX_NODES:
            raise PayloadError("issue.fields.description is too deeply nested or too large")
        if not isinstance(node, dict):
            raise PayloadError("issue.fields.description has a node that is not an object")
        parts.append(_inline_text(node))
        content = node.get("content", [])
        if not isinstance(content, list):
            raise PayloadError("issue.fields.description has a content that is not a list")
        if node.get("type") in _ADF_BLOCKS:
            stack.append((end_of_block, depth))
        stack.extend((child, depth + 1) for child in reversed(content))
    return re.sub(r"\n{3,}", "\n\n", "".join(parts)).strip()


def _inline_text(node: Mapping[str, Any]) -> str:
    kind = node.get("type")
    attrs = node.get("attrs")
    attrs = attrs if isinstance(attrs, dict) else {}
    if kind == "text":
        text = node.get("text")
        return text if isinstance(text, str) else ""
    if kind == "hardBreak":
        return "\n"
    if kind in ("mention", "emoji", "status", "date", "inlineCard"):
        for key in ("text", "shortName", "url"):
            value = attrs.get(key)
            if isinstance(value, str):
                return value
    return ""
