"""The webhook registry, and one conformance suite every registered WebhookAdapter passes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from integrations.base import EVENT_TYPES, InboundEvent, SignatureError
from integrations.registry import WEBHOOK_KINDS, UnknownKindError, webhook_adapter
from integrations.ticketing import jira, zendesk
from integrations.webhooks import sign_standard

NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
DELIVERY = "delivery-0001"


def _standard(body: bytes, secret: str, at: datetime) -> dict[str, str]:
    ts = int(at.timestamp())
    return {"Webhook-Id": DELIVERY, "Webhook-Timestamp": str(ts),
            "Webhook-Signature": sign_standard(secret, DELIVERY, ts, body)}


def _zendesk(body: bytes, secret: str, at: datetime) -> dict[str, str]:
    ts = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"X-Zendesk-Webhook-Signature": zendesk.sign(secret, ts, body),
            "X-Zendesk-Webhook-Signature-Timestamp": ts,
            "X-Zendesk-Webhook-Invocation-Id": DELIVERY}


def _jira(body: bytes, secret: str, at: datetime) -> dict[str, str]:
    return {"X-Hub-Signature": jira.sign(secret, body), "X-Atlassian-Webhook-Identifier": DELIVERY}


def _sw_secret(key: bytes) -> str:
    return "whsec_" + base64.b64encode(key).decode()


def _text_secret(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


# kind -> (how a real sender signs, how a secret is written, the vendor's documented example)
CASES: dict[str, tuple[Callable[..., dict[str, str]], Callable[[bytes], str], Any, str]] = {
    "standard": (_standard, _sw_secret, {"type": "recovery.requested", "data": {
        "user_email": "ana@example.com", "ticket_id": "T-1"}}, "recovery.requested"),
    "zendesk": (_zendesk, _text_secret, {"ticket": {
        "id": "35436", "subject": "{{ticket.title}}", "description": "lost phone",
        "requester": {"email": "ana@example.com", "external_id": ""}}}, "recovery.requested"),
    "jira": (_jira, _text_secret, {"timestamp": 1714555800000, "webhookEvent": "jira:issue_created",
             "issue": {"id": "10002", "key": "HELP-42", "fields": {
                 "summary": "Cannot sign in", "description": "lost phone",
                 "reporter": {"emailAddress": "ana@example.com", "accountId": "5b10"}}}},
             "recovery.requested"),
    "hr": (_standard, _sw_secret, {"type": "recovery.attested", "data": {
        "user_email": "ana@example.com", "voucher_email": "boss@example.com",
        "relation": "manager", "reference": "HR-1"}}, "recovery.attested"),
}
SECRET_KEY = b"0123456789abcdef0123456789abcdef"
OTHER_KEY = b"fedcba9876543210fedcba9876543210"


def test_every_kind_is_registered_with_a_conformance_case():
    assert WEBHOOK_KINDS == ("standard", "zendesk", "jira", "hr")
    assert set(CASES) == set(WEBHOOK_KINDS)
    for kind in WEBHOOK_KINDS:
        assert webhook_adapter(kind).kind == kind


def test_unknown_kind_is_a_clear_key_error():
    with pytest.raises(KeyError) as caught:
        webhook_adapter("servicenow")
    assert isinstance(caught.value, UnknownKindError)
    assert str(caught.value) == ("unknown webhook kind 'servicenow' "
                                 "(known: standard, zendesk, jira, hr)")


@pytest.mark.parametrize("kind", WEBHOOK_KINDS)
class TestConformance:
    def test_signed_request_returns_a_stable_delivery_id(self, kind):
        sign, secret_of, example, _ = CASES[kind]
        body, secret = json.dumps(example).encode(), secret_of(SECRET_KEY)
        adapter = webhook_adapter(kind)
        first = adapter.verify(sign(body, secret, NOW), body, secret, now=NOW)
        later = NOW + timedelta(minutes=2)  # a retry, re-signed where the scheme has a timestamp
        assert adapter.verify(sign(body, secret, later), body, secret, now=later) == first
        assert first == DELIVERY

    def test_any_one_byte_change_in_the_body_fails(self, kind):
        sign, secret_of, example, _ = CASES[kind]
        body, secret = json.dumps(example).encode(), secret_of(SECRET_KEY)
        sent = sign(body, secret, NOW)
        for i in range(len(body)):
            mutated = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1:]
            with pytest.raises(SignatureError):
                webhook_adapter(kind).verify(sent, mutated, secret, now=NOW)

    def test_another_secret_fails(self, kind):
        sign, secret_of, example, _ = CASES[kind]
        body = json.dumps(example).encode()
        sent = sign(body, secret_of(OTHER_KEY), NOW)
        with pytest.raises(SignatureError):
            webhook_adapter(kind).verify(sent, body, secret_of(SECRET_KEY), now=NOW)

    def test_parse_maps_documented_example(self, kind):
        _, _, example, expected_type = CASES[kind]
        event = webhook_adapter(kind).parse({}, example)
        assert isinstance(event, InboundEvent)
        assert event.type == expected_type and event.type in EVENT_TYPES
        assert event.data["user_email"] == "ana@example.com"

    @given(body=st.binary(min_size=1, max_size=2048), key=st.binary(min_size=1, max_size=64),
           data=st.data())
    def test_sign_then_verify_accepts_and_a_mutated_body_rejects(self, kind, body, key, data):
        sign, secret_of, _, _ = CASES[kind]
        secret = secret_of(key)
        adapter = webhook_adapter(kind)
        sent = sign(body, secret, NOW)
        assert adapter.verify(sent, body, secret, now=NOW) == DELIVERY
        i = data.draw(st.integers(0, len(body) - 1), label="index")
        flip = data.draw(st.integers(1, 255), label="xor")
        with pytest.raises(SignatureError):
            adapter.verify(sent, body[:i] + bytes([body[i] ^ flip]) + body[i + 1:], secret, now=NOW)
