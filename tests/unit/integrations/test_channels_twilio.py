"""The Twilio channel against the local Twilio fake, its callback signature and statuses."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

import pytest

from integrations.base import PayloadError, PermanentDeliveryError, TransientDeliveryError
from integrations.channels.twilio import (
    TwilioChannel,
    TwilioConfig,
    parse_status_callback,
    twilio_signature,
    validate_twilio_signature,
)
from integrations.fakes import FakeTwilio, Reply
from integrations.http import BlockedDestinationError, OutboundPolicy

CALLBACK = "https://rekey.example.com/v1/callbacks/twilio/int_1"


def channel_for(fake: FakeTwilio, policy: OutboundPolicy, **overrides: str) -> TwilioChannel:
    config = {"account_sid": fake.account_sid, "auth_token": fake.auth_token,
              "from_number": "+15005550006", "base_url": fake.url,
              "status_callback": CALLBACK, **overrides}
    return TwilioChannel(TwilioConfig(outbound=policy, **config))


class TestTwilioChannel:
    def test_conformance_sms_and_call_reach_twilio(
        self, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy
    ) -> None:
        channel = channel_for(fake_twilio, outbound_policy)
        sms = channel.send_sms("+14155550100", "Your Rekey code is 482913",
                               idempotency_key="c1:sms")
        call = channel.place_call("+14155550100", "Your code is 4 8 2 <9> & 1 3",
                                  idempotency_key="c1:call")
        assert channel.kind == "twilio"
        assert (sms.channel, call.channel) == ("sms", "voice")
        assert sms.provider_id.startswith("SM") and call.provider_id.startswith("CA")
        [message] = fake_twilio.messages
        assert message == {"To": "+14155550100", "From": "+15005550006",
                           "Body": "Your Rekey code is 482913", "StatusCallback": CALLBACK,
                           "sid": sms.provider_id, "idempotency_token": "c1:sms"}
        [placed] = fake_twilio.calls
        say = ET.fromstring(placed["Twiml"]).find("Say")  # noqa: S314 - our own TwiML
        assert say is not None and say.text == "Your code is 4 8 2 <9> & 1 3"
        first = fake_twilio.requests[0]
        assert first.headers["i-twilio-idempotency-token"] == "c1:sms"
        assert first.path == f"/2010-04-01/Accounts/{fake_twilio.account_sid}/Messages.json"

    def test_send_email_refused_for_good(
        self, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy
    ) -> None:
        channel = channel_for(fake_twilio, outbound_policy)
        with pytest.raises(PermanentDeliveryError):
            channel.send_email("a@b.c", "s", "b", idempotency_key="k")
        assert fake_twilio.requests == []

    def test_send_sms_retry_after_ambiguous_timeout_carries_same_token(
        self, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy
    ) -> None:
        channel = channel_for(fake_twilio, outbound_policy)
        fake_twilio.script([Reply.hang(3.0)])  # Twilio accepts, the answer never arrives in time
        with pytest.raises(TransientDeliveryError):
            channel.send_sms("+14155550100", "code 1", idempotency_key="c2:sms")
        retried = channel.send_sms("+14155550100", "code 1", idempotency_key="c2:sms")
        # The fake, like Twilio as documented, does not deduplicate: the user got two texts,
        # both tagged with the one token, and the retry's sid is the one Rekey keeps.
        assert [m["idempotency_token"] for m in fake_twilio.messages] == ["c2:sms", "c2:sms"]
        assert fake_twilio.messages[-1]["sid"] == retried.provider_id

    def test_send_sms_wrong_token_is_permanent(
        self, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy
    ) -> None:
        channel = channel_for(fake_twilio, outbound_policy, auth_token="wrong")
        with pytest.raises(PermanentDeliveryError, match="401"):
            channel.send_sms("+14155550100", "code", idempotency_key="k")
        assert fake_twilio.messages == []

    def test_send_sms_retry_mapping(
        self, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy
    ) -> None:
        channel = channel_for(fake_twilio, outbound_policy)
        fake_twilio.script([500, Reply.rate_limited("7"), 404, Reply.hang(3.0), 201])
        with pytest.raises(TransientDeliveryError):
            channel.send_sms("+14155550100", "c", idempotency_key="k1")
        with pytest.raises(TransientDeliveryError) as limited:
            channel.send_sms("+14155550100", "c", idempotency_key="k2")
        assert limited.value.retry_after == 7
        with pytest.raises(PermanentDeliveryError) as missing:
            channel.send_sms("+14155550100", "c", idempotency_key="k3")
        assert not isinstance(missing.value, TransientDeliveryError)
        with pytest.raises(TransientDeliveryError, match="timed out"):
            channel.send_sms("+14155550100", "c", idempotency_key="k4")
        assert channel.send_sms("+14155550100", "c", idempotency_key="k5").provider_id

    def test_send_sms_guard_stays_on_for_private_base_url(self, fake_twilio: FakeTwilio) -> None:
        channel = channel_for(fake_twilio, OutboundPolicy())
        with pytest.raises(BlockedDestinationError):
            channel.send_sms("+14155550100", "c", idempotency_key="k")
        assert fake_twilio.requests == []

    def test_send_sms_logs_no_body_and_no_full_number(
        self, fake_twilio: FakeTwilio, outbound_policy: OutboundPolicy,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.DEBUG)
        channel = channel_for(fake_twilio, outbound_policy)
        sent = channel.send_sms("+14155550123", "Your Rekey code is 739164", idempotency_key="c3")
        channel.place_call("+14155550123", "Your code is 7 3 9 1 6 4", idempotency_key="c4")
        fake_twilio.script([500])
        with pytest.raises(TransientDeliveryError) as failed:
            channel.send_sms("+14155550123", "Your Rekey code is 739164", idempotency_key="c5")
        assert sent.provider_id in caplog.text  # the logs do record the send
        for secret in ("739164", "7 3 9 1 6 4", "+14155550123", fake_twilio.auth_token):
            assert secret not in caplog.text
            assert secret not in str(failed.value)


class TestTwilioSignature:
    def test_validate_twilio_documented_example(self) -> None:
        # Twilio's security docs: auth token 12345, this URL and these params.
        params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
                  "From": "+14158675309", "To": "+18005551212"}
        url = "https://mycompany.com/myapp.php?foo=1&bar=2"
        assert validate_twilio_signature(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345")
        assert not validate_twilio_signature(url, {**params, "Digits": "1235"},
                                             "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "12345")
        assert not validate_twilio_signature(url, params, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "54321")

    def test_validate_twilio_ruby_voice_vector(self) -> None:
        # twilio-ruby's request_validator_spec voice request (empty values included).
        params = {
            "ToState": "California", "CalledState": "California", "Direction": "inbound",
            "FromState": "CA", "AccountSid": "ACba8bc05eacf94afdae398e642c9cc32d",
            "Caller": "+14153595711", "CallerZip": "94108", "CallerCountry": "US",
            "From": "+14153595711", "FromCity": "SAN FRANCISCO", "CallerCity": "SAN FRANCISCO",
            "To": "+14157669926", "FromZip": "94108", "FromCountry": "US", "ToCity": "",
            "CallStatus": "ringing", "CalledCity": "", "CallerState": "CA", "CalledZip": "",
            "ToZip": "", "ToCountry": "US", "CallSid": "CA136d09cd59a3c0ec8dbff44da5c03f31",
            "CalledCountry": "US", "Called": "+14157669926", "ApiVersion": "2010-04-01",
            "ApplicationSid": "AP44efecad51364e80b133bb7c07eb8204",
        }
        assert validate_twilio_signature("http://twiliotests.heroku.com/validate/voice", params,
                                         "oVb2kXoVy8GEfwBDjR8bk/ZZ6eA=",
                                         "2bd9e9638872de601313dc77410d3b23")

    def test_validate_twilio_signature_tolerates_default_port(self) -> None:
        params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
        signed = twilio_signature("https://rekey.example.com:443/cb", params, "tok")
        assert validate_twilio_signature("https://rekey.example.com/cb", params, signed, "tok")
        assert not validate_twilio_signature("https://rekey.example.com/cb", params, "", "tok")
        assert not validate_twilio_signature("https://rekey.example.com/cb", params, signed, "")

    def test_fake_status_callback_is_signed_like_twilio(self, fake_twilio: FakeTwilio) -> None:
        params, signature = fake_twilio.status_callback(CALLBACK, "SMabc", "delivered")
        assert validate_twilio_signature(CALLBACK, params, signature, fake_twilio.auth_token)
        assert parse_status_callback(params) == ("SMabc", "delivered")


class TestTwilioStatus:
    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"MessageSid": "SM1", "MessageStatus": "delivered"}, ("SM1", "delivered")),
            ({"MessageSid": "SM1", "MessageStatus": "undelivered"}, ("SM1", "failed")),
            ({"MessageSid": "SM1", "MessageStatus": "failed"}, ("SM1", "failed")),
            ({"SmsSid": "SM2", "SmsStatus": "sent"}, ("SM2", None)),
            ({"MessageSid": "SM1", "MessageStatus": "queued"}, ("SM1", None)),
            ({"CallSid": "CA1", "CallStatus": "completed"}, ("CA1", "answered")),
            ({"CallSid": "CA1", "CallStatus": "no-answer"}, ("CA1", "no_answer")),
            ({"CallSid": "CA1", "CallStatus": "busy"}, ("CA1", "no_answer")),
            ({"CallSid": "CA1", "CallStatus": "failed"}, ("CA1", "failed")),
            ({"CallSid": "CA1", "CallStatus": "ringing"}, ("CA1", None)),
            ({"CallSid": "CA1", "CallStatus": "completed", "AnsweredBy": "machine_start"},
             ("CA1", "no_answer")),
        ],
    )
    def test_parse_status_callback_maps_statuses(self, params, expected) -> None:
        assert parse_status_callback(params) == expected

    def test_parse_status_callback_rejects_other_payloads(self) -> None:
        with pytest.raises(PayloadError):
            parse_status_callback({"Body": "hello"})
