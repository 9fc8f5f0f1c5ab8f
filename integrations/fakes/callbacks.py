"""A generic callback receiver: records every POST and, given a whsec_ secret, checks the
Standard Webhooks signature the way a careful receiver would (401 when it does not hold)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from integrations.fakes.server import Answer, FakeServer, RecordedRequest


class CallbackReceiver(FakeServer):
    """`.deliveries` holds the verified JSON payloads; every request stays in `.requests`."""

    def __init__(self, secret: str | None = None, *, path: str = "/callbacks",
                 tls: ssl.SSLContext | None = None):
        super().__init__(tls=tls)
        self.secret = secret
        self.path = path
        self.deliveries: list[dict[str, Any]] = []

    @property
    def callback_url(self) -> str:
        """The URL to configure as the integration's callback."""
        return self.url + self.path

    def handle(self, request: RecordedRequest) -> Answer:
        if request.method != "POST" or request.path != self.path:
            return Answer(404, {"error": "not found"})
        if self.secret is not None:
            try:
                Webhook(self.secret).verify(request.body, request.headers)
            except WebhookVerificationError:
                return Answer(401, {"error": "bad signature"})
        payload = request.json
        self.deliveries.append(payload)
        return Answer(200, {"received_at": datetime.now(UTC).isoformat()})
