"""The OpenID Connect client: the authorization code flow with PKCE (S256), `state` and `nonce`,
and the ID token checked against the issuer's own keys. It parses, verifies and sends; it decides
nothing about what a sign-in proves (app/recovery/federated.py does).

Authlib builds the protocol messages (the authorization request with its PKCE challenge, the
token request); joserfc (Authlib's JOSE library, which replaces `authlib.jose`) verifies the ID
token's signature against the JWKS named by the issuer's discovery document and validates its
claims. Every HTTP call goes through `integrations.http.send`: https only (http to an
allow-listed host), no redirects, the SSRF guard, capped answers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from integrations.base import PermanentDeliveryError, TransientDeliveryError
from integrations.http import OutboundPolicy, send

# Asymmetric algorithms only: an HS256 token would be "signed" with the client secret, which the
# provider's key set cannot vouch for, and `none` is no signature at all.
ALGORITHMS = ["RS256", "PS256", "ES256"]
LEEWAY_SECONDS = 60


class FederatedSigninRejected(Exception):
    """The provider or its ID token failed a check; `reason` says which, for the audit trail
    (never a token or a code)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered nonsense (try again later)."""


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of a discovery document the code flow needs."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class VerifiedIdToken:
    """What a verified ID token says: who (`issuer`, `subject`) signed in when (`auth_time`)."""

    issuer: str
    subject: str
    auth_time: int
    issued_at: int


def _get_json(url: str, policy: OutboundPolicy) -> dict[str, Any]:
    try:
        answer = send("GET", url, policy=policy, headers={"Accept": "application/json"})
    except (PermanentDeliveryError, TransientDeliveryError) as exc:
        raise ProviderUnavailable(str(exc)) from exc
    body = answer.json()
    if not isinstance(body, dict):
        raise ProviderUnavailable(f"{urlsplit(url).path}: not a JSON object")
    return body


def discover(issuer: str, policy: OutboundPolicy) -> ProviderMetadata:
    """Read the issuer's discovery document (OpenID Connect Discovery 1.0, section 4)."""
    doc = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", policy)
    # Section 4.3: the document's issuer must be exactly the one we asked, or its keys and
    # endpoints speak for someone else.
    if doc.get("issuer") != issuer:
        raise ProviderUnavailable("the discovery document names another issuer")
    endpoints = {name: doc.get(name) for name in ("authorization_endpoint", "token_endpoint", "jwks_uri")}
    for name, value in endpoints.items():
        if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
            raise ProviderUnavailable(f"the discovery document has no usable {name}")
    if "S256" not in (doc.get("code_challenge_methods_supported") or ["S256"]):
        raise ProviderUnavailable("the provider does not support PKCE with S256")
    return ProviderMetadata(issuer=issuer, **endpoints)  # type: ignore[arg-type]


def new_flow_secrets() -> tuple[str, str, str]:
    """A fresh `state`, `nonce` and PKCE code verifier (RFC 7636: 43-128 characters)."""
    return generate_token(43), generate_token(43), generate_token(64)


def authorization_url(meta: ProviderMetadata, *, client_id: str, redirect_uri: str, state: str, nonce: str,
                      code_verifier: str) -> str:
    """Where the browser goes to sign in: a fresh sign-in (`prompt=login`, `max_age=0`), so the
    provider's `auth_time` says when the person actually proved who they are."""
    return str(prepare_grant_uri(
        meta.authorization_endpoint, client_id, "code", redirect_uri=redirect_uri, scope="openid", state=state,
        nonce=nonce, code_challenge=create_s256_code_challenge(code_verifier), code_challenge_method="S256",
        prompt="login", max_age="0"))


def exchange_code(meta: ProviderMetadata, *, client_id: str, client_secret: str, code: str, redirect_uri: str,
                  code_verifier: str, policy: OutboundPolicy) -> str:
    """Trade the authorization code for the ID token (client_secret_basic, RFC 6749 2.3.1)."""
    body = prepare_token_request("authorization_code", code=code, redirect_uri=redirect_uri,
                                 code_verifier=code_verifier)
    try:
        answer = send("POST", meta.token_endpoint, policy=policy,
                      headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                      data=body.encode(), auth=(quote(client_id, safe=""), quote(client_secret, safe="")))
    except PermanentDeliveryError as exc:
        # invalid_grant and friends: a replayed, expired or forged code, or a PKCE mismatch.
        raise FederatedSigninRejected("token_refused", "The identity provider refused the sign-in code.") from exc
    except TransientDeliveryError as exc:
        raise ProviderUnavailable(str(exc)) from exc
    tokens = answer.json()
    id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
    if not isinstance(id_token, str) or not id_token:
        raise FederatedSigninRejected("no_id_token", "The identity provider returned no ID token.")
    return id_token


def fetch_keys(meta: ProviderMetadata, policy: OutboundPolicy) -> dict[str, Any]:
    """The issuer's signing keys (its JWKS)."""
    return _get_json(meta.jwks_uri, policy)


def verify_id_token(id_token: str, *, jwks: dict[str, Any], issuer: str, client_id: str, nonce: str,
                    now: int) -> VerifiedIdToken:
    """Check the signature against the issuer's keys, then `iss`, `aud` (and `azp`), `exp`,
    `iat`, `nonce` and that `auth_time` is present (OpenID Connect Core 3.1.3.7)."""
    try:
        keys = KeySet.import_key_set(json.loads(json.dumps(jwks)))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ProviderUnavailable("the provider's key set is not usable") from exc
    try:
        token = jwt.decode(id_token, keys, algorithms=ALGORITHMS)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise FederatedSigninRejected("bad_signature", "The ID token's signature is not the identity provider's.") \
            from exc
    claims = token.claims
    registry = JWTClaimsRegistry(now=now, leeway=LEEWAY_SECONDS, iss={"essential": True, "value": issuer},
                                 sub={"essential": True}, exp={"essential": True}, iat={"essential": True},
                                 auth_time={"essential": True}, nonce={"essential": True})
    try:
        registry.validate(claims)
    except JoseError as exc:
        claim = getattr(exc, "claim", None) or "claims"
        reason = "expired" if "expired" in type(exc).__name__.lower() else f"bad_{claim}"
        raise FederatedSigninRejected(reason, f"The ID token failed its {claim} check.") from exc
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != client_id):
        raise FederatedSigninRejected("bad_aud", "The ID token was issued for another client.")
    # The nonce binds the token to this very flow: a token lifted from another sign-in fails.
    if not isinstance(claims.get("nonce"), str) or not _same(claims["nonce"], nonce):
        raise FederatedSigninRejected("bad_nonce", "The ID token belongs to another sign-in (nonce).")
    auth_time = claims.get("auth_time")
    if not isinstance(auth_time, int) or isinstance(auth_time, bool) or auth_time > now + LEEWAY_SECONDS:
        raise FederatedSigninRejected("bad_auth_time", "The ID token's auth_time is not a sign-in time.")
    return VerifiedIdToken(issuer=issuer, subject=str(claims["sub"]), auth_time=auth_time,
                           issued_at=int(claims["iat"]))


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
