"""The registry's outbound half: channel and ticketing-client kinds to implementations."""

from __future__ import annotations

from pathlib import Path

import pytest

from integrations.base import TicketRef
from integrations.channels.dev import read_messages
from integrations.fakes import FakeTwilio, FakeZendesk
from integrations.http import OutboundPolicy
from integrations.registry import UnknownKindError, message_channel, ticketing_client


def test_message_channel_builds_each_kind_from_mapping(
    tmp_path: Path, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy
) -> None:
    dev = message_channel("dev", {"path": tmp_path / "out.jsonl"})
    dev.send_sms("+14155550100", "code 1", idempotency_key="k")
    assert [m["body"] for m in read_messages(tmp_path / "out.jsonl")] == ["code 1"]

    twilio = message_channel("twilio", {
        "account_sid": fake_twilio.account_sid, "auth_token": fake_twilio.auth_token,
        "from_number": "+15005550006", "base_url": fake_twilio.url, "outbound": outbound_policy,
    })
    twilio.send_sms("+14155550100", "code 2", idempotency_key="k")
    assert [m["Body"] for m in fake_twilio.messages] == ["code 2"]

    smtp = message_channel("smtp", {"host": "127.0.0.1", "from_address": "rekey@example.com"})
    assert (dev.kind, twilio.kind, smtp.kind) == ("dev", "twilio", "smtp")


def test_ticketing_client_builds_each_kind(
    fake_zendesk: FakeZendesk, outbound_policy: OutboundPolicy
) -> None:
    kinds = {kind: ticketing_client(kind, {"outbound": outbound_policy})
             for kind in ("zendesk", "jira", "standard")}
    assert {kind: client.kind for kind, client in kinds.items()} == {
        "zendesk": "zendesk", "jira": "jira", "standard": "standard",
    }
    ref = TicketRef(fake_zendesk.url, "5", {"email": fake_zendesk.email,
                                             "api_token": fake_zendesk.api_token})
    kinds["zendesk"].post_comment(ref, "done", idempotency_key="k")
    assert fake_zendesk.comments["5"][0]["body"].startswith("done")


def test_registry_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(UnknownKindError, match="dev, twilio, smtp"):
        message_channel("pigeon", {})
    with pytest.raises(UnknownKindError, match="zendesk, jira, standard"):
        ticketing_client("servicenow")
    with pytest.raises(TypeError):
        message_channel("twilio", ["not", "a", "config"])
