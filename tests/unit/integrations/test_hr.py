"""Kind `hr`: Standard Webhooks signing, `recovery.attested` only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from integrations.base import PayloadError, SignatureError
from integrations.hr.generic import HRAdapter
from integrations.webhooks import sign_standard

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
CASE_ID = "7b0e4c1e-61c4-4f1a-9d5e-3f1f4c2a9b10"
EXAMPLE: dict[str, Any] = {"type": "recovery.attested", "timestamp": "2024-05-01T09:30:00Z",
           "data": {"user_email": "ana@example.com", "voucher_email": "boss@example.com",
                    "relation": "manager", "reference": "HR-4711"}}

adapter = HRAdapter()


def test_verify_uses_standard_webhooks_published_vector():
    at = datetime.fromtimestamp(1614265330, UTC)
    sent = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
            "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert adapter.verify(sent, b'{"test": 2432232314}', SECRET, now=at) == sent["webhook-id"]
    with pytest.raises(SignatureError):
        adapter.verify(sent, b'{"test": 2432232315}', SECRET, now=at)


def test_verify_rejects_a_signature_from_another_secret():
    other = "whsec_" + "A" * 32
    body = b'{"type": "recovery.attested"}'
    sent = {"webhook-id": "msg_1", "webhook-timestamp": str(int(NOW.timestamp())),
            "webhook-signature": sign_standard(other, "msg_1", int(NOW.timestamp()), body)}
    with pytest.raises(SignatureError, match="no matching signature"):
        adapter.verify(sent, body, SECRET, now=NOW)


def test_parse_maps_documented_attestation():
    event = adapter.parse({}, EXAMPLE)
    assert event.type == "recovery.attested"
    assert event.data == {"case_id": None, "user_email": "ana@example.com",
                          "voucher_email": "boss@example.com", "relation": "manager",
                          "reference": "HR-4711"}


def test_parse_accepts_case_id_without_user_email():
    data = {"case_id": CASE_ID, "voucher_email": "hr@example.com", "relation": "hr",
            "reference": "HR-1"}
    event = adapter.parse({}, {"type": "recovery.attested", "data": data})
    assert event.data["case_id"] == CASE_ID
    assert event.data["relation"] == "hr"


@pytest.mark.parametrize("event_type", ["recovery.requested", "verification.callback_result",
                                        "recovery.refused", None])
def test_parse_refuses_anything_but_an_attestation(event_type):
    with pytest.raises(PayloadError, match="payload.type must be one of: recovery.attested$"):
        adapter.parse({}, {**EXAMPLE, "type": event_type})


@pytest.mark.parametrize(("change", "message"), [
    ({"user_email": None}, "must name the case_id or the user_email"),
    ({"relation": "colleague"}, "relation must be one of: manager, hr"),
    ({"relation": "Manager"}, "relation must be one of"),
    ({"relation": None}, "relation must be one of"),
    ({"voucher_email": None}, "voucher_email is required"),
    ({"voucher_email": "boss"}, "voucher_email is not an email"),
    ({"reference": ""}, "reference is required"),
    ({"reference": ["HR-1"]}, "reference must be a string"),
    ({"approved": True}, "unknown keys: approved"),
])
def test_parse_refuses_incomplete_attestations(change, message):
    data = {**EXAMPLE["data"], **change}
    with pytest.raises(PayloadError, match=message):
        adapter.parse({}, {"type": "recovery.attested", "data": data})
