"""The SMTP channel against a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from integrations.base import PermanentDeliveryError, TransientDeliveryError
from integrations.channels.smtp import SmtpChannel, SmtpConfig
from integrations.fakes.tls import make_test_tls
from tests.fakes_fixtures import SmtpInbox, free_port


def plain(inbox: SmtpInbox, **overrides) -> SmtpChannel:
    config = {"host": inbox.host, "port": inbox.port, "from_address": "rekey@example.com",
              "starttls": False, "timeout": 5.0, **overrides}
    return SmtpChannel(SmtpConfig(**config))


def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"rekey" \
        and auth_data.password == b"s3cret-pass"
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535


@pytest.fixture
def tls_inbox(tmp_path: Path) -> Iterator[tuple[SmtpInbox, object]]:
    """A real SMTP server that requires STARTTLS and AUTH, with a certificate for 127.0.0.1."""
    tls = make_test_tls(("127.0.0.1",), tmp_path)
    inbox = SmtpInbox("127.0.0.1", free_port())
    controller = Controller(inbox, hostname=inbox.host, port=inbox.port,
                            tls_context=tls.server_context(), require_starttls=True,
                            auth_required=True, authenticator=authenticator)
    controller.start()
    try:
        yield inbox, tls
    finally:
        controller.stop()


class TestSmtpChannel:
    def test_conformance_email_delivered_and_no_sms_or_voice(self, smtp_inbox: SmtpInbox) -> None:
        channel = plain(smtp_inbox)
        sent = channel.send_email("jane@example.com", "Your Rekey code",
                                  "Your code is 602214.\n", idempotency_key="case-9:code")
        assert (channel.kind, sent.channel) == ("smtp", "email")
        [envelope] = smtp_inbox.envelopes
        assert envelope.rcpt_tos == ["jane@example.com"]
        [message] = smtp_inbox.messages
        assert message["Subject"] == "Your Rekey code"
        assert message["From"] == "rekey@example.com"
        assert message["Message-ID"] == sent.provider_id
        assert message.get_payload(decode=True).decode().strip() == "Your code is 602214."
        with pytest.raises(PermanentDeliveryError):
            channel.send_sms("+14155550100", "x", idempotency_key="k")
        with pytest.raises(PermanentDeliveryError):
            channel.place_call("+14155550100", "x", idempotency_key="k")
        assert len(smtp_inbox.envelopes) == 1

    def test_send_email_same_key_same_message_id(self, smtp_inbox: SmtpInbox) -> None:
        channel = plain(smtp_inbox)
        first = channel.send_email("a@example.com", "s", "b", idempotency_key="k:1")
        again = channel.send_email("a@example.com", "s", "b", idempotency_key="k:1")
        other = channel.send_email("a@example.com", "s", "b", idempotency_key="k:2")
        assert first.provider_id == again.provider_id != other.provider_id

    def test_send_email_over_starttls_with_login(self, tls_inbox) -> None:
        inbox, tls = tls_inbox
        channel = plain(inbox, starttls=True, username="rekey", password="s3cret-pass",
                        ssl_context=tls.client_context())
        channel.send_email("jane@example.com", "s", "over TLS", idempotency_key="k")
        assert [m.get_payload().strip() for m in inbox.messages] == ["over TLS"]

    def test_send_email_bad_login_is_permanent(self, tls_inbox) -> None:
        inbox, tls = tls_inbox
        channel = plain(inbox, starttls=True, username="rekey", password="wrong",
                        ssl_context=tls.client_context())
        with pytest.raises(PermanentDeliveryError) as info:
            channel.send_email("jane@example.com", "s", "b", idempotency_key="k")
        assert "wrong" not in str(info.value)
        assert inbox.envelopes == []

    def test_send_email_refuses_cleartext_without_starttls(self, smtp_inbox: SmtpInbox) -> None:
        with pytest.raises(PermanentDeliveryError, match="STARTTLS"):
            plain(smtp_inbox, starttls=True).send_email("a@example.com", "s", "b",
                                                        idempotency_key="k")
        assert smtp_inbox.envelopes == []

    def test_send_email_untrusted_certificate_is_not_sent(self, tls_inbox) -> None:
        inbox, _ = tls_inbox
        channel = plain(inbox, starttls=True, username="rekey", password="s3cret-pass")
        with pytest.raises(TransientDeliveryError):
            channel.send_email("jane@example.com", "s", "b", idempotency_key="k")
        assert inbox.envelopes == []

    def test_send_email_4xx_transient_5xx_permanent(self, smtp_inbox: SmtpInbox) -> None:
        channel = plain(smtp_inbox)
        smtp_inbox.reply = "451 4.3.0 try again later"
        with pytest.raises(TransientDeliveryError, match="451"):
            channel.send_email("a@example.com", "s", "b", idempotency_key="k")
        smtp_inbox.reply = "554 5.6.0 rejected"
        with pytest.raises(PermanentDeliveryError, match="554"):
            channel.send_email("a@example.com", "s", "b", idempotency_key="k")

    def test_send_email_server_down_is_transient(self) -> None:
        down = SmtpInbox("127.0.0.1", free_port())
        with pytest.raises(TransientDeliveryError):
            plain(down).send_email("a@example.com", "s", "b", idempotency_key="k")

    def test_send_email_logs_no_body_and_no_address(
        self, smtp_inbox: SmtpInbox, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        sent = plain(smtp_inbox).send_email("jane.doe@example.com", "Backup codes",
                                            "Your codes: 3f9a-77c1-0be2", idempotency_key="k")
        # The SMTP server's own log (mail.log) prints the DATA it received; Rekey's must not.
        ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))
        assert sent.provider_id in ours
        assert "3f9a-77c1-0be2" not in ours
        assert "jane.doe@example.com" not in ours
