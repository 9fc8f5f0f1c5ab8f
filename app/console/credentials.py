"""An agent's console credentials: the one-time invitation that sets the password, the second
factors (an authenticator app or a security key), and what a senior admin or ops does about them
(revoke every session, reset the second factor). The sign-in that uses them is in signin.py.

Security keys are checked by py_webauthn against the same relying party as users' keys
(`app.accounts.security_keys.relying_party`); the challenge lives on the console session that
asked for it, single use, five minutes.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pyotp
from flask import current_app
from sqlalchemy import select, update
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_authentication_credential_json, parse_registration_credential_json
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AttestationConveyancePreference,
    AuthenticatorSelectionCriteria,
    AuthenticatorTransport,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from app.accounts.security_keys import relying_party
from app.accounts.services import check_new_password
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.console.models import AgentFactor, AgentInvitation, AgentPassword, AgentSession
from app.crypto import decrypt, encrypt, hash_password, new_token, token_digest
from app.errors import NotFound, RuleRefused
from app.extensions import db, rows_changed, utcnow
from app.tenants.models import Agent, Tenant

INVITATION_TTL = timedelta(hours=24)
CHALLENGE_TTL = timedelta(minutes=5)
TOTP_PERIOD = 30
_UNREADABLE = (WebAuthnException, ValueError, TypeError, KeyError, IndexError, AttributeError)


class InvitationInvalid(NotFound):
    code = "invitation_invalid"


class FactorRefused(RuleRefused):
    """A second factor's answer refused (a wrong code, a key's answer that does not verify)."""

    code = "second_factor_refused"
    keep_changes = True  # the challenge it spent, the failure counted


# --- invitations and the password ------------------------------------------------------------


def console_url(path: str = "") -> str:
    """The public URL of a console page."""
    base = current_app.extensions["rekey.settings"].public_url.rstrip("/")
    return f"{base}/console/{path}"


def invite_agent(actor: Actor, agent: Agent) -> str:
    """A new one-time invitation link (24 hours) to set the console password; earlier unused
    invitations of the agent stop working. Returns the link (shown once: only a digest is kept)."""
    now = utcnow()
    db.session.execute(update(AgentInvitation).where(AgentInvitation.agent_id == agent.id,
                                                     AgentInvitation.used_at.is_(None)).values(used_at=now))
    token = new_token("rk_inv")
    db.session.add(AgentInvitation(tenant_id=agent.tenant_id, agent_id=agent.id, digest=token_digest(token),
                                   created_at=now, expires_at=now + INVITATION_TTL))
    db.session.flush()
    record_event(actor, AuditAction.AGENT_INVITED, tenant_id=agent.tenant_id,
                 details={"agent_id": str(agent.id), "expires_at": (now + INVITATION_TTL).isoformat()})
    tenant = db.session.get(Tenant, agent.tenant_id)
    assert tenant is not None
    return console_url(f"invitation/{token}?tenant={tenant.slug}")


def _live_invitation(token: str, *, lock: bool = False) -> tuple[AgentInvitation, Agent]:
    stmt = select(AgentInvitation).where(AgentInvitation.digest == token_digest(token))
    invitation = db.session.scalars(stmt.with_for_update() if lock else stmt).first()
    agent = db.session.get(Agent, invitation.agent_id) if invitation else None
    if (invitation is None or agent is None or not agent.active or invitation.used_at is not None
            or invitation.expires_at <= utcnow()):
        # Unknown, used, replaced, expired or the agent deactivated: one answer.
        raise InvitationInvalid("This invitation is not valid (used, replaced or expired); ask an administrator "
                                "for a new one (`rekey agent invite`).")
    return invitation, agent


def describe_invitation(token: str) -> Agent:
    """The agent an invitation is for (reads only: fetching the link changes nothing)."""
    return _live_invitation(token)[1]


def accept_invitation(token: str, *, password: str, ip: str | None, request_id: str | None = None) -> Agent:
    """Set the console password through the invitation (once); every console session of the agent
    ends, so a password set anew also throws out whoever held the old one."""
    invitation, agent = _live_invitation(token, lock=True)
    check_new_password(password, email=agent.email)
    now = utcnow()
    invitation.used_at = now
    row = db.session.get(AgentPassword, agent.id)
    if row is None:
        db.session.add(AgentPassword(agent_id=agent.id, hash=hash_password(password), set_at=now))
    else:
        row.hash, row.set_at = hash_password(password), now
    _revoke(agent.id)
    actor = Actor(type="agent", id=str(agent.id), tenant_id=agent.tenant_id, role=agent.role, ip=ip,
                  request_id=request_id, via="console")
    record_event(actor, AuditAction.AGENT_PASSWORD_SET, details={"agent_id": str(agent.id), "how": "invitation"})
    return agent


# --- sessions: revoke, reset ---------------------------------------------------------------


def _revoke(agent_id: uuid.UUID) -> int:
    return rows_changed(update(AgentSession).where(AgentSession.agent_id == agent_id,
                                                   AgentSession.revoked_at.is_(None)).values(revoked_at=utcnow()))


def revoke_agent_sessions(actor: Actor, agent: Agent, *, reason: str) -> int:
    """End every console session of the agent (audited); how many were live."""
    count = _revoke(agent.id)
    record_event(actor, AuditAction.AGENT_SESSIONS_REVOKED, tenant_id=agent.tenant_id, reason=reason,
                 details={"agent_id": str(agent.id), "sessions": count})
    return count


def reset_agent_mfa(actor: Actor, agent: Agent, *, reason: str) -> int:
    """Remove the agent's second factors and end their sessions: they enrol again at their next
    sign-in. Only a senior admin of the tenant (or ops, as the system) may, never on themselves."""
    if actor.type == "agent" and (not actor.is_senior_admin or actor.tenant_id != agent.tenant_id):
        raise RuleRefused("Only a senior admin of the tenant may reset an agent's second factor.",
                          code="forbidden", status=403)
    if actor.type == "agent" and actor.id == str(agent.id):
        raise RuleRefused("Nobody resets their own second factor; ask another senior admin.",
                          code="own_account", status=403)
    if not (reason or "").strip():
        raise RuleRefused("A reason is required.", code="reason_required")
    now = utcnow()
    removed = rows_changed(update(AgentFactor).where(AgentFactor.agent_id == agent.id,
                                                     AgentFactor.status != "removed")
                           .values(status="removed", removed_at=now))
    sessions = _revoke(agent.id)
    record_event(actor, AuditAction.AGENT_MFA_RESET, tenant_id=agent.tenant_id, reason=reason.strip(),
                 details={"agent_id": str(agent.id), "factors_removed": removed, "sessions_revoked": sessions})
    return removed


# --- second factors --------------------------------------------------------------------------


def active_factors(agent_id: uuid.UUID) -> list[AgentFactor]:
    return list(db.session.scalars(select(AgentFactor).where(
        AgentFactor.agent_id == agent_id, AgentFactor.status == "active").order_by(AgentFactor.created_at)).all())


def methods_of(agent_id: uuid.UUID) -> tuple[str, ...]:
    kinds = {f.kind for f in active_factors(agent_id)}
    return tuple(k for k in ("webauthn", "totp") if k in kinds)


def start_totp(session: AgentSession, agent: Agent) -> tuple[str, str]:
    """A pending authenticator-app factor for an enrolling session; the secret and otpauth URI
    are shown to that session once."""
    db.session.execute(update(AgentFactor).where(AgentFactor.agent_id == agent.id, AgentFactor.status == "pending")
                       .values(status="removed", removed_at=utcnow()))
    secret = pyotp.random_base32(32)
    db.session.add(AgentFactor(tenant_id=agent.tenant_id, agent_id=agent.id, kind="totp", status="pending",
                               secret_encrypted=encrypt(secret), transports=[]))
    db.session.flush()
    tenant = db.session.get(Tenant, agent.tenant_id)
    uri = pyotp.TOTP(secret).provisioning_uri(name=agent.email, issuer_name=f"Rekey console ({tenant.slug})"
                                              if tenant else "Rekey console")
    return secret, uri


def _totp_step(secret: str, code: str) -> int | None:
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        return None
    totp, now_step = pyotp.TOTP(secret), int(time.time() // TOTP_PERIOD)
    return next((s for s in (now_step - 1, now_step, now_step + 1) if totp.generate_otp(s) == code), None)


def _consume_totp(factor: AgentFactor, code: str) -> bool:
    """Accept the code once (a used time step never again: compare-and-set)."""
    if factor.secret_encrypted is None:
        return False
    step = _totp_step(decrypt(factor.secret_encrypted), code)
    if step is None:
        return False
    return rows_changed(update(AgentFactor).where(AgentFactor.id == factor.id, AgentFactor.last_used_step < step)
                        .values(last_used_step=step).execution_options(synchronize_session=False)) == 1


def confirm_totp(agent: Agent, code: str) -> AgentFactor:
    """Activate the pending authenticator-app factor with its first code."""
    factor = db.session.scalars(select(AgentFactor).where(
        AgentFactor.agent_id == agent.id, AgentFactor.kind == "totp", AgentFactor.status == "pending")
        .with_for_update()).first()
    if factor is None:
        raise RuleRefused("Start the authenticator app set-up first.", code="no_pending_factor")
    if not _consume_totp(factor, code):
        raise FactorRefused("That code is not right; check the app's clock and try the current code.")
    factor.status, factor.activated_at = "active", utcnow()
    return factor


def check_totp(agent: Agent, code: str) -> AgentFactor:
    """A sign-in or step-up code from one of the agent's authenticator apps."""
    for factor in active_factors(agent.id):
        if factor.kind == "totp" and _consume_totp(factor, code):
            return factor
    raise FactorRefused("That code is not right.")


def _issue_challenge(session: AgentSession, ceremony: str) -> bytes:
    import secrets

    session.challenge, session.challenge_ceremony = secrets.token_bytes(32), ceremony
    session.challenge_expires_at = utcnow() + CHALLENGE_TTL
    db.session.flush()
    return session.challenge


def _claim_challenge(session: AgentSession, ceremony: str) -> bytes:
    challenge, expires = session.challenge, session.challenge_expires_at
    right = session.challenge_ceremony == ceremony
    session.challenge, session.challenge_ceremony, session.challenge_expires_at = None, None, None
    if challenge is None or not right or expires is None or expires <= utcnow():
        raise FactorRefused("No security key request is waiting (used, expired or never made); try again.",
                            details={"problem": "no_challenge"})
    return challenge


def _options(options: Any) -> dict[str, Any]:
    return json.loads(options_to_json(options))  # type: ignore[no-any-return]


def _descriptors(factors: list[AgentFactor]) -> list[PublicKeyCredentialDescriptor]:
    return [PublicKeyCredentialDescriptor(
        id=f.credential_id, transports=[AuthenticatorTransport(t) for t in f.transports if t in _TRANSPORTS])
        for f in factors if f.kind == "webauthn" and f.credential_id]


_TRANSPORTS = {t.value for t in AuthenticatorTransport}


def key_registration_options(session: AgentSession, agent: Agent) -> dict[str, Any]:
    """Creation options for registering a security key in an enrolling session."""
    rp = relying_party()
    challenge = _issue_challenge(session, "registration")
    return _options(generate_registration_options(
        rp_id=rp.id, rp_name="Rekey console", user_id=agent.id.bytes, user_name=agent.email,
        user_display_name=agent.name, challenge=challenge, timeout=int(CHALLENGE_TTL.total_seconds() * 1000),
        attestation=AttestationConveyancePreference.NONE,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.DISCOURAGED, user_verification=UserVerificationRequirement.PREFERRED),
        exclude_credentials=_descriptors(active_factors(agent.id))))


def register_key(session: AgentSession, agent: Agent, credential: dict[str, Any]) -> AgentFactor:
    """Verify the new key's registration and make it the agent's active factor."""
    rp = relying_party()
    challenge = _claim_challenge(session, "registration")
    try:
        parsed = parse_registration_credential_json(credential)
        verified = verify_registration_response(credential=parsed, expected_challenge=challenge,
                                                expected_rp_id=rp.id, expected_origin=rp.origin)
    except _UNREADABLE as exc:
        raise FactorRefused("The security key's answer could not be verified.",
                            details={"problem": "invalid"}) from exc
    if db.session.scalars(select(AgentFactor.id).where(AgentFactor.credential_id == verified.credential_id)).first():
        raise FactorRefused("This security key is already registered.", details={"problem": "registered"})
    transports = [t for t in (credential.get("response", {}).get("transports") or []) if t in _TRANSPORTS]
    now = utcnow()
    factor = AgentFactor(tenant_id=agent.tenant_id, agent_id=agent.id, kind="webauthn", status="active",
                         credential_id=verified.credential_id, public_key=verified.credential_public_key,
                         sign_count=verified.sign_count, transports=transports, activated_at=now)
    db.session.add(factor)
    db.session.flush()
    return factor


def key_assertion_options(session: AgentSession, agent: Agent) -> dict[str, Any]:
    """Request options for a sign-in's second step or a step-up (the agent's own keys only)."""
    rp = relying_party()
    keys = [f for f in active_factors(agent.id) if f.kind == "webauthn"]
    if not keys:
        raise RuleRefused("You have no security key; use your authenticator app.", code="no_security_key")
    challenge = _issue_challenge(session, "authentication")
    return _options(generate_authentication_options(
        rp_id=rp.id, challenge=challenge, timeout=int(CHALLENGE_TTL.total_seconds() * 1000),
        allow_credentials=_descriptors(keys), user_verification=UserVerificationRequirement.PREFERRED))


def check_key(session: AgentSession, agent: Agent, credential: dict[str, Any]) -> AgentFactor:
    """Verify an assertion from one of the agent's keys (challenge of this session, counter)."""
    rp = relying_party()
    challenge = _claim_challenge(session, "authentication")
    try:
        parsed = parse_authentication_credential_json(credential)
    except _UNREADABLE as exc:
        raise FactorRefused("The security key's answer could not be read.", details={"problem": "malformed"}) from exc
    factor = db.session.scalars(select(AgentFactor).where(
        AgentFactor.credential_id == parsed.raw_id, AgentFactor.agent_id == agent.id,
        AgentFactor.status == "active").with_for_update()).first()
    if factor is None or factor.public_key is None:
        raise FactorRefused("This security key is not registered to you.", details={"problem": "unknown_key"})
    try:
        verified = verify_authentication_response(
            credential=parsed, expected_challenge=challenge, expected_rp_id=rp.id, expected_origin=rp.origin,
            credential_public_key=factor.public_key, credential_current_sign_count=0)
    except _UNREADABLE as exc:
        raise FactorRefused("The security key's answer could not be verified.",
                            details={"problem": "invalid"}) from exc
    if (verified.new_sign_count > 0 or factor.sign_count > 0) and verified.new_sign_count <= factor.sign_count:
        raise FactorRefused("The security key's signature counter went backwards.", details={"problem": "sign_count"})
    factor.sign_count = verified.new_sign_count
    return factor
