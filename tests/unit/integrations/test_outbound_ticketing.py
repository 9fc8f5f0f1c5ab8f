"""Status comments back on the ticket: Zendesk, Jira and signed Standard Webhooks callbacks,
each against its local fake."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook

from integrations.base import PermanentDeliveryError, TicketRef, TransientDeliveryError
from integrations.fakes import CallbackReceiver, FakeJira, FakeZendesk, Reply
from integrations.http import BlockedDestinationError, OutboundPolicy
from integrations.ticketing.outbound import (
    JiraClient,
    StandardWebhookClient,
    TicketingClientConfig,
    ZendeskClient,
    comment_marker,
    has_marker,
    signed_headers,
    with_marker,
)
from tests.fakes_fixtures import WEBHOOK_SECRET

STATUS = "Recovery case verified by video call; MFA reset done. The user re-enrols at next sign-in."


def zendesk_ref(fake: FakeZendesk, ticket_id: str = "35436") -> TicketRef:
    return TicketRef(fake.url, ticket_id, {"email": fake.email, "api_token": fake.api_token})


def jira_ref(fake: FakeJira, key: str = "HELP-42") -> TicketRef:
    return TicketRef(fake.url, key, {"email": fake.email, "api_token": fake.api_token})


class TestMarker:
    def test_with_marker_appends_key_once_readable(self) -> None:
        text = with_marker("Case closed.\n", "case-7:close")
        assert text == "Case closed.\n\n[rekey:case-7:close]"
        assert has_marker(text, "case-7:close") and not has_marker(text, "case-7:other")

    @pytest.mark.parametrize("key", ["", "a]b", "line\nbreak", "has.dot", "x" * 201])
    def test_comment_marker_refuses_unsafe_key(self, key: str) -> None:
        with pytest.raises(ValueError):
            comment_marker(key)


class TestZendeskClient:
    def test_conformance_posts_private_comment_and_returns_comment_id(
        self, fake_zendesk: FakeZendesk, outbound_policy: OutboundPolicy
    ) -> None:
        client = ZendeskClient(TicketingClientConfig(outbound=outbound_policy))
        remote_id = client.post_comment(zendesk_ref(fake_zendesk), STATUS,
                                        idempotency_key="c1:close")
        [comment] = fake_zendesk.comments["35436"]
        assert comment == {"body": f"{STATUS}\n\n[rekey:c1:close]", "public": False}
        request = fake_zendesk.requests[0]
        assert (request.method, request.path) == ("PUT", "/api/v2/tickets/35436.json")
        assert client.kind == "zendesk"
        assert remote_id == "9001"  # the Comment event of the audit

    def test_post_comment_falls_back_to_ticket_and_key(
        self, fake_zendesk: FakeZendesk, outbound_policy: OutboundPolicy
    ) -> None:
        fake_zendesk.script([Reply(200, body={"ticket": {"id": 35436}})])
        client = ZendeskClient(TicketingClientConfig(outbound=outbound_policy))
        assert client.post_comment(zendesk_ref(fake_zendesk), "x", idempotency_key="k") == "35436:k"

    def test_post_comment_retry_mapping(
        self, fake_zendesk: FakeZendesk, outbound_policy: OutboundPolicy
    ) -> None:
        client = ZendeskClient(TicketingClientConfig(outbound=outbound_policy))
        ref = zendesk_ref(fake_zendesk)
        fake_zendesk.script([500, Reply.rate_limited("7"), Reply.hang(3.0)])
        with pytest.raises(TransientDeliveryError) as server_error:
            client.post_comment(ref, STATUS, idempotency_key="k")
        assert server_error.value.retry_after is None
        with pytest.raises(TransientDeliveryError) as limited:
            client.post_comment(ref, STATUS, idempotency_key="k")
        assert limited.value.retry_after == 7
        with pytest.raises(TransientDeliveryError, match="timed out"):
            client.post_comment(ref, STATUS, idempotency_key="k")
        # The hung request was processed: the retry posts a second comment, and the marker
        # shows the two are the same status.
        client.post_comment(ref, STATUS, idempotency_key="k")
        bodies = [c["body"] for c in fake_zendesk.comments["35436"]]
        assert len(bodies) == 2 and all(has_marker(b, "k") for b in bodies)

    def test_post_comment_missing_ticket_and_bad_token_are_permanent(
        self, fake_zendesk: FakeZendesk, outbound_policy: OutboundPolicy
    ) -> None:
        client = ZendeskClient(TicketingClientConfig(outbound=outbound_policy))
        fake_zendesk.missing_tickets.add("404")
        with pytest.raises(PermanentDeliveryError, match="404"):
            client.post_comment(zendesk_ref(fake_zendesk, "404"), "x", idempotency_key="k")
        bad = TicketRef(fake_zendesk.url, "1", {"email": fake_zendesk.email, "api_token": "nope"})
        with pytest.raises(PermanentDeliveryError, match="401"):
            client.post_comment(bad, "x", idempotency_key="k")

    @pytest.mark.parametrize("ticket_id", ["../users/1", "12a", ""])
    def test_post_comment_refuses_non_numeric_ticket(
        self, fake_zendesk: FakeZendesk, outbound_policy: OutboundPolicy, ticket_id: str
    ) -> None:
        client = ZendeskClient(TicketingClientConfig(outbound=outbound_policy))
        with pytest.raises(PermanentDeliveryError):
            client.post_comment(zendesk_ref(fake_zendesk, ticket_id), "x", idempotency_key="k")
        assert fake_zendesk.requests == []

    def test_post_comment_guard_blocks_private_base_url(self, fake_zendesk: FakeZendesk) -> None:
        client = ZendeskClient(TicketingClientConfig(outbound=OutboundPolicy()))
        with pytest.raises(BlockedDestinationError):
            client.post_comment(zendesk_ref(fake_zendesk), "x", idempotency_key="k")
        assert fake_zendesk.requests == []


class TestJiraClient:
    def test_conformance_posts_adf_comment_and_returns_id(
        self, fake_jira: FakeJira, outbound_policy: OutboundPolicy
    ) -> None:
        client = JiraClient(TicketingClientConfig(outbound=outbound_policy))
        remote_id = client.post_comment(jira_ref(fake_jira), STATUS, idempotency_key="c2:close")
        assert client.kind == "jira" and remote_id == "10000"
        assert fake_jira.texts("HELP-42") == [f"{STATUS}\n\n[rekey:c2:close]"]
        sent = fake_jira.requests[0].json
        assert sent["body"]["content"][0] == {
            "type": "paragraph", "content": [{"type": "text", "text": STATUS}],
        }
        assert sent["properties"] == [{"key": "sd.public.comment", "value": {"internal": True}}]

    def test_post_comment_retry_mapping(
        self, fake_jira: FakeJira, outbound_policy: OutboundPolicy
    ) -> None:
        client = JiraClient(TicketingClientConfig(outbound=outbound_policy))
        fake_jira.missing_issues.add("GONE-1")
        fake_jira.script([503, Reply.rate_limited("7")])
        with pytest.raises(TransientDeliveryError):
            client.post_comment(jira_ref(fake_jira), "x", idempotency_key="k")
        with pytest.raises(TransientDeliveryError) as limited:
            client.post_comment(jira_ref(fake_jira), "x", idempotency_key="k")
        assert limited.value.retry_after == 7
        with pytest.raises(PermanentDeliveryError):
            client.post_comment(jira_ref(fake_jira, "GONE-1"), "x", idempotency_key="k")
        with pytest.raises(PermanentDeliveryError):
            client.post_comment(jira_ref(fake_jira, "HELP-1/../../x"), "x", idempotency_key="k")
        assert fake_jira.comments == {}


class TestStandardWebhookClient:
    def test_signed_headers_match_published_vector(self) -> None:
        # Standard Webhooks' own test vector (libraries/python/tests/test_webhooks.py).
        headers = signed_headers(WEBHOOK_SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                 datetime.fromtimestamp(1614265330, UTC), '{"test": 2432232314}')
        assert headers == {
            "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "webhook-timestamp": "1614265330",
            "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        }

    def test_conformance_delivers_signed_status_event(
        self, callback_receiver: CallbackReceiver, outbound_policy: OutboundPolicy
    ) -> None:
        client = StandardWebhookClient(TicketingClientConfig(outbound=outbound_policy))
        ref = TicketRef(callback_receiver.callback_url, "T-77", {"secret": WEBHOOK_SECRET})
        remote_id = client.post_comment(ref, STATUS, idempotency_key="c3:close")
        assert client.kind == "standard" and remote_id == "c3:close"
        [event] = callback_receiver.deliveries
        assert event["type"] == "recovery.status"
        assert event["data"] == {"ticket_id": "T-77", "message": f"{STATUS}\n\n[rekey:c3:close]"}
        request = callback_receiver.requests[0]
        assert request.headers["webhook-id"] == "c3:close"
        Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)  # raises if forged

    def test_post_comment_retry_keeps_id_and_resigns(
        self, callback_receiver: CallbackReceiver, outbound_policy: OutboundPolicy
    ) -> None:
        start = datetime.now(UTC).replace(microsecond=0)
        times = iter([start, start + timedelta(seconds=90)])
        config = TicketingClientConfig(outbound=outbound_policy, clock=lambda: next(times))
        client = StandardWebhookClient(config)
        ref = TicketRef(callback_receiver.callback_url, "T-1", {"secret": WEBHOOK_SECRET})
        callback_receiver.script([500])
        with pytest.raises(TransientDeliveryError):
            client.post_comment(ref, "x", idempotency_key="c4")
        client.post_comment(ref, "x", idempotency_key="c4")
        first, second = callback_receiver.requests
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == "c4"
        stamps = [int(r.headers["webhook-timestamp"]) for r in (first, second)]
        assert stamps[1] - stamps[0] == 90
        later = (start + timedelta(seconds=90)).isoformat().replace("+00:00", "Z")
        assert json.loads(second.body)["timestamp"] == later

    def test_post_comment_wrong_secret_is_refused_permanently(
        self, callback_receiver: CallbackReceiver, outbound_policy: OutboundPolicy
    ) -> None:
        client = StandardWebhookClient(TicketingClientConfig(outbound=outbound_policy))
        ref = TicketRef(callback_receiver.callback_url, "T-1",
                        {"secret": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"})
        with pytest.raises(PermanentDeliveryError, match="401"):
            client.post_comment(ref, "x", idempotency_key="k")
        assert callback_receiver.deliveries == []

    def test_post_comment_missing_secret_is_permanent(
        self, callback_receiver: CallbackReceiver, outbound_policy: OutboundPolicy
    ) -> None:
        client = StandardWebhookClient(TicketingClientConfig(outbound=outbound_policy))
        with pytest.raises(PermanentDeliveryError, match="secret"):
            client.post_comment(TicketRef(callback_receiver.callback_url, "T", {}), "x",
                                idempotency_key="k")
        assert callback_receiver.requests == []

    def test_post_comment_refuses_http_callback_outside_allowlist(self) -> None:
        client = StandardWebhookClient(TicketingClientConfig(outbound=OutboundPolicy()))
        for url in ("http://hooks.example.com/cb", "https://169.254.169.254/latest",
                    "https://[::ffff:127.0.0.1]/cb", "https://2130706433/cb"):
            with pytest.raises(BlockedDestinationError):
                client.post_comment(TicketRef(url, "T", {"secret": WEBHOOK_SECRET}), "x",
                                    idempotency_key="k")


def test_post_comment_logs_no_comment_text_or_credentials(
    fake_zendesk: FakeZendesk, fake_jira: FakeJira, callback_receiver: CallbackReceiver,
    outbound_policy: OutboundPolicy, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    config = TicketingClientConfig(outbound=outbound_policy)
    ZendeskClient(config).post_comment(zendesk_ref(fake_zendesk), STATUS, idempotency_key="k1")
    JiraClient(config).post_comment(jira_ref(fake_jira), STATUS, idempotency_key="k2")
    StandardWebhookClient(config).post_comment(
        TicketRef(callback_receiver.callback_url, "T", {"secret": WEBHOOK_SECRET}), STATUS,
        idempotency_key="k3",
    )
    assert "zendesk comment posted" in caplog.text
    for secret in (STATUS[:40], fake_zendesk.api_token, fake_jira.api_token, WEBHOOK_SECRET[6:]):
        assert secret not in caplog.text
