"""Kind `standard`: Standard Webhooks v1 against the spec's published vectors, and our envelope."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from standardwebhooks.webhooks import Webhook
from werkzeug.datastructures import EnvironHeaders

from integrations.base import PayloadError, SignatureError
from integrations.ticketing.standard import StandardAdapter
from integrations.webhooks import MAX_SUBJECT, sign_standard, standard_key, verify_standard

# Published vector: standard-webhooks libraries/python/tests/test_webhooks.py (test_sign_function).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
BAD = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="

adapter = StandardAdapter()


def reference_signature(secret: str = SECRET, at: datetime = NOW, body: bytes = VECTOR_BODY) -> str:
    """The signature as the reference library computes it: an oracle independent of our code."""
    return Webhook(secret).sign(MSG_ID, at, body.decode())


def headers(signature: str, at: datetime = NOW, msg_id: str = MSG_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature}


def test_published_vector_signs_and_verifies():
    assert sign_standard(SECRET, MSG_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG
    at = datetime.fromtimestamp(VECTOR_TS, UTC)
    assert adapter.verify(headers(VECTOR_SIG, at), VECTOR_BODY, SECRET, now=at) == MSG_ID


def test_signature_matches_reference_library_at_current_time():
    assert sign_standard(SECRET, MSG_ID, int(NOW.timestamp()), VECTOR_BODY) == reference_signature()


def test_verify_rejects_signature_differing_in_last_char():
    at = datetime.fromtimestamp(VECTOR_TS, UTC)
    wrong = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="
    with pytest.raises(SignatureError, match="no matching signature"):
        adapter.verify(headers(wrong, at), VECTOR_BODY, SECRET, now=at)


def test_verify_accepts_multi_signature_header_when_only_third_is_valid():
    value = f"{BAD} v2,{BAD[3:]} {reference_signature()} {BAD}"
    assert adapter.verify(headers(value), VECTOR_BODY, SECRET, now=NOW) == MSG_ID


@pytest.mark.parametrize("offset", [timedelta(minutes=-5, seconds=-1),
                                    timedelta(minutes=5, seconds=1)])
def test_verify_rejects_timestamp_outside_five_minutes(offset):
    at = NOW + offset
    with pytest.raises(SignatureError, match="tolerance"):
        adapter.verify(headers(reference_signature(at=at), at), VECTOR_BODY, SECRET, now=NOW)


@pytest.mark.parametrize("offset", [timedelta(minutes=-5), timedelta(minutes=5)])
def test_verify_accepts_timestamp_at_the_edge_of_the_window(offset):
    at = NOW + offset
    assert adapter.verify(headers(reference_signature(at=at), at), VECTOR_BODY, SECRET, now=NOW)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_missing_header(missing):
    sent = headers(reference_signature())
    del sent[missing]
    with pytest.raises(SignatureError, match=f"missing {missing}"):
        adapter.verify(sent, VECTOR_BODY, SECRET, now=NOW)


@pytest.mark.parametrize("timestamp", ["hello", "1614265330.5", "-1614265330", " ", "1e9"])
def test_verify_rejects_non_numeric_timestamp(timestamp):
    sent = headers(reference_signature()) | {"webhook-timestamp": timestamp}
    with pytest.raises(SignatureError):
        adapter.verify(sent, VECTOR_BODY, SECRET, now=NOW)


@pytest.mark.parametrize("secret", [SECRET, SECRET.removeprefix("whsec_")])
def test_verify_accepts_secret_with_and_without_prefix(secret):
    assert adapter.verify(headers(reference_signature()), VECTOR_BODY, secret, now=NOW) == MSG_ID


@pytest.mark.parametrize("value", [
    "v1,dawfeoifkpqwoekfpqoekf",  # valid shape, wrong length
    "TRUNCATED",  # replaced below by the valid header's first 8 characters
    "v1,",
    "v1",
    "",
])
def test_verify_rejects_malformed_signature(value):
    value = reference_signature()[:8] if value == "TRUNCATED" else value
    with pytest.raises(SignatureError):
        adapter.verify(headers(value), VECTOR_BODY, SECRET, now=NOW)


@pytest.mark.parametrize("version", ["v1a", "v2", "V1", "v0"])
def test_verify_ignores_other_signature_versions(version):
    # The right digest under another version label must not pass: no scheme downgrade.
    value = version + reference_signature()[2:]
    with pytest.raises(SignatureError, match="no matching signature"):
        adapter.verify(headers(value), VECTOR_BODY, SECRET, now=NOW)


def test_verify_rejects_reserialised_body():
    with pytest.raises(SignatureError):
        adapter.verify(headers(reference_signature()), b'{"test":2432232314}', SECRET, now=NOW)


def test_verify_reads_werkzeug_headers_case_insensitively():
    environ = {"HTTP_WEBHOOK_ID": MSG_ID, "HTTP_WEBHOOK_TIMESTAMP": str(int(NOW.timestamp())),
               "HTTP_WEBHOOK_SIGNATURE": reference_signature()}
    # What Flask hands the intake (`request.headers`); werkzeug's stubs do not declare it a
    # Mapping, though it behaves as one.
    werkzeug_headers = cast(Mapping[str, str], EnvironHeaders(environ))
    assert adapter.verify(werkzeug_headers, VECTOR_BODY, SECRET, now=NOW) == MSG_ID
    mixed = {"Webhook-Id": MSG_ID, "WEBHOOK-TIMESTAMP": str(int(NOW.timestamp())),
             "Webhook-Signature": reference_signature()}
    assert adapter.verify(mixed, VECTOR_BODY, SECRET, now=NOW) == MSG_ID


def test_delivery_id_is_stable_across_retries():
    later = NOW + timedelta(hours=5)
    retry = headers(reference_signature(at=later), later)
    assert adapter.verify(retry, VECTOR_BODY, SECRET, now=later) == MSG_ID


@pytest.mark.parametrize("msg_id", ["msg.1", "msg 1", "x" * 201])
def test_verify_rejects_unusable_webhook_id(msg_id):
    signature = sign_standard(SECRET, msg_id, int(NOW.timestamp()), VECTOR_BODY)
    with pytest.raises(SignatureError, match="malformed webhook-id"):
        adapter.verify(headers(signature, msg_id=msg_id), VECTOR_BODY, SECRET, now=NOW)


def test_error_reasons_never_contain_the_secret():
    reasons = []
    for sent in (headers("v1,AAAA"), headers(reference_signature(), NOW - timedelta(hours=1)), {}):
        with pytest.raises(SignatureError) as caught:
            adapter.verify(sent, VECTOR_BODY, SECRET, now=NOW)
        reasons.append(str(caught.value))
    assert all("MfKQ9r8G" not in reason for reason in reasons)


def test_misconfigured_secret_is_a_server_error_not_a_caller_error():
    with pytest.raises(ValueError, match="not base64") as caught:
        standard_key("whsec_not*base64!")
    assert "not*base64" not in str(caught.value)
    with pytest.raises(ValueError, match="timezone"):
        verify_standard(headers(reference_signature()), VECTOR_BODY, SECRET,
                        now=NOW.replace(tzinfo=None))


def test_standard_key_accepts_unpadded_base64():
    key = base64.b64encode(b"k" * 32).decode().rstrip("=")
    assert standard_key("whsec_" + key) == b"k" * 32


# --- parse ----------------------------------------------------------------------------------

def test_parse_maps_recovery_requested():
    event = adapter.parse({}, {"type": "recovery.requested", "timestamp": "2024-05-01T09:30:00Z",
                               "data": {"user_email": "ana@example.com", "ticket_id": 4711,
                                        "subject": "Lost my phone", "text": "Can't sign in.\n"}})
    assert event.type == "recovery.requested"
    assert event.data == {"user_email": "ana@example.com", "external_user_id": None,
                          "ticket_id": "4711", "requester_email": None,
                          "subject": "Lost my phone", "text": "Can't sign in."}


def test_parse_maps_recovery_attested():
    case_id = "7b0e4c1e-61c4-4f1a-9d5e-3f1f4c2a9b10"
    event = adapter.parse({}, {"type": "recovery.attested", "data": {
        "case_id": case_id.upper(), "voucher_email": "boss@example.com", "relation": "manager",
        "reference": "HR-1"}})
    assert event.type == "recovery.attested"
    assert event.data == {"case_id": case_id, "user_email": None,
                          "voucher_email": "boss@example.com", "relation": "manager",
                          "reference": "HR-1"}


def test_parse_maps_callback_result():
    event = adapter.parse({}, {"type": "verification.callback_result",
                               "data": {"call_id": "c-1", "status": "answered"}})
    assert event.type == "verification.callback_result"
    assert event.data == {"call_id": "c-1", "status": "answered", "provider_id": None}


def test_parse_truncates_free_text_and_drops_control_characters():
    event = adapter.parse({}, {"type": "recovery.requested", "data": {
        "external_user_id": "u-1", "subject": "s" * (MAX_SUBJECT + 50), "text": "a\x00b\tc"}})
    assert len(event.data["subject"]) == MAX_SUBJECT
    assert event.data["text"] == "ab\tc"


def test_parse_treats_empty_strings_as_absent():
    event = adapter.parse({}, {"type": "recovery.requested", "data": {
        "user_email": "ana@example.com", "external_user_id": "", "requester_email": "  "}})
    assert event.data["external_user_id"] is None
    assert event.data["requester_email"] is None


@pytest.mark.parametrize(("payload", "message"), [
    ([], "payload must be an object"),
    ({"type": "recovery.reset", "data": {}}, "payload.type must be one of"),
    ({"type": "recovery.requested"}, "payload.data must be an object"),
    ({"type": "recovery.requested", "data": {"subject": "x"}}, "names no user"),
    ({"type": "recovery.requested", "data": {"user_mail": "a@b.c"}}, "unknown keys: user_mail"),
    ({"type": "recovery.requested", "data": {"user_email": 7}}, "user_email must be a string"),
    ({"type": "recovery.requested", "data": {"user_email": "not-an-email"}}, "not an email"),
    ({"type": "recovery.requested", "data": {"external_user_id": True}}, "string or an integer"),
    ({"type": "recovery.requested", "data": {"external_user_id": "a\nb"}}, "single line"),
    ({"type": "recovery.requested", "data": {"external_user_id": "x" * 201}}, "longer than 200"),
    ({"type": "recovery.attested", "data": {"case_id": "42", "voucher_email": "b@x.io",
                                            "relation": "hr", "reference": "r"}}, "UUID"),
    ({"type": "recovery.attested", "data": {"user_email": "a@x.io", "voucher_email": "b@x.io",
                                            "relation": "peer", "reference": "r"}}, "relation"),
    ({"type": "verification.callback_result", "data": {"call_id": "c", "status": "ok"}}, "status"),
    ({"type": "verification.callback_result", "data": {"status": "failed"}}, "call_id is required"),
])
def test_parse_refuses_unmappable_payloads(payload, message):
    with pytest.raises(PayloadError, match=message):
        adapter.parse({}, payload)


def test_parse_errors_do_not_echo_values():
    with pytest.raises(PayloadError) as caught:
        adapter.parse({}, {"type": "recovery.requested", "data": {"user_email": "s3cr3t-value"}})
    assert "s3cr3t" not in str(caught.value)
