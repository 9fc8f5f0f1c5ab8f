"""A small OpenID provider on 127.0.0.1, for tests and the development stack: OpenID Connect
Discovery 1.0 (`/.well-known/openid-configuration`), a JWKS (`/jwks`), the authorization
endpoint (`/authorize`: approves the configured subject at once, or shows a tiny login form) and
the token endpoint (`/token`: client_secret_basic or client_secret_post, the authorization code
grant with PKCE S256, RFC 6749 error bodies). ID tokens are RS256, signed with the provider's own
key, and carry `nonce` and `auth_time` (a fresh sign-in: `prompt=login` / `max_age=0` are
honoured by signing the user in anew).

Tests can make the next ID token wrong the way an attacker would: `op.tamper(aud="other")`,
`op.tamper(sign_with=other_key)`, `op.tamper(exp=...)`.

    python -m integrations.fakes.oidc --client-id rekey --client-secret s3cret --subject 00u1
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import secrets
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from joserfc import jwt
from joserfc.jwk import RSAKey

from integrations.fakes.server import Answer, FakeServer, RecordedRequest

CODE_TTL = 60.0


def new_signing_key(kid: str | None = None) -> RSAKey:
    """A fresh RS256 key (tests use a second one to sign a forged token)."""
    return RSAKey.generate_key(2048, parameters={"kid": kid or secrets.token_hex(8), "use": "sig", "alg": "RS256"})


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    subject: str
    auth_time: int
    issued: float
    used: bool = False


class FakeOpenIDProvider(FakeServer):
    """An OpenID provider with one client. `subject` is who signs in at the authorization
    endpoint (`interactive=True` asks for it on a form instead); `.grants` and `.id_tokens` hold
    what was issued."""

    def __init__(self, *, client_id: str = "rekey-test-client",
                 client_secret: str = "rekey-test-secret",  # noqa: S107 - a fake's test credential
                 subject: str = "00u-test-subject", interactive: bool = False,
                 tls: ssl.SSLContext | None = None):
        super().__init__(tls=tls)
        self.client_id = client_id
        self.client_secret = client_secret
        self.subject = subject
        self.interactive = interactive
        self.key = new_signing_key()
        self.id_tokens: list[str] = []
        self._grants: dict[str, _Grant] = {}
        self._tamper: dict[str, Any] = {}
        self._grant_lock = threading.Lock()

    @property
    def issuer(self) -> str:
        return self.url

    def tamper(self, **changes: Any) -> None:
        """Make the next ID token wrong: claim overrides (`aud`, `iss`, `nonce`, `exp`,
        `auth_time`, `sub`; None removes the claim) and `sign_with` (another key)."""
        self._tamper = changes

    # --- endpoints -------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Answer:
        route = (request.method, request.path)
        if route == ("GET", "/.well-known/openid-configuration"):
            return Answer(200, self.discovery())
        if route == ("GET", "/jwks"):
            return Answer(200, {"keys": [self.key.as_dict(private=False)]})
        if route == ("GET", "/authorize"):
            return self._authorize({k: v[-1] for k, v in request.query.items()})
        if route == ("POST", "/authorize"):
            return self._authorize(request.form, login=True)
        if route == ("POST", "/token"):
            return self._token(request)
        return Answer(404, {"error": "not_found"})

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "email", "profile"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce"],
        }

    def _authorize(self, params: dict[str, str], *, login: bool = False) -> Answer:
        redirect_uri = params.get("redirect_uri", "")
        if params.get("client_id") != self.client_id or not redirect_uri.startswith(("http://", "https://")):
            # Never redirect to an unverified URI (OIDC Core 3.1.2.6): an error page instead.
            return _page(400, "Unknown client or redirect URI.")
        problem = None
        if params.get("response_type") != "code":
            problem = "unsupported_response_type"
        elif "openid" not in params.get("scope", "").split():
            problem = "invalid_scope"
        elif params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            problem = "invalid_request"  # this provider requires PKCE S256
        if problem:
            return _redirect(redirect_uri, {"error": problem, "state": params.get("state", "")})
        if self.interactive and not login:
            return _page(200, _login_form(params, self.subject))
        subject = (params.get("subject") or self.subject) if login else self.subject
        code = secrets.token_urlsafe(24)
        with self._grant_lock:
            # prompt=login and max_age=0: the user signs in anew here, so auth_time is now.
            self._grants[code] = _Grant(client_id=self.client_id, redirect_uri=redirect_uri,
                                        challenge=params["code_challenge"], nonce=params.get("nonce"),
                                        subject=subject, auth_time=int(time.time()), issued=time.time())
        return _redirect(redirect_uri, {"code": code, "state": params.get("state", "")})

    def _client_ok(self, request: RecordedRequest) -> bool:
        basic = request.basic_auth()
        if basic is not None:
            return basic == (self.client_id, self.client_secret)
        form = request.form
        return (form.get("client_id"), form.get("client_secret")) == (self.client_id, self.client_secret)

    def _token(self, request: RecordedRequest) -> Answer:
        if not self._client_ok(request):
            return Answer(401, {"error": "invalid_client"}, {"WWW-Authenticate": 'Basic realm="token"'})
        form = request.form
        if form.get("grant_type") != "authorization_code":
            return Answer(400, {"error": "unsupported_grant_type"})
        with self._grant_lock:
            grant = self._grants.get(form.get("code", ""))
            if grant is None or grant.used or time.time() - grant.issued > CODE_TTL:
                return Answer(400, {"error": "invalid_grant", "error_description": "unknown, used or expired code"})
            grant.used = True
        if form.get("redirect_uri") != grant.redirect_uri:
            return Answer(400, {"error": "invalid_grant", "error_description": "redirect_uri mismatch"})
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(digest, grant.challenge):
            return Answer(400, {"error": "invalid_grant", "error_description": "PKCE verification failed"})
        return Answer(200, {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 300,
                            "id_token": self._id_token(grant)}, {"Cache-Control": "no-store"})

    def _id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": grant.subject, "aud": grant.client_id,
                                  "exp": now + 300, "iat": now, "auth_time": grant.auth_time}
        if grant.nonce is not None:
            claims["nonce"] = grant.nonce
        tamper, self._tamper = self._tamper, {}
        key = tamper.pop("sign_with", None) or self.key
        for name, value in tamper.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        token = jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key)
        self.id_tokens.append(token)
        return token


def _redirect(uri: str, params: dict[str, str]) -> Answer:
    joiner = "&" if "?" in uri else "?"
    return Answer(302, None, {"Location": f"{uri}{joiner}{urlencode(params)}", "Cache-Control": "no-store"})


def _page(status: int, body: str) -> Answer:
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Test OpenID provider</title>"
            f"</head><body>{body}</body></html>")
    return Answer(status, page.encode(), {"Content-Type": "text/html; charset=utf-8"})


def _login_form(params: dict[str, str], subject: str) -> str:
    hidden = "".join(f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
                     for k, v in params.items() if k != "subject")
    return (f"<h1>Test identity provider</h1><form method='post' action='/authorize'>{hidden}"
            f"<label for='subject'>Subject</label> <input id='subject' name='subject' value='{html.escape(subject)}'>"
            f"<button type='submit'>Sign in</button></form>")


def query_of(url: str) -> dict[str, str]:
    """The query parameters of a URL (tests read a redirect's `code` and `state` with it)."""
    return {k: v[-1] for k, v in parse_qs(url.partition("?")[2]).items()}


def main() -> None:  # pragma: no cover - a development convenience
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", default="rekey-dev")
    parser.add_argument("--client-secret", default="rekey-dev-secret")
    parser.add_argument("--subject", default="00u-dev-user")
    parser.add_argument("--interactive", action="store_true", help="Show a login form instead of approving at once.")
    args = parser.parse_args()
    provider = FakeOpenIDProvider(client_id=args.client_id, client_secret=args.client_secret, subject=args.subject,
                                  interactive=args.interactive).start()
    print(f"issuer: {provider.issuer}  client_id: {args.client_id}  subject: {args.subject}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        provider.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
