"""Fixtures for the local vendor fakes, shared by unit and end-to-end tests.

Use from a conftest: `from tests.fakes_fixtures import *  # noqa: F403`.
The SSRF guard stays on: `outbound_policy` allow-lists 127.0.0.1, where the fakes listen.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest

from integrations.fakes import CallbackReceiver, FakeJira, FakeTwilio, FakeZendesk
from integrations.http import OutboundPolicy

__all__ = [
    "SmtpInbox",
    "callback_receiver",
    "fake_jira",
    "fake_twilio",
    "fake_zendesk",
    "outbound_policy",
    "smtp_inbox",
]

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def outbound_policy() -> OutboundPolicy:
    """The production guard, with the fakes' loopback address allow-listed and short timeouts."""
    return OutboundPolicy(allowlist=("127.0.0.1",), connect_timeout=2.0, read_timeout=1.0)


@pytest.fixture
def fake_twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture
def fake_zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk() as fake:
        yield fake


@pytest.fixture
def fake_jira() -> Iterator[FakeJira]:
    with FakeJira() as fake:
        yield fake


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    """A receiver that verifies Standard Webhooks signatures with WEBHOOK_SECRET."""
    with CallbackReceiver(secret=WEBHOOK_SECRET) as fake:
        yield fake


@dataclass
class SmtpInbox:
    """What a real local SMTP server (aiosmtpd) received."""

    host: str
    port: int
    envelopes: list[Any] = field(default_factory=list)
    reply: str = "250 Message accepted for delivery"  # e.g. "451 4.3.0 try later" to refuse

    @property
    def messages(self) -> list[Message]:
        return [message_from_bytes(env.original_content) for env in self.envelopes]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.reply.startswith("250"):
            self.envelopes.append(envelope)
        return self.reply


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_inbox() -> Iterator[SmtpInbox]:
    """A real SMTP server on a free port of 127.0.0.1 (no TLS)."""
    from aiosmtpd.controller import Controller

    inbox = SmtpInbox("127.0.0.1", free_port())
    controller = Controller(inbox, hostname=inbox.host, port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()
