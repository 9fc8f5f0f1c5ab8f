"""Adapters by kind: the one place that maps `Integration.kind` (and later channel and
ticketing-client kinds) to an implementation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from integrations.base import MessageChannel, TicketingClient, WebhookAdapter
from integrations.hr.generic import HRAdapter
from integrations.ticketing.jira import JiraAdapter
from integrations.ticketing.standard import StandardAdapter
from integrations.ticketing.zendesk import ZendeskAdapter


class UnknownKindError(KeyError):
    """No adapter is registered for this kind (a misconfigured integration, not a caller error)."""

    def __init__(self, what: str, kind: str, known: tuple[str, ...]):
        super().__init__(kind)
        self.message = f"unknown {what} kind {kind!r} (known: {', '.join(known)})"

    def __str__(self) -> str:
        return self.message


# --- Inbound webhooks ---------------------------------------------------------------------------
# Adapters are stateless: one shared instance per kind.

_WEBHOOK_ADAPTERS: dict[str, WebhookAdapter] = {
    adapter.kind: adapter
    for adapter in (StandardAdapter(), ZendeskAdapter(), JiraAdapter(), HRAdapter())
}
WEBHOOK_KINDS: tuple[str, ...] = tuple(_WEBHOOK_ADAPTERS)


def webhook_adapter(kind: str) -> WebhookAdapter:
    """The inbound adapter for an integration kind; UnknownKindError (a KeyError) if none."""
    try:
        return _WEBHOOK_ADAPTERS[kind]
    except KeyError:
        raise UnknownKindError("webhook", kind, WEBHOOK_KINDS) from None


# --- Outbound: message channels and ticketing clients ---------------------------------------------
# Built per call from the integration's (or the deployment's) settings: a config dataclass, or a
# mapping of its fields. Implementations are imported here so a kind that is never used costs
# nothing at start-up.

MESSAGE_CHANNEL_KINDS: tuple[str, ...] = ("dev", "twilio", "smtp")
TICKETING_CLIENT_KINDS: tuple[str, ...] = ("zendesk", "jira", "standard")


def _config(cls: type[Any], config: Any) -> Any:
    if config is None or isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        return cls(**config)
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(config).__name__}")


def message_channel(kind: str, config: Any = None) -> MessageChannel:
    """The `MessageChannel` for a kind (dev|twilio|smtp); UnknownKindError if none."""
    if kind == "dev":
        from integrations.channels.dev import DevChannel, DevChannelConfig

        return DevChannel(_config(DevChannelConfig, config))
    if kind == "twilio":
        from integrations.channels.twilio import TwilioChannel, TwilioConfig

        return TwilioChannel(_config(TwilioConfig, config))
    if kind == "smtp":
        from integrations.channels.smtp import SmtpChannel, SmtpConfig

        return SmtpChannel(_config(SmtpConfig, config))
    raise UnknownKindError("message channel", kind, MESSAGE_CHANNEL_KINDS)


def ticketing_client(kind: str, config: Any = None) -> TicketingClient:
    """The `TicketingClient` for a kind (zendesk|jira|standard); UnknownKindError if none."""
    from integrations.ticketing import outbound

    classes: dict[str, type[Any]] = {
        "zendesk": outbound.ZendeskClient,
        "jira": outbound.JiraClient,
        "standard": outbound.StandardWebhookClient,
    }
    if kind not in classes:
        raise UnknownKindError("ticketing client", kind, TICKETING_CLIENT_KINDS)
    client: TicketingClient = classes[kind](_config(outbound.TicketingClientConfig, config))
    return client
