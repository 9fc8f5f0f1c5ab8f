"""The outbound HTTP helper: SSRF guard, pinning, no redirects, outcome mapping."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from integrations.base import PermanentDeliveryError, TransientDeliveryError
from integrations.fakes import CallbackReceiver, Reply
from integrations.fakes.tls import make_test_tls
from integrations.http import (
    BlockedDestinationError,
    OutboundPolicy,
    check_destination,
    is_blocked_address,
    parse_allowlist,
    parse_retry_after,
    send,
)

STRICT = OutboundPolicy()  # production defaults: nothing allow-listed


def resolver_for(table: dict[str, list[str]], calls: list[str] | None = None):
    def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]

    return resolve


class TestSsrfGuard:
    @pytest.mark.parametrize(
        "url",
        [
            "https://localhost/",  # a name that resolves to 127.0.0.1
            "https://127.0.0.1/",
            "https://127.1.2.3/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:7f00:1]/",
            "https://2130706433/",
            "https://0177.0.0.1/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://169.254.169.254/latest/meta-data/",
            "https://0.0.0.0/",
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://172.31.255.254/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",
            "https://224.0.0.1/",
            "https://239.255.255.250/",
            "https://240.0.0.1/",
            "https://255.255.255.255/",
            "https://[::1]/",
            "https://[::]/",
            "https://[fc00::1]/",
            "https://[fd12:3456::1]/",
            "https://[fe80::1]/",
            "https://[ff02::1]/",
            "https://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
            "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 wrapping 169.254.169.254
        ],
    )
    def test_send_blocked_for_non_global_destination(self, url: str) -> None:
        with pytest.raises(BlockedDestinationError):
            send("POST", url, policy=STRICT, data=b"{}")

    def test_check_blocked_for_name_resolving_to_private_address(self) -> None:
        policy = OutboundPolicy(resolver=resolver_for({"hooks.example.com": ["10.0.0.7"]}))
        with pytest.raises(BlockedDestinationError, match="non-global"):
            check_destination("https://hooks.example.com/x", policy)

    def test_check_blocked_when_any_record_is_private(self) -> None:
        table = {"mixed.example.com": ["93.184.216.34", "2606:2800:220:1::1", "192.168.0.9"]}
        with pytest.raises(BlockedDestinationError):
            check_destination("https://mixed.example.com/",
                              OutboundPolicy(resolver=resolver_for(table)))

    def test_check_pins_first_address_of_global_name(self) -> None:
        table = {"api.example.com": ["93.184.216.34", "2606:2800:220:1::1"]}
        dest = check_destination("https://api.example.com/a?b=1",
                                 OutboundPolicy(resolver=resolver_for(table)))
        assert dest.address == "93.184.216.34"
        assert dest.pinned_url == "https://93.184.216.34:443/a?b=1"
        assert dest.host_header == "api.example.com"

    @pytest.mark.parametrize(
        "url",
        ["http://api.example.com/", "ftp://api.example.com/", "https://user:pw@api.example.com/",
         "//api.example.com/", "https:///nohost"],
    )
    def test_check_refuses_plain_http_credentials_and_odd_urls(self, url: str) -> None:
        policy = OutboundPolicy(resolver=resolver_for({"api.example.com": ["93.184.216.34"]}))
        with pytest.raises(BlockedDestinationError):
            check_destination(url, policy)

    @pytest.mark.parametrize(
        "address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::200e"]
    )
    def test_is_blocked_address_false_for_global_unicast(self, address: str) -> None:
        assert not is_blocked_address(ipaddress.ip_address(address))

    def test_is_blocked_address_true_for_mapped_global(self) -> None:
        # ::ffff:0:0/96 is refused whole: the mapped form is how filters get bypassed.
        assert is_blocked_address(ipaddress.ip_address("::ffff:8.8.8.8"))

    def test_allowlist_cidr_admits_loopback_but_not_other_private(self) -> None:
        policy = OutboundPolicy(allowlist=("127.0.0.1",))
        assert check_destination("http://127.0.0.1:8080/x", policy).address == "127.0.0.1"
        with pytest.raises(BlockedDestinationError):
            check_destination("https://10.0.0.1/", policy)
        with pytest.raises(BlockedDestinationError):
            check_destination("https://[::ffff:127.0.0.1]/", policy)

    def test_allowlist_parsed_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", " 127.0.0.1, 10.0.0.0/8 ,Hooks.Internal,")
        assert OutboundPolicy.from_env().allowlist == ("127.0.0.1", "10.0.0.0/8", "hooks.internal")
        assert parse_allowlist("") == ()


class TestSend:
    def test_send_allowlisted_loopback_delivers(self, outbound_policy: OutboundPolicy) -> None:
        with CallbackReceiver() as receiver:
            response = send("POST", receiver.callback_url, policy=outbound_policy,
                            data=b'{"ok": true}', headers={"Content-Type": "application/json"})
        assert response.status == 200
        assert receiver.deliveries == [{"ok": True}]

    def test_send_allowlisted_name_delivers(self) -> None:
        policy = OutboundPolicy(allowlist=("localhost",), read_timeout=2.0)
        with CallbackReceiver() as receiver:
            url = receiver.callback_url.replace("127.0.0.1", "localhost")
            send("POST", url, policy=policy, data=b"{}")
            assert receiver.requests[0].headers["host"].startswith("localhost:")

    def test_send_does_not_follow_redirect_to_internal_address(
        self, outbound_policy: OutboundPolicy
    ) -> None:
        with CallbackReceiver() as target, CallbackReceiver() as receiver:
            receiver.script([Reply.redirect(target.callback_url)])
            with pytest.raises(PermanentDeliveryError, match="redirects are not followed"):
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")
            receiver.script([Reply.redirect("http://169.254.169.254/latest/meta-data/", 307)])
            with pytest.raises(PermanentDeliveryError):
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")
        assert len(receiver.requests) == 2
        assert target.requests == []

    @pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 502, 503, 504])
    def test_send_transient_for_retryable_status(
        self, outbound_policy: OutboundPolicy, status: int
    ) -> None:
        with CallbackReceiver() as receiver:
            receiver.script([status])
            with pytest.raises(TransientDeliveryError):
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
    def test_send_permanent_for_other_4xx(
        self, outbound_policy: OutboundPolicy, status: int
    ) -> None:
        with CallbackReceiver() as receiver:
            receiver.script([status])
            with pytest.raises(PermanentDeliveryError) as info:
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")
        assert not isinstance(info.value, TransientDeliveryError)

    def test_send_retry_after_seconds_and_http_date(self, outbound_policy: OutboundPolicy) -> None:
        later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
        with CallbackReceiver() as receiver:
            receiver.script([Reply.rate_limited("7"), Reply(503, headers={"Retry-After": later})])
            with pytest.raises(TransientDeliveryError) as first:
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")
            with pytest.raises(TransientDeliveryError) as second:
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")
        assert first.value.retry_after == 7
        assert second.value.retry_after is not None and 100 < second.value.retry_after <= 120

    def test_send_timeout_is_transient(self, outbound_policy: OutboundPolicy) -> None:
        with CallbackReceiver() as receiver:
            receiver.script([Reply.hang(5.0)])
            with pytest.raises(TransientDeliveryError, match="timed out"):
                send("POST", receiver.callback_url, policy=outbound_policy, data=b"{}")

    def test_send_connection_refused_is_transient(self, outbound_policy: OutboundPolicy) -> None:
        receiver = CallbackReceiver().start()
        url = receiver.callback_url
        receiver.stop()
        with pytest.raises(TransientDeliveryError):
            send("POST", url, policy=outbound_policy, data=b"{}")

    def test_send_error_message_omits_query_and_body(self, outbound_policy: OutboundPolicy) -> None:
        with CallbackReceiver() as receiver:
            receiver.script([500])
            with pytest.raises(TransientDeliveryError) as info:
                send("POST", receiver.callback_url + "?token=s3cr3t", policy=outbound_policy,
                     data=b'{"code": "481516"}')
        assert "s3cr3t" not in str(info.value) and "481516" not in str(info.value)


class TestPinnedTls:
    """HTTPS goes to the vetted address, with SNI and certificate checks for the real name."""

    def test_send_https_connects_to_vetted_address_and_verifies_name(self, tmp_path) -> None:
        tls = make_test_tls(("hooks.rekey.test",), tmp_path)
        calls: list[str] = []
        # The name does not exist in DNS: only the pinned address can have been used.
        policy = OutboundPolicy(allowlist=("127.0.0.0/8",), verify=str(tls.ca_file),
                                resolver=resolver_for({"hooks.rekey.test": ["127.0.0.1"]}, calls))
        with CallbackReceiver(tls=tls.server_context()) as receiver:
            url = receiver.callback_url.replace("127.0.0.1", "hooks.rekey.test")
            response = send("POST", url, policy=policy, data=b'{"n": 1}')
        assert response.status == 200
        assert calls == ["hooks.rekey.test"]
        port = url.split(":")[2].split("/")[0]
        assert receiver.requests[0].headers["host"] == f"hooks.rekey.test:{port}"

    def test_send_https_refuses_certificate_for_another_name(self, tmp_path) -> None:
        tls = make_test_tls(("other.rekey.test",), tmp_path)
        policy = OutboundPolicy(allowlist=("127.0.0.0/8",), verify=str(tls.ca_file),
                                resolver=resolver_for({"hooks.rekey.test": ["127.0.0.1"]}))
        with CallbackReceiver(tls=tls.server_context()) as receiver:
            url = receiver.callback_url.replace("127.0.0.1", "hooks.rekey.test")
            with pytest.raises(TransientDeliveryError, match="SSLError"):
                send("POST", url, policy=policy, data=b"{}")
            assert receiver.deliveries == []


class TestRetryAfter:
    def test_parse_retry_after_forms(self) -> None:
        now = datetime(2025, 1, 1, tzinfo=UTC)
        assert parse_retry_after("7") == 7
        assert parse_retry_after("Wed, 01 Jan 2025 00:00:30 GMT", now=now.timestamp()) == 30
        assert parse_retry_after("Tue, 31 Dec 2024 23:00:00 GMT", now=now.timestamp()) == 0
        assert parse_retry_after("soon") is None
        assert parse_retry_after(None) is None
