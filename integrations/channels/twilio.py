"""Twilio Programmable Messaging and Voice over the REST API (2010-04-01), the signature of
Twilio's callbacks, and the mapping of their statuses to Rekey's."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from integrations.base import PayloadError, PermanentDeliveryError, SentMessage
from integrations.channels import mask_phone
from integrations.http import OutboundPolicy, send

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.twilio.com"
IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"

# Final statuses only; queued/sending/sent/ringing/initiated are progress and map to None.
# "sent" is not "delivered": some carriers never confirm, and a code is only proven by its use.
_MESSAGE_STATUS = {"delivered": "delivered", "read": "delivered", "failed": "failed",
                   "undelivered": "failed", "canceled": "failed"}
_CALL_STATUS = {"completed": "answered", "in-progress": "answered", "busy": "no_answer",
                "no-answer": "no_answer", "canceled": "no_answer", "failed": "failed"}


@dataclass(frozen=True)
class TwilioConfig:
    account_sid: str
    auth_token: str = field(repr=False)
    from_number: str
    base_url: str = DEFAULT_BASE_URL
    status_callback: str | None = None  # Rekey's callback URL, signed by Twilio
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy.from_env)


class TwilioChannel:
    """A `MessageChannel` for SMS and voice; email is another channel's job."""

    kind = "twilio"

    def __init__(self, config: TwilioConfig):
        self.config = config

    def send_sms(self, to_e164: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Send a text message through the Messages resource."""
        fields = {"To": to_e164, "From": self.config.from_number, "Body": body}
        return self._create("Messages.json", "sms", to_e164, fields, idempotency_key)

    def place_call(self, to_e164: str, spoken_text: str, *, idempotency_key: str) -> SentMessage:
        """Place a call that reads `spoken_text` with <Say>."""
        twiml = f"<Response><Say>{escape(spoken_text)}</Say></Response>"
        fields = {"To": to_e164, "From": self.config.from_number, "Twiml": twiml}
        return self._create("Calls.json", "voice", to_e164, fields, idempotency_key)

    def send_email(self, to: str, subject: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Twilio is not an email channel here: refused for good."""
        raise PermanentDeliveryError("the twilio channel does not send email")

    def _create(
        self, resource: str, channel: str, to: str, fields: dict[str, str], key: str
    ) -> SentMessage:
        cfg = self.config
        if cfg.status_callback:
            fields["StatusCallback"] = cfg.status_callback
        url = (f"{cfg.base_url.rstrip('/')}/2010-04-01/Accounts/"
               f"{quote(cfg.account_sid, safe='')}/{resource}")
        # The same token on every retry of one send. Twilio names this header on its own
        # webhooks; that its REST API drops a repeat is not documented, so a retry after an
        # ambiguous timeout may still text twice (the fake models that worst case).
        response = send("POST", url, policy=cfg.outbound, data=fields,
                        auth=(cfg.account_sid, cfg.auth_token),
                        headers={IDEMPOTENCY_HEADER: key, "Accept": "application/json"})
        answer = response.json()
        sid = answer.get("sid") if isinstance(answer, dict) else None
        if not isinstance(sid, str) or not sid:
            raise PermanentDeliveryError(f"twilio accepted the {channel} but returned no sid")
        log.info("twilio %s accepted sid=%s to=%s", channel, sid, mask_phone(to))
        return SentMessage(provider_id=sid, channel=channel)


def twilio_signature(url: str, params: Mapping[str, str | Sequence[str]], auth_token: str) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1 of the URL and the sorted POST names and values."""
    data = url
    for name in sorted(params):
        value = params[name]
        values = [value] if isinstance(value, str) else sorted(value)
        data += "".join(name + v for v in values)
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def validate_twilio_signature(
    url: str, params: Mapping[str, str | Sequence[str]], signature: str, auth_token: str
) -> bool:
    """True when `signature` is Twilio's for this URL and these POST params (constant time)."""
    if not signature or not auth_token:
        return False
    # Twilio signs the URL as it called it; a proxy may have added or dropped the default port.
    candidates = {url, _with_port(url, add=True), _with_port(url, add=False)}
    ok = False
    for candidate in candidates:
        expected = twilio_signature(candidate, params, auth_token)
        ok |= hmac.compare_digest(expected.encode(), signature.encode())
    return ok


def parse_status_callback(params: Mapping[str, str]) -> tuple[str, str | None]:
    """(provider id, delivered|failed|answered|no_answer) from a status callback; the status
    is None while the message or call is still in progress."""
    if params.get("CallSid") and params.get("CallStatus"):
        answered_by = params.get("AnsweredBy", "")
        if answered_by.startswith(("machine", "fax")):
            return params["CallSid"], "no_answer"  # a code read to voicemail proves nothing
        return params["CallSid"], _CALL_STATUS.get(params["CallStatus"].lower())
    sid = params.get("MessageSid") or params.get("SmsSid")
    status = params.get("MessageStatus") or params.get("SmsStatus")
    if sid and status:
        return sid, _MESSAGE_STATUS.get(status.lower())
    raise PayloadError("not a Twilio status callback")


def _with_port(url: str, *, add: bool) -> str:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    if add:
        netloc = f"{prefix}{host}:{parts.port or default}"
    else:
        netloc = prefix + host + (f":{parts.port}" if parts.port not in (None, default) else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
