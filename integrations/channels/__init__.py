"""Message channels (dev, twilio, smtp) behind `MessageChannel`, and the masking every one of
them uses in logs: a message body carries codes, so logs name provider ids and masked
destinations only."""

from __future__ import annotations

import hashlib


def mask_phone(e164: str) -> str:
    """'+14155550123' -> '+1*******23': enough to tell numbers apart, not to dial one."""
    if len(e164) <= 5:
        return "*" * len(e164)
    return e164[:2] + "*" * (len(e164) - 4) + e164[-2:]


def mask_email(address: str) -> str:
    """'jane.doe@example.com' -> 'j***@example.com'."""
    local, at, domain = address.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def key_digest(idempotency_key: str, length: int = 32) -> str:
    """A stable, non-reversible token derived from an idempotency key (ids, Message-IDs)."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:length]
