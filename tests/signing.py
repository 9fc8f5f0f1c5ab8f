"""Signing requests the way each vendor does, for tests that play the sender."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any


def standard_headers(secret: str, body: bytes, *, msg_id: str | None = None,
                     timestamp: int | None = None) -> dict[str, str]:
    """Standard Webhooks v1 headers for `body` under a `whsec_` secret."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = str(timestamp if timestamp is not None else int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}",
            "content-type": "application/json"}


def zendesk_headers(secret: str, body: bytes, *, when: datetime | None = None,
                    invocation_id: str | None = None) -> dict[str, str]:
    ts = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sig = base64.b64encode(hmac.new(secret.encode(), ts.encode() + body, hashlib.sha256).digest()).decode()
    return {"X-Zendesk-Webhook-Signature": sig, "X-Zendesk-Webhook-Signature-Timestamp": ts,
            "X-Zendesk-Webhook-Invocation-Id": invocation_id or uuid.uuid4().hex,
            "content-type": "application/json"}


def jira_headers(secret: str, body: bytes, *, identifier: str | None = None) -> dict[str, str]:
    sig = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature": f"sha256={sig}",
            "X-Atlassian-Webhook-Identifier": identifier or uuid.uuid4().hex,
            "content-type": "application/json"}


def body_of(payload: Any) -> bytes:
    return json.dumps(payload).encode()
