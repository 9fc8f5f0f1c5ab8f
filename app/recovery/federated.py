"""Federated evidence is something Rekey saw (issue 8, item 5): the user completed an OpenID
Connect sign-in, with PKCE, `state` and `nonce`, whose ID token the issuer's keys sign, at an
identity provider of the tenant, as the identity linked to the account before the case opened,
at an `auth_time` after the link was issued and the case opened. No agent types it.

Two ways in. An agent's `send_federated_signin_link` sends a single-use link to a channel on
file (the channel rules of a verification call); the link's page starts the flow. Or the user
starts from the tenant's federated sign-in page (issue 9): that sign-in opens a restricted,
enrol-only browser session and, on a case awaiting verification, is recorded as evidence too.
Either way the evidence is recorded by the system, so it is the "other person" of the two-person
rule for a privileged user (DESIGN.md)."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from app.accounts import records
from app.accounts.federated import (
    IdentityRecord,
    enrolment_refusal,
    linked_identity,
    linked_issuers,
    open_enrol_only_session,
)
from app.accounts.records import ChannelRecord as Channel
from app.accounts.records import UserRecord as User
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.crypto import decrypt, encrypt
from app.errors import NotFound, RuleRefused
from app.extensions import db, utcnow
from app.federation import flow as oidc
from app.federation.models import FederatedSignin, IdentityProvider
from app.federation.providers import get_identity_provider, list_identity_providers
from app.jobs.services import claim_effect, enqueue
from app.recovery import models as m
from app.recovery.evidence import (
    COMPROMISED_REASON,
    ChannelCompromised,
    ChannelTooNew,
    accept_evidence,
    start_of_case_day,
)
from app.recovery.limits import check_verification_limits
from app.recovery.models import Evidence, RecoveryCase
from app.recovery.state import case_user, ensure_reason, load_case, require
from app.tenants.models import Tenant
from app.tenants.services import page_url
from integrations.oidc import FederatedSigninRejected, VerifiedIdToken

# A link is for a sign-in the agent is waiting for on the phone or in the ticket.
LINK_TTL = timedelta(hours=1)
EVIDENCE_REASON = "OpenID Connect sign-in observed by Rekey"


class NoLinkedIdentity(RuleRefused):
    code = "no_linked_identity"


@dataclass(frozen=True)
class LinkPage:
    """What a federated sign-in link's page shows (nothing secret)."""

    provider_name: str
    expires_at: datetime
    case_reference: str


@dataclass(frozen=True)
class FederatedOutcome:
    """A finished flow: `evidence` recorded on a case (or None), and for the sign-in page the
    restricted session's token, which the page sets in the browser's cookie."""

    purpose: str
    evidence: Evidence | None
    session_token: str | None = None


# --- the agent's action ------------------------------------------------------------------------


def _linked_providers(case: RecoveryCase, user: User) -> list[IdentityProvider]:
    """The tenant's providers at which the user has an identity linked before the case opened."""
    issuers = linked_issuers(case.tenant_id, user.id, case.opened_at)
    return [p for p in list_identity_providers(case.tenant_id) if p.issuer in issuers]


def _channel_on_file(case: RecoveryCase, channel_id: str) -> Channel:
    """A channel of the case's user that predates the case's day (tenant's clock) and was not
    verified in a round that ended as a suspected attack: the verification call's rules."""
    channel = records.channel(channel_id)
    if channel is None or channel.user_id != case.user_id or channel.removed_at is not None:
        raise NotFound("No such channel on this user.")
    day_started = start_of_case_day(case)
    if channel.added_at >= day_started:
        raise ChannelTooNew(
            "This channel was added on or after the day the case opened; it could be the attacker's.",
            details={"channel_id": str(channel.id), "added_at": channel.added_at.isoformat(),
                     "case_day_started_at": day_started.isoformat()})
    if channel.compromised_at is not None:
        raise ChannelCompromised(COMPROMISED_REASON, details={"channel_id": str(channel.id)})
    return channel


def _link_digest(token: str) -> str:
    return oidc.digest(f"federated-link\x00{token}")


def send_federated_signin_link(actor: Actor, case_id: uuid.UUID | str, *, channel_id: str | None, reason: str,
                               provider_id: str | None = None) -> FederatedSignin:
    """Text or email the user a single-use link that starts a federated sign-in for this case."""
    reason = ensure_reason(reason)
    case = load_case(actor, case_id, lock=True)
    require(case, "send_federated_signin_link", actor)
    user = case_user(case)
    channel = _channel_on_file(case, channel_id or "")
    providers = _linked_providers(case, user)
    if provider_id is not None:
        providers = [p for p in providers if str(p.id) == str(provider_id)]
    if not providers:
        raise NoLinkedIdentity("The user has no identity, linked before the case opened, at one of the tenant's "
                               "identity providers: a federated sign-in cannot verify them.",
                               details={"provider_id": provider_id})
    # The same hourly limits as verification calls (SMS pumping), plus the case's own links.
    check_verification_limits(actor, case)
    _check_link_limit(actor, case)
    now = utcnow()
    # One live link per case: a new one supersedes any not yet used.
    db.session.execute(update(FederatedSignin).where(
        FederatedSignin.case_id == case.id, FederatedSignin.started_at.is_(None),
        FederatedSignin.completed_at.is_(None)
    ).values(completed_at=now, result="refused", failure="superseded", link_sealed=None)
        .execution_options(synchronize_session=False))
    signin_id = uuid.uuid4()
    token = f"{signin_id.hex}.{secrets.token_urlsafe(32)}"
    link = FederatedSignin(id=signin_id, tenant_id=case.tenant_id, provider_id=providers[0].id, purpose="evidence",
                           case_id=case.id, round=case.round, channel_id=channel.id, requested_by=actor.id,
                           link_digest=_link_digest(token), link_sealed=encrypt(token), created_at=now,
                           expires_at=now + LINK_TTL)
    db.session.add(link)
    db.session.flush()
    record_event(actor, AuditAction.RECOVERY_FEDERATED_LINK_SENT, tenant_id=case.tenant_id,
                 target_user_id=user.id, case_id=case.id, reason=reason,
                 details={"signin_id": str(link.id), "channel_id": str(channel.id), "channel_kind": channel.kind,
                          "provider_id": str(providers[0].id), "expires_at": link.expires_at.isoformat()})
    enqueue("rekey.recovery.send_federated_signin_link", signin_id=str(link.id))
    return link


def _check_link_limit(actor: Actor, case: RecoveryCase) -> None:
    from app.recovery.limits import WINDOW, VerificationLimitReached

    tenant = db.session.get(Tenant, case.tenant_id)
    assert tenant is not None
    limit = int(tenant.setting("verification_calls_per_case_per_hour"))
    since = utcnow() - WINDOW
    sent = db.session.scalar(select(func.count()).select_from(FederatedSignin).where(
        FederatedSignin.case_id == case.id, FederatedSignin.created_at > since)) or 0
    if sent >= limit:
        oldest = db.session.scalar(select(func.min(FederatedSignin.created_at)).where(
            FederatedSignin.case_id == case.id, FederatedSignin.created_at > since))
        wait = max(1, int(((oldest or utcnow()) + WINDOW - utcnow()).total_seconds()))
        details = {"scope": "case", "limit": limit, "window_seconds": int(WINDOW.total_seconds()),
                   "retry_after_seconds": wait, "kind": "federated_signin_link"}
        record_event(actor, AuditAction.RECOVERY_VERIFICATION_CALL_LIMITED, tenant_id=case.tenant_id,
                     target_user_id=case.user_id, case_id=case.id, details=details)
        raise VerificationLimitReached(f"Too many federated sign-in links ({limit} an hour per case); none was sent.",
                                       retry_after=wait, details=details)


def deliver_federated_signin_link(signin_id: uuid.UUID) -> bool:
    """Send the link to its channel, once (the task's one service call)."""
    from app.messaging import send

    link = db.session.get(FederatedSignin, signin_id, with_for_update=True)
    if link is None or link.link_sealed is None or link.completed_at is not None or link.channel_id is None:
        return False
    if not claim_effect(f"federated-link:{link.id}"):
        return False
    channel = records.channel(link.channel_id)
    provider = db.session.get(IdentityProvider, link.provider_id)
    tenant = db.session.get(Tenant, link.tenant_id)
    assert channel is not None and provider is not None and tenant is not None
    url = page_url(tenant, f"links/federated/{decrypt(link.link_sealed)}")
    body = (f"Support is verifying an account recovery request in your name. To confirm it is you, sign in with "
            f"{provider.name}: {url}\nThe link works once, until {link.expires_at.strftime('%Y-%m-%d %H:%M UTC')}. "
            "If you did not ask to recover your account, do not open it and tell your support team.")
    send(channel.kind, channel.value, subject="Confirm your account recovery", body=body,
         key=f"federated-link:{link.id}")
    link.link_sealed, link.sent_at = None, utcnow()  # from now on only the user holds the token
    return True


# --- the link's page -----------------------------------------------------------------------------


def _find_link(token: str, tenant_id: uuid.UUID, *, lock: bool = False) -> FederatedSignin | None:
    if not token.isascii() or len(token) > 200:
        return None
    stmt = select(FederatedSignin).where(FederatedSignin.link_digest == _link_digest(token))
    link = db.session.scalars(stmt.with_for_update() if lock else stmt).first()
    if (link is None or link.tenant_id != tenant_id or link.purpose != "evidence" or link.started_at is not None
            or link.completed_at is not None or link.expires_at <= utcnow()):
        return None
    return link


def describe_federated_link(token: str, tenant_id: uuid.UUID) -> LinkPage | None:
    """What the live link names, or None (invalid, used, expired, another tenant's). Reads only:
    a mail scanner fetching the page uses nothing up."""
    link = _find_link(token, tenant_id)
    if link is None:
        return None
    provider = db.session.get(IdentityProvider, link.provider_id)
    assert provider is not None
    return LinkPage(provider_name=provider.name, expires_at=link.expires_at, case_reference=str(link.case_id))


def start_from_link(token: str, tenant: Tenant) -> tuple[str, str]:
    """The link's confirming POST: use the link up and start the authorization request.
    Returns (the provider's authorization URL, the state for the browser's cookie)."""
    assert tenant.id is not None
    probe = _find_link(token, tenant.id)
    if probe is None:
        raise NotFound("This link is not valid (used, expired or never issued).")
    # The case first, then the link: the order every path that touches both keeps.
    case = db.session.scalars(select(RecoveryCase).where(RecoveryCase.id == probe.case_id).with_for_update()).one()
    link = _find_link(token, tenant.id, lock=True)
    if link is None:
        raise NotFound("This link is not valid (used, expired or never issued).")
    if case.state != m.AWAITING_VERIFICATION or case.round != link.round:
        raise NotFound("This link is not valid any more: the recovery request it was sent for has moved on.")
    provider = db.session.get(IdentityProvider, link.provider_id)
    assert provider is not None
    return oidc.begin(link, provider, tenant)


# --- the sign-in page ----------------------------------------------------------------------------


def start_from_signin_page(tenant: Tenant, provider_id: str) -> tuple[str, str]:
    """"Sign in with <provider>" on the tenant's sign-in page: start a flow of purpose `signin`."""
    provider = get_identity_provider(tenant.id, provider_id)
    now = utcnow()
    flow = FederatedSignin(tenant_id=tenant.id, provider_id=provider.id, purpose="signin", created_at=now,
                           expires_at=now + oidc.FLOW_TTL)
    db.session.add(flow)
    db.session.flush()
    return oidc.begin(flow, provider, tenant)


# --- the callback --------------------------------------------------------------------------------


def complete_federated_signin(tenant: Tenant, *, state: str, browser_state: str | None, code: str | None,
                              error: str | None, ip: str | None, request_id: str | None) -> FederatedOutcome:
    """`/t/<tenant>/oidc/callback`: verify everything, then record what the sign-in proves."""
    probe = oidc.find_started(tenant, state)
    if probe is None:
        raise oidc.FederatedSigninRefused("This sign-in is not known here. Start again.",
                                          details={"reason": "unknown_state"})
    case = None
    if probe.case_id is not None:
        case = db.session.scalars(select(RecoveryCase).where(RecoveryCase.id == probe.case_id)
                                  .with_for_update()).one()
    flow = db.session.get(FederatedSignin, probe.id, with_for_update=True, populate_existing=True)
    assert flow is not None
    provider = db.session.get(IdentityProvider, flow.provider_id)
    assert provider is not None
    system = Actor(type="system", id="rekey", tenant_id=tenant.id, ip=ip, request_id=request_id)
    oidc.claim(flow, state, browser_state)
    try:
        if error or not code:
            raise FederatedSigninRejected("provider_error", "The sign-in at the identity provider did not complete.")
        token = oidc.finish(flow, provider, tenant, code)
    except FederatedSigninRejected as exc:
        raise _refused(system, flow, provider, case, exc.reason, exc.message) from exc
    if flow.purpose == "evidence":
        assert case is not None
        return FederatedOutcome("evidence", _record_evidence(system, flow, provider, case, token))
    return _sign_in(system, flow, provider, token)


def _refused(actor: Actor, flow: FederatedSignin, provider: IdentityProvider, case: RecoveryCase | None,
             reason: str, message: str, user_id: uuid.UUID | None = None) -> oidc.FederatedSigninRefused:
    """Record the refusal (on the case as rejected evidence, and in the audit) and build the error."""
    oidc.refuse(flow, reason)
    details = {"signin_id": str(flow.id), "purpose": flow.purpose, "provider_id": str(provider.id),
               "issuer": provider.issuer, "reason": reason}
    if case is not None:
        db.session.add(Evidence(tenant_id=case.tenant_id, case_id=case.id, type="federated_signin", accepted=False,
                                details=details, rejection_reason=message, recorded_by_type=actor.type,
                                recorded_by_id=actor.id, reason=EVIDENCE_REASON, round=case.round))
    record_event(actor, AuditAction.FEDERATED_SIGNIN_REFUSED, tenant_id=flow.tenant_id,
                 target_user_id=user_id or (case.user_id if case else None), case_id=case.id if case else None,
                 details=details)
    return oidc.FederatedSigninRefused(message, details={"reason": reason})


def _not_before(moment: datetime) -> int:
    """`auth_time` is whole seconds: a sign-in in the same second as `moment` counts as after it."""
    return int(moment.timestamp())


def _evidence_problem(flow: FederatedSignin, case: RecoveryCase, token: VerifiedIdToken,
                      issued: datetime) -> tuple[str, str] | None:
    """Why this verified sign-in does not verify the case's user, or None."""
    if case.state != m.AWAITING_VERIFICATION or (flow.round is not None and flow.round != case.round):
        return "case_moved_on", "The recovery request is no longer waiting for verification."
    if token.auth_time < _not_before(issued) or token.auth_time < _not_before(case.opened_at):
        # An old session at the provider (or a token from before the link) proves nothing now.
        return "auth_time_too_early", "The sign-in at the identity provider happened before this request."
    identity = linked_identity(case.tenant_id, token.issuer, token.subject)
    if identity is None or identity.user_id != case.user_id:
        return "not_linked", "This identity is not the one linked to the account."
    if identity.linked_at >= case.opened_at:
        return "linked_after_case_opened", "This identity was linked to the account after the request was made."
    return None


def _record_evidence(actor: Actor, flow: FederatedSignin, provider: IdentityProvider, case: RecoveryCase,
                     token: VerifiedIdToken) -> Evidence:
    problem = _evidence_problem(flow, case, token, flow.created_at)
    if problem is not None:
        raise _refused(actor, flow, provider, case, *problem)
    identity = linked_identity(case.tenant_id, token.issuer, token.subject)
    assert identity is not None
    flow.result, flow.user_id = "verified", case.user_id
    return accept_evidence(actor, case, "federated_signin", _evidence_details(flow, provider, identity, token),
                           EVIDENCE_REASON)


def _evidence_details(flow: FederatedSignin, provider: IdentityProvider, identity: IdentityRecord,
                      token: VerifiedIdToken) -> dict[str, str]:
    return {"identity_id": str(identity.id), "issuer": provider.issuer, "provider_id": str(provider.id),
            "signin_id": str(flow.id), "via": flow.purpose,
            "signed_in_at": datetime.fromtimestamp(token.auth_time, tz=utcnow().tzinfo).isoformat()}


def _sign_in(actor: Actor, flow: FederatedSignin, provider: IdentityProvider,
             token: VerifiedIdToken) -> FederatedOutcome:
    """The sign-in page: the linked user gets a restricted, enrol-only browser session; on a
    case awaiting verification the same sign-in is recorded as evidence."""
    if token.auth_time < _not_before(flow.started_at or flow.created_at):
        raise _refused(actor, flow, provider, None, "auth_time_too_early",
                       "The sign-in at the identity provider happened before you pressed the button.")
    identity = linked_identity(flow.tenant_id, token.issuer, token.subject)
    user = records.user_by_id(identity.user_id) if identity else None
    if identity is None or user is None:
        raise _refused(actor, flow, provider, None, "not_linked",
                       "No account here is linked to this identity.")
    # The user's open case first (the case lock comes before the user's own rows).
    case = db.session.scalars(select(RecoveryCase).where(
        RecoveryCase.user_id == user.id, RecoveryCase.state.in_(m.OPEN_STATES)).with_for_update()).first()
    refusal = enrolment_refusal(user)
    if refusal is not None:
        raise _refused(actor, flow, provider, case, *refusal, user.id)
    if case is not None and identity.linked_at >= case.opened_at:
        # Linked while a recovery is open: it may be the requester's own identity, not the owner's.
        raise _refused(actor, flow, provider, case, "linked_after_case_opened",
                       "This identity was linked to the account after a recovery request was made.", user.id)
    evidence = None
    if case is not None and case.state == m.AWAITING_VERIFICATION and _evidence_problem(
            flow, case, token, flow.started_at or flow.created_at) is None:
        evidence = accept_evidence(actor, case, "federated_signin",
                                   _evidence_details(flow, provider, identity, token), EVIDENCE_REASON)
    flow.result, flow.user_id = "verified", user.id
    session = open_enrol_only_session(user, actor, case_id=case.id if case else None,
                                      facts={"provider_id": str(provider.id), "issuer": provider.issuer,
                                             "evidence_recorded": evidence is not None})
    return FederatedOutcome("signin", evidence, session)
