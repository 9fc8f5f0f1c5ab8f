"""Security keys (WebAuthn, checked by py_webauthn): registration in the user's own session, the
user's list of keys, and the assertion a sign-in's second step verifies.

The relying party is the host of REKEY_PUBLIC_URL and the only origin accepted is that URL's.
Every ceremony's challenge lives here, server side: 256 random bits, single use (claimed before
the answer is checked, so a failed answer burns it too), bound to the session or the pending
sign-in that asked for it (one per ceremony: asking again replaces it), and dead after five
minutes (SECURITY-CHECKLIST R20).
"""

from __future__ import annotations

import json
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import current_app
from sqlalchemy import select
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_authentication_credential_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app.accounts.hooks import recovery
from app.accounts.mfa import EnrolmentClosed, enrolment_closed, record_enrolment
from app.accounts.models import MfaFactor, User, WebAuthnChallenge, WebAuthnCredential
from app.accounts.services import require_live_session
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.config import url_host_problem
from app.errors import Conflict, NotFound, RuleRefused
from app.extensions import db, utcnow
from app.tenants.models import Tenant

CHALLENGE_TTL = timedelta(minutes=5)
LABEL_MAX = 64
_TRANSPORTS = {t.value for t in AuthenticatorTransport}
# What a hostile or broken client can make the parser and verifier raise: the answer is refused,
# never a 500.
_UNREADABLE = (WebAuthnException, ValueError, TypeError, KeyError, IndexError, AttributeError)


class SecurityKeysUnavailable(RuleRefused):
    code = "security_keys_unavailable"


class SecurityKeyError(RuleRefused):
    """A key's answer refused; `problem` says why in one word (also written to the audit)."""

    code = "security_key_refused"
    keep_changes = True  # the challenge it spent stays spent
    problem = "invalid"


class ChallengeInvalid(SecurityKeyError):
    code = "challenge_invalid"
    problem = "no_challenge"


class ChallengeExpired(SecurityKeyError):
    code = "challenge_expired"
    problem = "challenge_expired"


class KeyAlreadyRegistered(Conflict):
    code = "security_key_registered"


class NoSecurityKey(RuleRefused):
    code = "no_security_key"


class LastFactor(RuleRefused):
    code = "last_factor"


@dataclass(frozen=True)
class RelyingParty:
    id: str
    origin: str


def relying_party() -> RelyingParty:
    """The relying-party id (the host) and origin of REKEY_PUBLIC_URL."""
    url = current_app.extensions["rekey.settings"].public_url
    problem = url_host_problem(url)
    if problem is not None:
        # Development may run on an IP address; everything else works there, keys cannot.
        raise SecurityKeysUnavailable(
            f"Security keys need REKEY_PUBLIC_URL to name this site by a host name (for example "
            f"http://localhost:5000); it {problem}.", details={"setting": "REKEY_PUBLIC_URL"})
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    default_port = 443 if parts.scheme == "https" else 80
    port = f":{parts.port}" if parts.port not in (None, default_port) else ""
    return RelyingParty(id=host, origin=f"{parts.scheme}://{host}{port}")


# --- challenges ---------------------------------------------------------------------------


def _binding(ceremony: str, session_id: uuid.UUID | None, pending_id: uuid.UUID | None) -> list[Any]:
    """The filter for one ceremony's challenges of one session (or one pending sign-in)."""
    owner = (WebAuthnChallenge.session_id == session_id if session_id is not None
             else WebAuthnChallenge.pending_signin_id == pending_id)
    return [WebAuthnChallenge.ceremony == ceremony, owner]


def _issue_challenge(user: User, ceremony: str, *, session_id: uuid.UUID | None = None,
                     pending_id: uuid.UUID | None = None) -> bytes:
    now, challenge = utcnow(), secrets.token_bytes(32)
    # One challenge per ceremony and binding: asking again replaces it (the earlier one is dead),
    # so a client asking in a loop rewrites one row instead of filling a table.
    row = db.session.scalars(select(WebAuthnChallenge).where(*_binding(ceremony, session_id, pending_id))
                             .order_by(WebAuthnChallenge.created_at.desc()).with_for_update()).first()
    if row is None:
        row = WebAuthnChallenge(tenant_id=user.tenant_id, user_id=user.id, ceremony=ceremony,
                                session_id=session_id, pending_signin_id=pending_id)
        db.session.add(row)
    row.challenge, row.created_at, row.expires_at, row.used_at = challenge, now, now + CHALLENGE_TTL, None
    db.session.flush()
    return challenge


def _claim_challenge(ceremony: str, *, session_id: uuid.UUID | None = None,
                     pending_id: uuid.UUID | None = None) -> bytes:
    """Spend the live challenge of this ceremony and binding. A challenge asked for by another
    session, another sign-in or the other ceremony is never found here, so an answer signed
    over it fails the comparison with the one returned."""
    row = db.session.scalars(select(WebAuthnChallenge).where(
        *_binding(ceremony, session_id, pending_id), WebAuthnChallenge.used_at.is_(None)
    ).order_by(WebAuthnChallenge.created_at.desc()).with_for_update()).first()
    if row is None:
        raise ChallengeInvalid("No security key request is waiting (it was used or never made); "
                               "ask for new options.")
    row.used_at = utcnow()
    if row.expires_at <= row.used_at:
        raise ChallengeExpired("The security key request expired; ask for new options.")
    return row.challenge


def _problem(exc: Exception) -> str:
    """py_webauthn's reason, in one word for the client and the audit trail."""
    text = str(exc).lower()
    for needle, word in (("origin", "origin"), ("rp id", "rp_id"), ("challenge", "challenge"),
                         ("signature", "signature"), ("present", "user_presence"),
                         ("client data type", "ceremony"), ("alg", "algorithm")):
        if needle in text:
            return word
    return "malformed"


def _refused(exc: Exception) -> SecurityKeyError:
    problem = _problem(exc)
    return SecurityKeyError("The security key's answer could not be verified.", details={"problem": problem},
                            problem=problem)


def _options(options: Any) -> dict[str, Any]:
    return json.loads(options_to_json(options))  # type: ignore[no-any-return]


def _descriptors(keys: list[WebAuthnCredential]) -> list[PublicKeyCredentialDescriptor]:
    return [PublicKeyCredentialDescriptor(id=k.credential_id,
                                          transports=[AuthenticatorTransport(t) for t in k.transports])
            for k in keys]


# --- registration -------------------------------------------------------------------------


def active_keys(user: User) -> list[WebAuthnCredential]:
    """The user's security keys in use."""
    return [f.credential for f in user.factors
            if f.kind == "webauthn" and f.status == "active" and f.credential is not None]


def registration_options(user: User, session_id: uuid.UUID) -> dict[str, Any]:
    """Start registering a key in this session: the creation options for the browser."""
    if enrolment_closed(user):
        raise EnrolmentClosed("Enrolment is closed for this account until support verifies you again.")
    rp = relying_party()
    tenant = db.session.get(Tenant, user.tenant_id)
    assert tenant is not None
    challenge = _issue_challenge(user, "registration", session_id=session_id)
    return _options(generate_registration_options(
        rp_id=rp.id, rp_name=f"Rekey ({tenant.name})", user_name=user.email, user_id=user.id.bytes,
        user_display_name=user.display_name or user.email, challenge=challenge,
        timeout=int(CHALLENGE_TTL.total_seconds() * 1000),
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED),
        exclude_credentials=_descriptors(active_keys(user))))


def clean_label(raw: str | None, default: str) -> str:
    """A user's name for a key: control characters dropped, trimmed, at most 64 characters."""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in raw or "")
    text = " ".join(text.split())[:LABEL_MAX]
    return text or default


def register_key(actor: Actor, user: User, session_id: uuid.UUID, credential: dict[str, Any],
                 *, label: str | None = None) -> MfaFactor:
    """Verify the browser's answer to this session's registration options and add the key;
    records `mfa.factor_enrolled` and, during a recovery, closes the case's loop."""
    rp = relying_party()
    # Lock order: the recovery case first, as every enrolment and the reset task take it. A
    # reset that committed while this request waited revoked the session: it enrols nothing.
    case_id = recovery().lock_case_for_enrolment(user)
    require_live_session(session_id)
    # As for an authenticator app: a refusal that closed the enrolment window while this
    # request was on its way wins (read under a lock, after the case's).
    db.session.refresh(user, with_for_update=True)
    if enrolment_closed(user):
        raise EnrolmentClosed("Enrolment is closed for this account until support verifies you again.")
    challenge = _claim_challenge("registration", session_id=session_id)
    try:
        verified = verify_registration_response(
            credential=credential, expected_challenge=challenge, expected_rp_id=rp.id,
            expected_origin=rp.origin, require_user_verification=False)
    except _UNREADABLE as exc:
        raise _refused(exc) from exc
    if db.session.scalar(select(WebAuthnCredential.factor_id).where(
            WebAuthnCredential.credential_id == verified.credential_id)) is not None:
        raise KeyAlreadyRegistered("This security key is already registered.", keep_changes=True)
    transports = [t for t in (credential.get("response") or {}).get("transports") or []
                  if isinstance(t, str) and t in _TRANSPORTS][:8]
    count, now = len(active_keys(user)) + 1, utcnow()
    factor = MfaFactor(user=user, kind="webauthn", status="active", created_at=now, activated_at=now,
                       enrolled_ip=actor.ip)
    db.session.add(factor)
    db.session.add(WebAuthnCredential(
        factor=factor, tenant_id=user.tenant_id, user_id=user.id, credential_id=verified.credential_id,
        public_key=verified.credential_public_key, sign_count=verified.sign_count, transports=transports,
        aaguid=verified.aaguid, label=clean_label(label, "Security key" + (f" {count}" if count > 1 else "")),
        user_verified=verified.user_verified, backed_up=verified.credential_backed_up))
    db.session.flush()
    # R20: which authenticator model, whether it verified the user, and (source_ip) from where.
    record_enrolment(actor, user, factor, case_id, aaguid=verified.aaguid,
                     user_verified=verified.user_verified, backed_up=verified.credential_backed_up)
    return factor


# --- the user's keys ----------------------------------------------------------------------


def _own_key(user: User, key_id: uuid.UUID | str) -> MfaFactor:
    try:
        fid = key_id if isinstance(key_id, uuid.UUID) else uuid.UUID(str(key_id))
    except ValueError as exc:
        raise NotFound("No such security key.") from exc
    factor = db.session.get(MfaFactor, fid)
    if (factor is None or factor.user_id != user.id or factor.kind != "webauthn"
            or factor.status != "active" or factor.credential is None):
        raise NotFound("No such security key.")  # another user's key is not found either
    return factor


def describe_key(factor: MfaFactor) -> dict[str, Any]:
    """A key as its owner and the agents see it (never its credential id or public key)."""
    key = factor.credential
    assert key is not None
    return {"id": factor.id, "label": key.label, "created_at": factor.created_at,
            "last_used_at": key.last_used_at, "aaguid": key.aaguid, "transports": key.transports,
            "backed_up": key.backed_up}


def rename_key(actor: Actor, user: User, key_id: uuid.UUID | str, label: str) -> MfaFactor:
    """Give one of the user's keys a new label."""
    factor = _own_key(user, key_id)
    assert factor.credential is not None
    factor.credential.label = clean_label(label, factor.credential.label)
    record_event(actor, AuditAction.FACTOR_RENAMED, tenant_id=user.tenant_id, target_user_id=user.id,
                 details={"factor_id": str(factor.id), "kind": factor.kind})
    return factor


def remove_key(actor: Actor, user: User, key_id: uuid.UUID | str) -> None:
    """Remove one of the user's keys, never their last factor; records `mfa.factor_removed`."""
    target = _own_key(user, key_id)
    # Every active factor of the user, locked: two removals at once must not each see "one left".
    factors = db.session.scalars(select(MfaFactor).where(
        MfaFactor.user_id == user.id, MfaFactor.status == "active").order_by(MfaFactor.id)
        .with_for_update().execution_options(populate_existing=True)).all()
    if target not in factors:
        raise NotFound("No such security key.")
    if len(factors) == 1:
        raise LastFactor("This is your last sign-in factor: add another before removing it.")
    target.status, target.removed_at = "removed", utcnow()
    assert target.credential is not None
    record_event(actor, AuditAction.FACTOR_REMOVED, tenant_id=user.tenant_id, target_user_id=user.id,
                 details={"factor_id": str(target.id), "kind": target.kind, "aaguid": target.credential.aaguid,
                          "factors_left": len(factors) - 1})


# --- sign-in ------------------------------------------------------------------------------


def assertion_options(user: User, pending_id: uuid.UUID) -> dict[str, Any]:
    """The request options for a pending sign-in's security-key step (its keys only)."""
    rp = relying_party()
    keys = active_keys(user)
    if not keys:
        raise NoSecurityKey("This account has no security key; use another method.")
    challenge = _issue_challenge(user, "authentication", pending_id=pending_id)
    return _options(generate_authentication_options(
        rp_id=rp.id, challenge=challenge, timeout=int(CHALLENGE_TTL.total_seconds() * 1000),
        allow_credentials=_descriptors(keys), user_verification=UserVerificationRequirement.PREFERRED))


def check_assertion(actor: Actor, user: User, pending_id: uuid.UUID,
                    credential: dict[str, Any]) -> tuple[MfaFactor, bool]:
    """Verify a pending sign-in's assertion against the user's key; returns the key's factor and
    whether the key verified the user. A signature counter that did not grow is audited."""
    rp = relying_party()
    challenge = _claim_challenge("authentication", pending_id=pending_id)
    try:
        parsed = parse_authentication_credential_json(credential)
    except _UNREADABLE as exc:
        raise _refused(exc) from exc
    # The factor row is locked first and must still be active: a reset committed meanwhile wins.
    factor = db.session.scalars(select(MfaFactor).join(WebAuthnCredential).where(
        WebAuthnCredential.credential_id == parsed.raw_id, MfaFactor.user_id == user.id,
        MfaFactor.status == "active").with_for_update()).first()
    if factor is None or factor.credential is None:
        raise SecurityKeyError("This security key is not registered to the account.", problem="unknown_key")
    key = factor.credential
    try:
        # The counter is checked below, after the signature, so only the real key's holder (or
        # its clone) can raise the alarm; py_webauthn's own check runs before the signature.
        verified = verify_authentication_response(
            credential=parsed, expected_challenge=challenge, expected_rp_id=rp.id, expected_origin=rp.origin,
            credential_public_key=key.public_key, credential_current_sign_count=0)
    except _UNREADABLE as exc:
        raise _refused(exc) from exc
    if (verified.new_sign_count > 0 or key.sign_count > 0) and verified.new_sign_count <= key.sign_count:
        record_event(actor, AuditAction.KEY_CLONE_SUSPECTED, tenant_id=user.tenant_id, target_user_id=user.id,
                     details={"factor_id": str(factor.id), "aaguid": key.aaguid, "stored_count": key.sign_count,
                              "presented_count": verified.new_sign_count})
        raise SecurityKeyError("The security key's signature counter went backwards.", problem="sign_count")
    key.sign_count, key.last_used_at = verified.new_sign_count, utcnow()
    return factor, verified.user_verified
