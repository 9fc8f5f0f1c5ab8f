"""Outbound HTTP for every adapter: short timeouts, no redirects, HTTPS only, an SSRF guard that
connects to the address it vetted, and one mapping of outcomes to Transient/Permanent errors."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from integrations.base import PermanentDeliveryError, TransientDeliveryError

log = logging.getLogger(__name__)

ALLOWLIST_ENV = "REKEY_OUTBOUND_ALLOWLIST"
MAX_RESPONSE_BYTES = 1024 * 1024
USER_AGENT = "Rekey/0.1 (+account-recovery)"
# Status codes a sender retries (the Jira/Standard Webhooks list); every other 4xx is final.
RETRYABLE_4XX = frozenset({408, 409, 425, 429})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

# Checked besides `is_global`, which still calls multicast, 6to4 and IPv4-mapped addresses
# global: any of these lets a tenant-supplied URL reach the host, the LAN or the metadata API.
_BLOCKED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::ffff:0:0/96", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# inet_aton accepts 2130706433, 0177.0.0.1 and 0x7f.1 as 127.0.0.1: such a host is refused
# outright rather than trusted to resolve the way our checks read it.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$", re.I)


class BlockedDestinationError(PermanentDeliveryError):
    """The URL points where Rekey must not send (scheme, private address, credentials)."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every A and AAAA address of `host` (a DNS failure is transient)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise TransientDeliveryError(f"cannot resolve {host}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def parse_allowlist(text: str) -> tuple[str, ...]:
    """Split a comma-separated list of host names and CIDRs."""
    return tuple(item.strip().lower() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class OutboundPolicy:
    """Where and how adapters may send; tests allow-list 127.0.0.1 to reach the local fakes."""

    allowlist: tuple[str, ...] = ()
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    verify: bool | str = True  # CA bundle path for tests with a local TLS fake
    resolver: Resolver = field(default=system_resolver, repr=False, compare=False)

    @classmethod
    def from_env(cls) -> OutboundPolicy:
        """The policy from REKEY_OUTBOUND_ALLOWLIST."""
        return cls(allowlist=parse_allowlist(os.environ.get(ALLOWLIST_ENV, "")))

    def host_allowed(self, host: str) -> bool:
        """True when the host name, or the literal address, is allow-listed."""
        if host.lower().rstrip(".") in self.allowlist:
            return True
        try:
            return self.address_allowed(ipaddress.ip_address(host))
        except ValueError:
            return False

    def address_allowed(self, ip: IPAddress) -> bool:
        """True when the address falls in an allow-listed CIDR."""
        for item in self.allowlist:
            try:
                if ip in ipaddress.ip_network(item, strict=False):
                    return True
            except ValueError:
                continue  # a host name entry
        return False


def is_blocked_address(ip: IPAddress) -> bool:
    """True for any address that is not plainly global unicast."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        )
        if embedded is not None and is_blocked_address(embedded):
            return True
    return (not ip.is_global) or ip.is_multicast or any(ip in net for net in _BLOCKED)


@dataclass(frozen=True)
class Destination:
    """A vetted URL: where to connect (the pinned address) and what to call the host."""

    url: str
    host: str
    port: int
    address: str

    @property
    def pinned_url(self) -> str:
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        netloc = f"{literal}:{self.port}"
        return urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        literal = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.url.startswith("https:") else 80
        return literal if self.port == default else f"{literal}:{self.port}"


def check_destination(url: str, policy: OutboundPolicy) -> Destination:
    """Vet `url` (at configuration and again at every send); raise BlockedDestinationError."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("https", "http") or not host:
        raise BlockedDestinationError("only absolute http(s) URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise BlockedDestinationError("credentials in the URL are not allowed")
    allowed_host = policy.host_allowed(host)
    if parts.scheme != "https" and not allowed_host:
        raise BlockedDestinationError("plain http is allowed only to allow-listed hosts")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None and _NUMERIC_HOST.match(host):
        raise BlockedDestinationError("numeric host is not a canonical IP address")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise BlockedDestinationError("invalid port") from exc
    addresses = [str(literal)] if literal is not None else policy.resolver(host, port)
    if not addresses:
        raise TransientDeliveryError(f"no address for {host}")
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if is_blocked_address(ip) and not (allowed_host or policy.address_allowed(ip)):
            raise BlockedDestinationError(f"{host} resolves to a non-global address")
    # IPv4 first: many hosts resolve AAAA but have no IPv6 route out.
    first = sorted(addresses, key=lambda a: ":" in a)[0]
    return Destination(url=url, host=host, port=port, address=first.split("%", 1)[0])


class _PinnedAdapter(HTTPAdapter):
    """Connects to the vetted address while TLS still sends and verifies the real host name,
    so a DNS answer that changes after the check (rebinding) is never used."""

    def __init__(self, server_hostname: str | None):
        self._server_hostname = server_hostname
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(
        self, request: Any, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params["scheme"] == "https" and self._server_hostname:
            pool_kwargs["server_hostname"] = self._server_hostname
            pool_kwargs["assert_hostname"] = self._server_hostname
        return host_params, pool_kwargs


@dataclass(frozen=True)
class OutboundResponse:
    """A 2xx answer, body capped at MAX_RESPONSE_BYTES."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The decoded JSON body, or None when there is none or it is not JSON."""
        try:
            return json.loads(self.content)
        except ValueError:
            return None


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def send(
    method: str,
    url: str,
    *,
    policy: OutboundPolicy,
    headers: Mapping[str, str] | None = None,
    data: bytes | Mapping[str, str] | None = None,
    auth: tuple[str, str] | None = None,
) -> OutboundResponse:
    """Send one request to a vetted, pinned address; map every non-2xx to a delivery error."""
    dest = check_destination(url, policy)
    # Never the URL's query or the body in a message: both may carry a code or a token.
    where = f"{method} {dest.host}{urlsplit(url).path}"
    pinned_name = None if _is_literal(dest.host) else dest.host
    with requests.Session() as session:
        session.trust_env = False  # no proxy, .netrc or CA override from the environment
        session.mount("https://", _PinnedAdapter(pinned_name))
        session.mount("http://", _PinnedAdapter(None))
        try:
            response = session.request(
                method,
                dest.pinned_url,
                headers={"User-Agent": USER_AGENT, **(headers or {}), "Host": dest.host_header},
                data=data,
                auth=auth,
                allow_redirects=False,
                timeout=(policy.connect_timeout, policy.read_timeout),
                verify=policy.verify,
                stream=True,
            )
            content = _read_capped(response)
        except requests.Timeout as exc:
            raise TransientDeliveryError(f"{where}: timed out") from exc
        except requests.RequestException as exc:
            raise TransientDeliveryError(f"{where}: {type(exc).__name__}") from exc
    status = response.status_code
    log.debug("outbound %s -> %s", where, status)
    if 200 <= status < 300:
        return OutboundResponse(status, response.headers, content)
    if 300 <= status < 400:
        raise PermanentDeliveryError(f"{where}: {status}, redirects are not followed")
    if status in RETRYABLE_4XX or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise TransientDeliveryError(f"{where}: {status}", retry_after=retry_after)
    raise PermanentDeliveryError(f"{where}: {status}")


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _read_capped(response: requests.Response) -> bytes:
    chunks, total = [], 0
    for chunk in response.iter_content(64 * 1024):
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_RESPONSE_BYTES:
            break  # an answer this large is not one of ours; keep what fits
    response.close()
    return b"".join(chunks)[:MAX_RESPONSE_BYTES]


@dataclass(frozen=True)
class OutboundExchange:
    """Any answer (2xx or not), body capped: for adapters whose vendor gives a non-2xx a meaning
    (privacyIDEA's 404 for a token already gone is success to an idempotent delete)."""

    status: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The decoded JSON body, or None when there is none or it is not JSON."""
        try:
            return json.loads(self.content)
        except ValueError:
            return None

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("Retry-After"))


def exchange(
    method: str,
    url: str,
    *,
    policy: OutboundPolicy,
    headers: Mapping[str, str] | None = None,
    data: bytes | Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> OutboundExchange:
    """Like `send` (vetted, pinned, no redirects, capped), but returns every status to the caller;
    only a network failure or timeout raises (TransientDeliveryError)."""
    dest = check_destination(url, policy)
    where = f"{method} {dest.host}{urlsplit(url).path}"
    pinned_name = None if _is_literal(dest.host) else dest.host
    with requests.Session() as session:
        session.trust_env = False
        session.mount("https://", _PinnedAdapter(pinned_name))
        session.mount("http://", _PinnedAdapter(None))
        try:
            response = session.request(
                method,
                dest.pinned_url,
                headers={"User-Agent": USER_AGENT, **(headers or {}), "Host": dest.host_header},
                data=data,
                params=params,
                allow_redirects=False,
                timeout=(policy.connect_timeout, policy.read_timeout),
                verify=policy.verify,
                stream=True,
            )
            content = _read_capped(response)
        except requests.Timeout as exc:
            raise TransientDeliveryError(f"{where}: timed out") from exc
        except requests.RequestException as exc:
            raise TransientDeliveryError(f"{where}: {type(exc).__name__}") from exc
    log.debug("outbound %s -> %s", where, response.status_code)
    return OutboundExchange(response.status_code, response.headers, content)
