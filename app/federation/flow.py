"""The authorization code flow's two halves, on a `FederatedSignin` row: `begin` (state, nonce,
PKCE verifier; the provider's authorization URL) and `finish` (the callback: the row found by
its `state`, bound to the browser that began it, used once; the code exchanged and the ID token
verified). What the finished flow proves is decided above (app/recovery/federated.py)."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import timedelta

from sqlalchemy import select

from app.crypto import decrypt, encrypt
from app.errors import RekeyError, RuleRefused
from app.extensions import db, utcnow
from app.federation.models import FederatedSignin, IdentityProvider
from app.federation.providers import client_secret
from app.tenants.models import Tenant
from app.tenants.services import page_url
from integrations.http import OutboundPolicy
from integrations.oidc import (
    FederatedSigninRejected,
    ProviderUnavailable,
    VerifiedIdToken,
    authorization_url,
    discover,
    exchange_code,
    fetch_keys,
    new_flow_secrets,
    verify_id_token,
)

# From the press of "Sign in with ..." to the callback: a person signs in at their provider.
FLOW_TTL = timedelta(minutes=10)
_STATE = re.compile(r"[A-Za-z0-9._~-]{16,128}")


class ProviderDown(RekeyError):
    status = 503
    code = "identity_provider_unavailable"


class FederatedSigninRefused(RuleRefused):
    """The sign-in proves nothing here; the flow is used up and the refusal audited."""

    code = "federated_signin_refused"
    keep_changes = True


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def callback_url(tenant: Tenant) -> str:
    """The redirect URI registered at every provider: `/t/<tenant>/oidc/callback`."""
    return page_url(tenant, "oidc/callback")


def begin(flow: FederatedSignin, provider: IdentityProvider, tenant: Tenant) -> tuple[str, str]:
    """Start the flow: returns (the provider's authorization URL, the `state` the browser must
    bring back, kept in its cookie). Only a digest of the state is stored."""
    try:
        meta = discover(provider.issuer, OutboundPolicy.from_env())
    except ProviderUnavailable as exc:
        raise ProviderDown(f"{provider.name} cannot be reached just now; nothing was used up. Try again in a "
                           "moment.", details={"provider_id": str(provider.id)}) from exc
    state, nonce, verifier = new_flow_secrets()
    flow.state_digest, flow.nonce_sealed, flow.verifier_sealed = digest(state), encrypt(nonce), encrypt(verifier)
    flow.started_at = utcnow()
    db.session.flush()
    return authorization_url(meta, client_id=provider.client_id, redirect_uri=callback_url(tenant), state=state,
                             nonce=nonce, code_verifier=verifier), state


def find_started(tenant: Tenant, state: str) -> FederatedSignin | None:
    """The flow this `state` names (not locked), or None."""
    if not _STATE.fullmatch(state or ""):
        return None
    flow = db.session.scalars(select(FederatedSignin).where(FederatedSignin.state_digest == digest(state))).first()
    return flow if flow is not None and flow.tenant_id == tenant.id else None


def claim(flow: FederatedSignin, state: str, browser_state: str | None) -> None:
    """Use the (locked) flow up: once, in the browser that began it, within FLOW_TTL. A callback
    URL replayed, opened in another browser (a victim lured into finishing an attacker's sign-in)
    or late proves nothing."""
    if flow.completed_at is not None:
        raise FederatedSigninRefused("This sign-in was already used. Start again.", details={"reason": "replayed"})
    flow.completed_at = utcnow()
    if not browser_state or not hmac.compare_digest(digest(browser_state), digest(state)):
        refuse(flow, "browser_mismatch")
        raise FederatedSigninRefused("This sign-in was started in another browser. Start again from the link or "
                                     "the sign-in page.", details={"reason": "browser_mismatch"})
    if flow.started_at is None or flow.started_at + FLOW_TTL <= utcnow():
        refuse(flow, "expired")
        raise FederatedSigninRefused("This sign-in took too long. Start again.", details={"reason": "expired"})


def finish(flow: FederatedSignin, provider: IdentityProvider, tenant: Tenant, code: str) -> VerifiedIdToken:
    """Exchange the code (with the PKCE verifier) and verify the ID token: the provider's
    signature, `iss`, `aud`, `exp`, and the flow's own `nonce`. Raises FederatedSigninRejected."""
    nonce, verifier = decrypt(flow.nonce_sealed or ""), decrypt(flow.verifier_sealed or "")
    flow.nonce_sealed = flow.verifier_sealed = None  # used once: nothing to replay from the row
    policy = OutboundPolicy.from_env()
    try:
        meta = discover(provider.issuer, policy)
        id_token = exchange_code(meta, client_id=provider.client_id, client_secret=client_secret(provider),
                                 code=code, redirect_uri=callback_url(tenant), code_verifier=verifier, policy=policy)
        keys = fetch_keys(meta, policy)
    except ProviderUnavailable as exc:
        raise FederatedSigninRejected("provider_unavailable", "The identity provider could not be reached.") from exc
    return verify_id_token(id_token, jwks=keys, issuer=provider.issuer, client_id=provider.client_id, nonce=nonce,
                           now=int(utcnow().timestamp()))


def refuse(flow: FederatedSignin, reason: str) -> None:
    """Record why the flow proved nothing."""
    flow.result, flow.failure = "refused", reason[:300]
    flow.nonce_sealed = flow.verifier_sealed = None
