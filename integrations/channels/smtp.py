"""Email over SMTP (smtplib), STARTTLS by default. Email carries no SMS and no voice."""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate

from integrations.base import PermanentDeliveryError, SentMessage, TransientDeliveryError
from integrations.channels import key_digest, mask_email

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    from_address: str
    port: int = 587
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = True
    timeout: float = 15.0
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    message_id_domain: str = "rekey.invalid"


class SmtpChannel:
    """A `MessageChannel` for email."""

    kind = "smtp"

    def __init__(self, config: SmtpConfig):
        self.config = config

    def send_sms(self, to_e164: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Email cannot text: refused for good."""
        raise PermanentDeliveryError("the smtp channel does not send SMS")

    def place_call(self, to_e164: str, spoken_text: str, *, idempotency_key: str) -> SentMessage:
        """Email cannot call: refused for good."""
        raise PermanentDeliveryError("the smtp channel does not place calls")

    def send_email(self, to: str, subject: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Send a plain-text email; its Message-ID is derived from the idempotency key."""
        cfg = self.config
        # The same key gives the same Message-ID, so a retried send can be spotted downstream.
        message_id = f"<{key_digest(idempotency_key)}@{cfg.message_id_domain}>"
        msg = EmailMessage()
        msg["From"] = cfg.from_address
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(localtime=False, usegmt=True)
        msg["Message-ID"] = message_id
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(body)
        try:
            with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout) as smtp:
                smtp.ehlo()
                if cfg.starttls:
                    if not smtp.has_extn("starttls"):
                        # Never fall back to cleartext: the body carries a code.
                        raise PermanentDeliveryError("the SMTP server does not offer STARTTLS")
                    smtp.starttls(context=cfg.ssl_context or ssl.create_default_context())
                    smtp.ehlo()
                if cfg.username:
                    smtp.login(cfg.username, cfg.password or "")
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise _by_code(min(codes, default=550), "recipient refused") from None
        except smtplib.SMTPResponseException as exc:
            # Only the code: the server's text may echo the address or the message.
            raise _by_code(exc.smtp_code, type(exc).__name__) from None
        except smtplib.SMTPServerDisconnected:
            raise TransientDeliveryError(f"smtp {cfg.host}: disconnected") from None
        except smtplib.SMTPException as exc:  # before OSError, its base class
            raise PermanentDeliveryError(f"smtp {cfg.host}: {type(exc).__name__}") from None
        except OSError as exc:  # refused, reset, timed out, TLS failure
            raise TransientDeliveryError(f"smtp {cfg.host}: {type(exc).__name__}") from None
        log.info("email sent message_id=%s to=%s", message_id, mask_email(to))
        return SentMessage(provider_id=message_id, channel="email")


def _by_code(code: int, what: str) -> Exception:
    # 4yz is a temporary failure by RFC 5321; 5yz is final.
    if 400 <= code < 500:
        return TransientDeliveryError(f"smtp {what}: {code}")
    return PermanentDeliveryError(f"smtp {what}: {code}")
