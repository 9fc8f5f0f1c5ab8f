"""Shared mechanics of inbound webhooks: headers, HMAC, the replay window, delivery ids, secret
rotation, Standard Webhooks v1 signing, strict payload readers and our own event envelope.

Standard Webhooks lives here rather than in a vendor module because it is *our* scheme: the
`standard` and `hr` kinds both verify with it, and outbound callbacks may sign with it too.

Secret rotation (R42): every adapter's `verify` takes exactly one secret, and the intake calls
it once per active secret (current, then the previous one during its overlap), accepting the
first that returns. One secret per call because Zendesk and Jira secrets are arbitrary strings,
so no delimiter could safely pack several into the Protocol's `secret: str`. Missing, malformed
and stale headers fail the same way whatever the secret. Standard Webhooks senders may also
rotate on their side by sending several `v1,` signatures in one header: any match is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from integrations.base import (
    CALLBACK_RESULT,
    RECOVERY_ATTESTED,
    RECOVERY_REQUESTED,
    InboundEvent,
    PayloadError,
    SignatureError,
)

TOLERANCE = timedelta(minutes=5)  # both ways: a stale replay and a forged future timestamp
MAX_ID = 200  # webhook_deliveries.delivery_id and recovery_cases.ticket_id are String(200)
MAX_EMAIL = 320
MAX_SUBJECT = 500
MAX_TEXT = 20_000
_PRINTABLE_ID = re.compile(r"[\x21-\x7e]{1,200}")  # one printable ASCII token: safe as a DB key
_EMAIL_SHAPE = re.compile(r"[^@\s]+@[^@\s]+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # keeps \t \n \r in free text


# --- request mechanics -----------------------------------------------------------------------

def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers keyed by lower-case name, from a werkzeug `EnvironHeaders` or a plain dict."""
    return {str(k).lower(): str(v).strip() for k, v in headers.items()}


def require_header(headers: Mapping[str, str], name: str) -> str:
    """The named header of already lower-cased headers; SignatureError when absent or empty."""
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 digest of `message` under `key`."""
    return hmac.new(key, message, hashlib.sha256).digest()


def utf8_key(secret: str) -> bytes:
    """A secret used as its UTF-8 bytes (Zendesk, Jira); an empty one is a misconfiguration."""
    if not secret:
        raise ValueError("empty webhook signing secret")
    return secret.encode("utf-8")


def check_window(sent_at: float, now: datetime) -> None:
    """Refuse a signed timestamp (Unix seconds) more than TOLERANCE away from `now`."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if abs(sent_at - now.timestamp()) > TOLERANCE.total_seconds():
        raise SignatureError("timestamp outside the 5-minute tolerance")


def delivery_id_from(value: str, header: str) -> str:
    """An unsigned vendor id made safe as a dedup key (one printable token, at most 200 chars)."""
    if not _PRINTABLE_ID.fullmatch(value):
        raise SignatureError(f"malformed {header} header")
    return value


def body_digest(body: bytes) -> str:
    """Delivery id for a vendor that sends none: the digest of the signed body."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


# --- Standard Webhooks v1 (kinds `standard` and `hr`) ----------------------------------------

_SW_ID = re.compile(r"[\x21-\x2d\x2f-\x7e]{1,200}")  # printable, no "." (the content separator)
_SW_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def standard_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret: base64 after an optional `whsec_` prefix."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook signing secret is not base64 (whsec_...)") from None
    if not key:
        raise ValueError("empty webhook signing secret")
    return key


def sign_standard(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of a Standard Webhooks message (for senders and tests)."""
    digest = hmac_sha256(standard_key(secret), f"{msg_id}.{timestamp}.".encode() + body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_standard(headers: Mapping[str, str], body: bytes, secret: str, *, now: datetime) -> str:
    """Check `webhook-signature` over `{id}.{timestamp}.{raw body}`; return `webhook-id`."""
    h = lower_headers(headers)
    msg_id = require_header(h, "webhook-id")
    timestamp = require_header(h, "webhook-timestamp")
    signatures = require_header(h, "webhook-signature")
    if not _SW_ID.fullmatch(msg_id):
        raise SignatureError("malformed webhook-id header")
    if not _SW_TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("malformed webhook-timestamp header")
    check_window(int(timestamp), now)
    expected = hmac_sha256(standard_key(secret), f"{msg_id}.{timestamp}.".encode() + body)
    matched = False
    for entry in signatures.split(" "):
        version, sep, value = entry.partition(",")
        if version != "v1" or not sep:
            continue  # other schemes (v1a, v2) and malformed entries never match
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        # No early exit: every entry costs the same whichever one matches.
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("no matching signature")
    return msg_id


# --- strict payload readers (messages name the field, never echo its value) ------------------

def as_object(value: Any, where: str) -> Mapping[str, Any]:
    """`value` if it is a JSON object, else PayloadError."""
    if not isinstance(value, dict):
        raise PayloadError(f"{where} must be an object")
    return value


def optional_object(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    """The nested object at `key`, or an empty one when absent or null."""
    value = obj.get(key)
    return {} if value is None else as_object(value, f"{where}.{key}")


def reject_unknown(obj: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """Refuse keys outside our schema, so a misspelt field is an error and not a silent None."""
    unknown = sorted(str(k)[:40] for k in obj if k not in allowed)
    if unknown:
        raise PayloadError(f"{where} has unknown keys: {', '.join(unknown[:5])}")


def read_text(obj: Mapping[str, Any], key: str, where: str, *, max_len: int,
              required: bool = False, truncate: bool = False) -> str | None:
    """A string field, trimmed; empty counts as absent (an unset Zendesk placeholder renders
    as ""). Free text is truncated to `max_len`; anything else longer is refused."""
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise PayloadError(f"{where}.{key} must be a string")
    value = (value or "").strip()
    if truncate:
        value = _CONTROL.sub("", value)[:max_len].strip()
    elif _CONTROL.search(value) or "\n" in value or "\r" in value or "\t" in value:
        raise PayloadError(f"{where}.{key} must be a single line")
    elif len(value) > max_len:
        raise PayloadError(f"{where}.{key} is longer than {max_len} characters")
    if not value:
        if required:
            raise PayloadError(f"{where}.{key} is required")
        return None
    return value


def read_id(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    """An identifier: a string or an integer (Zendesk renders ids either way), as a string."""
    value = obj.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        obj = {key: str(value)}
    elif value is not None and not isinstance(value, str):
        raise PayloadError(f"{where}.{key} must be a string or an integer")
    return read_text(obj, key, where, max_len=MAX_ID, required=required)


def read_email(obj: Mapping[str, Any], key: str, where: str, *,
               required: bool = False) -> str | None:
    """An email address, shape-checked only: the accounts service normalises it."""
    value = read_text(obj, key, where, max_len=MAX_EMAIL, required=required)
    if value is not None and not _EMAIL_SHAPE.fullmatch(value):
        raise PayloadError(f"{where}.{key} is not an email address")
    return value


def read_choice(obj: Mapping[str, Any], key: str, where: str, choices: Sequence[str]) -> str:
    """A required field restricted to `choices`."""
    value = read_text(obj, key, where, max_len=64)
    if value is None or value not in choices:
        raise PayloadError(f"{where}.{key} must be one of: {', '.join(choices)}")
    return value


# --- normalised events ----------------------------------------------------------------------

def recovery_requested(*, user_email: str | None, external_user_id: str | None,
                       ticket_id: str | None, requester_email: str | None,
                       subject: str | None, text: str | None) -> InboundEvent:
    """A `recovery.requested` event; it must name the user by email or external id."""
    if user_email is None and external_user_id is None:
        raise PayloadError("the request names no user (an email or an external id is required)")
    return InboundEvent(RECOVERY_REQUESTED, {
        "user_email": user_email, "external_user_id": external_user_id, "ticket_id": ticket_id,
        "requester_email": requester_email, "subject": subject, "text": text,
    })


def _requested_from(data: Mapping[str, Any], where: str) -> InboundEvent:
    reject_unknown(data, ("user_email", "external_user_id", "ticket_id", "requester_email",
                          "subject", "text"), where)
    return recovery_requested(
        user_email=read_email(data, "user_email", where),
        external_user_id=read_id(data, "external_user_id", where),
        ticket_id=read_id(data, "ticket_id", where),
        requester_email=read_email(data, "requester_email", where),
        subject=read_text(data, "subject", where, max_len=MAX_SUBJECT, truncate=True),
        text=read_text(data, "text", where, max_len=MAX_TEXT, truncate=True),
    )


def _attested_from(data: Mapping[str, Any], where: str) -> InboundEvent:
    reject_unknown(data, ("case_id", "user_email", "voucher_email", "relation", "reference"), where)
    case_id = read_id(data, "case_id", where)
    if case_id is not None:
        try:
            case_id = str(uuid.UUID(case_id))
        except ValueError:
            raise PayloadError(f"{where}.case_id is not a case id (a UUID)") from None
    user_email = read_email(data, "user_email", where)
    if case_id is None and user_email is None:
        raise PayloadError(f"{where} must name the case_id or the user_email")
    return InboundEvent(RECOVERY_ATTESTED, {
        "case_id": case_id, "user_email": user_email,
        "voucher_email": read_email(data, "voucher_email", where, required=True),
        "relation": read_choice(data, "relation", where, ("manager", "hr")),
        "reference": read_text(data, "reference", where, max_len=MAX_ID, required=True),
    })


def _callback_from(data: Mapping[str, Any], where: str) -> InboundEvent:
    reject_unknown(data, ("call_id", "status", "provider_id"), where)
    return InboundEvent(CALLBACK_RESULT, {
        "call_id": read_id(data, "call_id", where, required=True),
        "status": read_choice(data, "status", where,
                              ("delivered", "failed", "answered", "no_answer")),
        "provider_id": read_id(data, "provider_id", where),
    })


_FROM_DATA = {RECOVERY_REQUESTED: _requested_from, RECOVERY_ATTESTED: _attested_from,
              CALLBACK_RESULT: _callback_from}


def event_from_envelope(payload: Any, allowed_types: Sequence[str]) -> InboundEvent:
    """Map our envelope `{"type", "timestamp"?, "data"}` to an event of one of `allowed_types`."""
    envelope = as_object(payload, "payload")
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or event_type not in allowed_types:
        raise PayloadError(f"payload.type must be one of: {', '.join(allowed_types)}")
    return _FROM_DATA[event_type](as_object(envelope.get("data"), "payload.data"), "payload.data")
