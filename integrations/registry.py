"""Adapters by kind: the one place that maps `Integration.kind` (and later channel and
ticketing-client kinds) to an implementation."""

from __future__ import annotations

from integrations.base import WebhookAdapter
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
