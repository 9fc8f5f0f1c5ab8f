"""A fake of Twilio's REST API (2010-04-01): Messages.json and Calls.json, Basic auth, the
idempotency token, and signed status callbacks for end-to-end tests."""

from __future__ import annotations

import re
import secrets
import ssl

from integrations.channels.twilio import IDEMPOTENCY_HEADER, twilio_signature
from integrations.fakes.server import Answer, FakeServer, RecordedRequest

_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<sid>AC[0-9a-zA-Z]+)/(?P<res>Messages|Calls)\.json$")


class FakeTwilio(FakeServer):
    """Accepts messages and calls; `.messages` and `.calls` hold what was accepted."""

    def __init__(self, account_sid: str = "AC" + "0" * 32,
                 auth_token: str = "test-auth-token",  # noqa: S107 - a fake's test credential
                 *, tls: ssl.SSLContext | None = None):
        super().__init__(tls=tls)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, str]] = []
        self.calls: list[dict[str, str]] = []
        # Numbers that replied STOP: Twilio refuses every text to them for good (error 21610).
        self.opted_out: set[str] = set()

    def handle(self, request: RecordedRequest) -> Answer:
        match = _PATH.match(request.path)
        if request.method != "POST" or not match:
            return Answer(404, {"code": 20404, "message": "not found", "status": 404})
        if match["sid"] != self.account_sid or request.basic_auth() != (
            self.account_sid, self.auth_token
        ):
            return Answer(401, {"code": 20003, "message": "Authenticate", "status": 401})
        form = request.form
        is_call = match["res"] == "Calls"
        required = ("To", "From", "Twiml") if is_call else ("To", "From", "Body")
        missing = [name for name in required if not form.get(name)]
        if missing:
            return Answer(400, {"code": 21604 if not is_call else 21205,
                                "message": f"missing {missing[0]}", "status": 400})
        if not is_call and form["To"] in self.opted_out:
            return Answer(400, {"code": 21610, "message": "Attempt to send to unsubscribed recipient",
                                "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400})
        # Every accepted request is a new message, even with a repeated idempotency token: the
        # worst case, as Twilio does not document deduplication on it.
        resource = {
            "sid": ("CA" if is_call else "SM") + secrets.token_hex(16),
            "account_sid": self.account_sid, "to": form["To"], "from": form["From"],
            "status": "queued",
        }
        token = request.headers.get(IDEMPOTENCY_HEADER.lower(), "")
        record = {**form, "sid": resource["sid"], "idempotency_token": token}
        (self.calls if is_call else self.messages).append(record)
        return Answer(201, resource)

    def status_callback(self, url: str, sid: str, status: str) -> tuple[dict[str, str], str]:
        """The form and X-Twilio-Signature Twilio would POST to `url` for this sid's status."""
        if sid.startswith("CA"):
            params = {"CallSid": sid, "CallStatus": status, "AccountSid": self.account_sid}
        else:
            params = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status,
                      "SmsStatus": status, "AccountSid": self.account_sid}
        return params, twilio_signature(url, params, self.auth_token)
