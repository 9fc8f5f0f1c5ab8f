"""Kind `zendesk`: the documented timestamp+body signature and the trigger body."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from integrations.base import PayloadError, SignatureError
from integrations.ticketing.zendesk import ZendeskAdapter, sign

# Fixture from the reference (WEBHOOKS-AND-CELERY.md 2.1): Zendesk's example inputs, signed
# in the currently documented TIMESTAMP + BODY order.
SECRET = "HRkRd4BeOAoUkfZr-mhauJT64rvBASlJRoIyPsd3zeA="
BODY = b'{"say": "hello"}'
TIMESTAMP = "2021-07-25T10:00:00Z"
SIGNATURE = "Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk="
SUPERSEDED = "tRDSF7URY8BLCDlaBcQ7FHu051Zk+aAB0NKMP53teMw="  # published with BODY + TIMESTAMP
NOW = datetime(2021, 7, 25, 10, 2, 30, tzinfo=UTC)

adapter = ZendeskAdapter()


def headers(signature: str = SIGNATURE, timestamp: str = TIMESTAMP, **extra: str) -> dict[str, str]:
    return {"X-Zendesk-Webhook-Signature": signature,
            "X-Zendesk-Webhook-Signature-Timestamp": timestamp, **extra}


def test_sign_matches_fixture():
    assert sign(SECRET, TIMESTAMP, BODY) == SIGNATURE


def test_verify_accepts_fixture_and_returns_invocation_id():
    sent = headers(**{"X-Zendesk-Webhook-Invocation-Id": "8350205582"})
    assert adapter.verify(sent, BODY, SECRET, now=NOW) == "8350205582"


def test_verify_rejects_superseded_body_then_timestamp_order():
    with pytest.raises(SignatureError, match="no matching signature"):
        adapter.verify(headers(SUPERSEDED), BODY, SECRET, now=NOW)


def test_verify_uses_secret_as_utf8_not_base64_decoded():
    decoded_key = base64.urlsafe_b64decode(SECRET)
    wrong = base64.b64encode(hmac.new(decoded_key, TIMESTAMP.encode() + BODY, hashlib.sha256)
                             .digest()).decode()
    with pytest.raises(SignatureError):
        adapter.verify(headers(wrong), BODY, SECRET, now=NOW)


@pytest.mark.parametrize("now", [datetime(2021, 7, 25, 9, 54, 59, tzinfo=UTC),
                                 datetime(2021, 7, 25, 10, 5, 1, tzinfo=UTC)])
def test_verify_rejects_timestamp_outside_window(now):
    with pytest.raises(SignatureError, match="tolerance"):
        adapter.verify(headers(), BODY, SECRET, now=now)


def test_verify_accepts_iso_timestamp_with_offset():
    timestamp = "2021-07-25T12:00:00+02:00"
    assert adapter.verify(headers(sign(SECRET, timestamp, BODY), timestamp), BODY, SECRET, now=NOW)


@pytest.mark.parametrize("timestamp", ["1627207200", "2021-07-25T10:00:00", "2021-13-25T10:00:00Z",
                                       "2021-07-25", "yesterday",
                                       "\u0662021-07-25T10:00:00Z"])  # non-ASCII digit
def test_verify_rejects_malformed_timestamp(timestamp):
    with pytest.raises(SignatureError, match="malformed x-zendesk-webhook-signature-timestamp"):
        adapter.verify(headers(sign(SECRET, "x", BODY), timestamp), BODY, SECRET, now=NOW)


@pytest.mark.parametrize("missing", ["X-Zendesk-Webhook-Signature",
                                     "X-Zendesk-Webhook-Signature-Timestamp"])
def test_verify_rejects_missing_header(missing):
    sent = headers()
    del sent[missing]
    with pytest.raises(SignatureError, match=f"missing {missing.lower()}"):
        adapter.verify(sent, BODY, SECRET, now=NOW)


@pytest.mark.parametrize("signature", ["not base64!", "Rry/4TtIdFyawtXXp8QdI6tlAUUQ/5kL1OTp5qo/ZIk",
                                       "é"])
def test_verify_rejects_malformed_signature(signature):
    with pytest.raises(SignatureError, match="malformed"):
        adapter.verify(headers(signature), BODY, SECRET, now=NOW)


def test_delivery_id_without_invocation_id_is_stable_across_retries():
    first = adapter.verify(headers(), BODY, SECRET, now=NOW)
    retry_at = "2021-07-25T10:04:00Z"
    retry = adapter.verify(headers(sign(SECRET, retry_at, BODY), retry_at), BODY, SECRET, now=NOW)
    assert first == retry
    assert first.startswith("sha256:") and len(first) == 71


def test_verify_rejects_unusable_invocation_id():
    sent = headers(**{"X-Zendesk-Webhook-Invocation-Id": "a b"})
    with pytest.raises(SignatureError, match="malformed x-zendesk-webhook-invocation-id"):
        adapter.verify(sent, BODY, SECRET, now=NOW)


# --- parse ----------------------------------------------------------------------------------

# The documented trigger body as Zendesk renders it (placeholders filled, unset ones empty).
TRIGGER = {"ticket": {"id": "35436", "subject": "Can't sign in - lost my phone",
                      "description": "Hi, I lost my phone and can't get my MFA codes.",
                      "requester": {"email": "ana@example.com", "external_id": ""}}}


def test_parse_maps_trigger_body_to_recovery_requested():
    event = adapter.parse({}, TRIGGER)
    assert event.type == "recovery.requested"
    assert event.data == {"user_email": "ana@example.com", "external_user_id": None,
                          "ticket_id": "35436", "requester_email": "ana@example.com",
                          "subject": "Can't sign in - lost my phone",
                          "text": "Hi, I lost my phone and can't get my MFA codes."}


def test_parse_takes_user_from_ticket_when_an_agent_files_for_someone_else():
    ticket = {**TRIGGER["ticket"], "id": 35437,
              "requester": {"email": "agent@example.com", "external_id": "agent-7"},
              "user": {"email": "ana@example.com"}}
    event = adapter.parse({}, {"ticket": ticket})
    assert event.data["user_email"] == "ana@example.com"
    assert event.data["external_user_id"] is None
    assert event.data["requester_email"] == "agent@example.com"
    assert event.data["ticket_id"] == "35437"


def test_parse_never_falls_back_to_the_requester_when_the_user_field_is_empty():
    # The requester may be the agent: an unfilled "user" field must not open a case for them.
    ticket = {**TRIGGER["ticket"], "requester": {"email": "agent@example.com"},
              "user": {"email": "", "external_id": ""}}
    with pytest.raises(PayloadError, match="names no user"):
        adapter.parse({}, {"ticket": ticket})


def test_parse_accepts_external_id_alone():
    ticket = {"id": "1", "requester": {"email": "", "external_id": "u-42"}}
    assert adapter.parse({}, {"ticket": ticket}).data["external_user_id"] == "u-42"


# Captured event-subscription payload (reference 2.1, Prismatic example).
EVENT = {"type": "zen:event-type:ticket.created", "account_id": 88888888,
         "id": "01HNXXXX-CTEXAMPLE", "time": "2024-04-17T17:18:10Z",
         "zendesk_event_version": "2022-11-06", "subject": "zen:ticket:35436",
         "detail": {"id": "35436", "status": "Open", "via": {"channel": "web"},
                    "created_at": "2024-04-17T17:18:10Z", "updated_at": "2024-04-17T17:18:10Z"},
         "event": {"current": {"status": "Open"}}}


def test_parse_refuses_event_subscription_and_points_to_the_trigger_body():
    with pytest.raises(PayloadError, match="ticket 35436 names no requester email.*trigger"):
        adapter.parse({}, EVENT)


@pytest.mark.parametrize(("payload", "message"), [
    ({**EVENT, "type": "zen:event-type:ticket.comment_added"}, "not supported"),
    ({**EVENT, "detail": None}, "detail must be an object"),
    ({"say": "hello"}, "not a Zendesk trigger body"),
    ({"ticket": "35436"}, "ticket must be an object"),
    ({"ticket": {"id": "1", "requester": {"email": ""}}}, "names no user"),
    ({"ticket": {"requester": {"email": "a@x.io"}}}, "ticket.id is required"),
    ({"ticket": {"id": "1", "requester": ["a@x.io"]}}, "ticket.requester must be an object"),
    ({"ticket": {"id": "1", "requester": {"email": "a@x.io"}, "subject": 5}}, "must be a string"),
])
def test_parse_refuses_unmappable_payloads(payload, message):
    with pytest.raises(PayloadError, match=message):
        adapter.parse({}, payload)
