"""Choosing the channel adapter for a message, from the settings. Services decide what to say
and to whom; the adapters in `integrations/channels` only send."""

from __future__ import annotations

from flask import current_app

from integrations.base import MessageChannel, SentMessage
from integrations.channels.dev import DevChannel, DevChannelConfig


def _settings():  # type: ignore[no-untyped-def]
    return current_app.extensions["rekey.settings"]


def phone_channel() -> MessageChannel:
    """The adapter that texts and calls phones."""
    settings = _settings()
    if settings.phone_channel == "twilio":
        from integrations.channels.twilio import TwilioChannel, TwilioConfig

        return TwilioChannel(TwilioConfig(account_sid=settings.twilio_account_sid,
                                          auth_token=settings.twilio_auth_token,
                                          from_number=settings.twilio_from,
                                          base_url=settings.twilio_base_url,
                                          status_callback=settings.public_url.rstrip("/")
                                          + "/v1/webhooks/twilio/status"))
    return DevChannel(DevChannelConfig(path=settings.dev_outbox))


def email_channel() -> MessageChannel:
    """The adapter that sends email."""
    settings = _settings()
    if settings.email_channel == "smtp":
        from integrations.channels.smtp import SmtpChannel, SmtpConfig

        return SmtpChannel(SmtpConfig(host=settings.smtp_host, port=settings.smtp_port,
                                      from_address=settings.smtp_from,
                                      username=settings.smtp_username or None,
                                      password=settings.smtp_password or None,
                                      starttls=settings.smtp_starttls))
    return DevChannel(DevChannelConfig(path=settings.dev_outbox))


def send(kind: str, to: str, *, subject: str, body: str, key: str, method: str = "sms") -> SentMessage:
    """Send to a contact channel of `kind` (`email` or `phone`; phones by `method` sms|voice)."""
    if kind == "email":
        return email_channel().send_email(to, subject, body, idempotency_key=key)
    if method == "voice":
        return phone_channel().place_call(to, body, idempotency_key=key)
    return phone_channel().send_sms(to, body, idempotency_key=key)
