"""Console sign-in for agents: tenant, email and password, then a second factor (an authenticator
app or a security key), or, when the agent has none yet (first sign-in, after a reset), the
enrolment of one. Then a server-side console session: idle timeout, absolute lifetime, revocable,
its token rotated at every step, and the time the agent last passed a second factor (step-up).

Throttles as for users (the same settings): per account (tenant and email) consecutive failures
lock it, per IP failures are counted over a window. A failure for a known agent is audited
(`auth.signin_failed`, actor type agent, in the tenant's chain); one for an unknown tenant or
agent is only recorded and counted (there is no chain, or no one, to write it to).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, select, text

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.console import credentials
from app.console.models import AgentPassword, AgentSession, AgentSigninAttempt
from app.crypto import new_token, token_digest, verify_password
from app.emails import normalize_email
from app.errors import RateLimited, RekeyError, Unauthenticated, ValidationFailed
from app.extensions import db, utcnow
from app.tenants.models import Agent, Tenant

PENDING_TTL = timedelta(minutes=5)  # the password step, or an enrolment, waits this long at most
ENROL_TTL = timedelta(minutes=15)
PENDING_MAX_FAILURES = 3
_FAILURES = ("bad_password", "bad_factor", "unknown_agent", "unknown_tenant")


class ConsoleSigninFailed(Unauthenticated):
    code = "invalid_credentials"
    keep_changes = True


class ConsoleLocked(RateLimited):
    code = "account_locked"
    keep_changes = True


class ConsoleSessionInvalid(Unauthenticated):
    code = "session_invalid"


@dataclass(frozen=True)
class ConsoleSignin:
    """After a step: the session's new token (for the cookie), its stage, and the agent."""

    token: str
    stage: str
    agent: Agent
    methods: tuple[str, ...] = ()


def _settings():  # type: ignore[no-untyped-def]
    return current_app.extensions["rekey.settings"]


def _record(tenant_id, email: str, agent: Agent | None, ip: str | None, result: str,  # type: ignore[no-untyped-def]
            method: str) -> None:
    db.session.add(AgentSigninAttempt(tenant_id=tenant_id, agent_id=agent.id if agent else None, email=email,
                                      ip=ip, result=result, method=method, occurred_at=utcnow()))
    db.session.flush()


def _account_key(tenant_slug: str, email: str) -> str:
    # The lockout counts by what was typed, known or not, so it tells nobody whether the agent exists.
    return f"{tenant_slug}/{email}"


def _retry_after(key_filter, window: int, limit: int) -> int | None:  # type: ignore[no-untyped-def]
    now = utcnow()
    since = now - timedelta(seconds=window)
    recent = db.session.scalars(select(AgentSigninAttempt.occurred_at).where(
        *key_filter, AgentSigninAttempt.occurred_at > since, AgentSigninAttempt.result.in_(_FAILURES))
        .order_by(AgentSigninAttempt.occurred_at.desc()).limit(limit)).all()
    if len(recent) < limit:
        return None
    return max(1, int((recent[-1] + timedelta(seconds=window) - now).total_seconds()))


def _account_filter(email: str, tenant: Tenant | None, slug: str):  # type: ignore[no-untyped-def]
    last_success = db.session.scalar(select(func.max(AgentSigninAttempt.occurred_at)).where(
        AgentSigninAttempt.email == _account_key(slug, email), AgentSigninAttempt.result == "succeeded"))
    conds = [AgentSigninAttempt.email == _account_key(slug, email)]
    if last_success is not None:
        conds.append(AgentSigninAttempt.occurred_at > last_success)
    return conds


def _claim(key: str) -> bool:
    """One sign-in step per account at a time (the failure count read next is then the true one)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return True
    digest = hashlib.sha256(f"rekey.console\x00{key}".encode()).digest()
    return bool(db.session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"),
                                  {"key": int.from_bytes(digest[:8], "big", signed=True)}))


def _guard(key: str, tenant: Tenant | None, slug: str, email: str, agent: Agent | None, ip: str | None,
           method: str) -> None:
    settings = _settings()
    tenant_id = tenant.id if tenant else None
    if not _claim(key):
        _record(tenant_id, key, agent, ip, "busy", method)
        raise RateLimited("Another sign-in for this account is in progress; retry.", retry_after=1, keep_changes=True)
    if ip is not None:
        retry = _retry_after([AgentSigninAttempt.ip == ip], settings.ip_window_seconds, settings.ip_max_failures)
        if retry is not None:
            _record(tenant_id, key, agent, ip, "throttled", method)
            raise RateLimited("Too many failed sign-ins from this address.", retry_after=retry, keep_changes=True)
    retry = _retry_after(_account_filter(email, tenant, slug), settings.signin_lockout_seconds,
                         settings.signin_max_failures)
    if retry is not None:
        _record(tenant_id, key, agent, ip, "locked", method)
        raise ConsoleLocked("Too many failed sign-ins for this account; try again later.", retry_after=retry)


def _actor(agent: Agent, ip: str | None, request_id: str | None) -> Actor:
    return Actor(type="agent", id=str(agent.id), tenant_id=agent.tenant_id, role=agent.role, ip=ip,
                 request_id=request_id, via="console")


def _fail(key: str, tenant: Tenant | None, slug: str, email: str, agent: Agent | None, ip: str | None,
          request_id: str | None, result: str, method: str) -> ConsoleSigninFailed:
    _record(tenant.id if tenant else None, key, agent, ip, result, method)
    if agent is not None:
        actor = _actor(agent, ip, request_id)
        record_event(actor, AuditAction.SIGNIN_FAILED, details={"result": result, "method": method,
                                                                "door": "console"})
        settings = _settings()
        if _retry_after(_account_filter(email, tenant, slug), settings.signin_lockout_seconds,
                        settings.signin_max_failures) is not None:
            record_event(actor, AuditAction.AGENT_LOCKED, details={"after_failures": settings.signin_max_failures})
    return ConsoleSigninFailed("The tenant, email, password or code is not correct.")


def _new_session(agent: Agent, stage: str, ip: str | None) -> tuple[AgentSession, str]:
    now, token = utcnow(), new_token("rk_con")
    full = timedelta(seconds=_settings().console_session_ttl_seconds)
    ttl = {"password": PENDING_TTL, "enrol": ENROL_TTL}.get(stage, full)
    session = AgentSession(tenant_id=agent.tenant_id, agent_id=agent.id, digest=token_digest(token), stage=stage,
                           ip=ip, created_at=now, last_seen_at=now, expires_at=now + ttl, failures=0)
    db.session.add(session)
    db.session.flush()
    return session, token


def begin_console_sign_in(*, tenant_slug: str, email: str, password: str, ip: str | None,
                          request_id: str | None = None) -> ConsoleSignin:
    """The password step: a session in stage `password` (a second factor is owed) or `enrol` (the
    agent has none yet: only enrolment); one answer for every failure."""
    slug = (tenant_slug or "").strip().lower()[:64]
    try:
        email = normalize_email(email)
    except ValidationFailed:
        email = (email or "").strip().lower()[:320]
    key = _account_key(slug, email)
    tenant = db.session.scalars(select(Tenant).where(Tenant.slug == slug)).first() if slug.isascii() else None
    agent = (db.session.scalars(select(Agent).where(Agent.tenant_id == tenant.id, Agent.email == email)).first()
             if tenant else None)
    _guard(key, tenant, slug, email, agent, ip, "password")
    stored = db.session.get(AgentPassword, agent.id) if agent else None
    ok = verify_password(stored.hash if stored else None, password or "")
    if tenant is None or agent is None or stored is None or not ok or not agent.active:
        result = ("unknown_tenant" if tenant is None else "unknown_agent" if agent is None
                  else "bad_password")
        raise _fail(key, tenant, slug, email, agent if result == "bad_password" else None, ip, request_id,
                    result, "password")
    methods = credentials.methods_of(agent.id)
    _record(tenant.id, key, agent, ip, "factor_required" if methods else "enrolment_required", "password")
    session, token = _new_session(agent, "password" if methods else "enrol", ip)
    return ConsoleSignin(token=token, stage=session.stage, agent=agent, methods=methods)


def authenticate_console_session(token: str, *, stages: tuple[str, ...] = ("full",)) -> tuple[AgentSession, Agent]:
    """The live console session for this cookie, in one of `stages`: not revoked, not past its
    absolute lifetime nor idle too long, its agent active. Each use moves the idle clock on."""
    session = db.session.scalars(select(AgentSession).where(AgentSession.digest == token_digest(token))).first()
    now = utcnow()
    idle = timedelta(seconds=_settings().console_idle_timeout_seconds)
    if (session is None or session.revoked_at is not None or session.expires_at <= now
            or session.last_seen_at + idle <= now):
        raise ConsoleSessionInvalid("Your console session ended; sign in again.")
    agent = db.session.get(Agent, session.agent_id)
    if agent is None or not agent.active:
        raise ConsoleSessionInvalid("Your console session ended; sign in again.")
    if session.stage not in stages:
        raise ConsoleSessionInvalid("Finish signing in first.", details={"stage": session.stage})
    session.last_seen_at = now
    return session, agent


def console_actor(session: AgentSession, agent: Agent, ip: str | None, request_id: str | None) -> Actor:
    """The actor of a console request: the agent, their role and when they last passed a second factor."""
    return Actor(type="agent", id=str(agent.id), tenant_id=agent.tenant_id, role=agent.role, ip=ip,
                 request_id=request_id, via="console", second_factor_at=session.second_factor_at)


def _promote(session: AgentSession, agent: Agent, ip: str | None, request_id: str | None, method: str,
             **facts: object) -> ConsoleSignin:
    """The second factor is proven: the session becomes a full one under a new token."""
    now, token = utcnow(), new_token("rk_con")
    session.digest, session.stage, session.second_factor_at = token_digest(token), "full", now
    session.created_at = session.last_seen_at = now
    session.expires_at = now + timedelta(seconds=_settings().console_session_ttl_seconds)
    session.failures = 0
    tenant = db.session.get(Tenant, agent.tenant_id)
    assert tenant is not None
    _record(agent.tenant_id, _account_key(tenant.slug, agent.email), agent, ip, "succeeded", method)
    record_event(_actor(agent, ip, request_id), AuditAction.SIGNIN_SUCCEEDED,
                 details={"method": method, "door": "console", **facts})
    return ConsoleSignin(token=token, stage="full", agent=agent)


def _second_step(session: AgentSession, agent: Agent, ip: str | None, request_id: str | None, method: str,
                 check) -> ConsoleSignin:  # type: ignore[no-untyped-def]
    tenant = db.session.get(Tenant, agent.tenant_id)
    assert tenant is not None
    key = _account_key(tenant.slug, agent.email)
    _guard(key, tenant, tenant.slug, agent.email, agent, ip, method)
    try:
        factor = check()
    except RekeyError as exc:
        session.failures += 1
        if session.failures >= PENDING_MAX_FAILURES:
            session.revoked_at = utcnow()
        failed = _fail(key, tenant, tenant.slug, agent.email, agent, ip, request_id, "bad_factor", method)
        failed.details = {"problem": getattr(exc, "details", {}).get("problem", "wrong")}
        raise failed from exc
    return _promote(session, agent, ip, request_id, method, factor_id=str(factor.id))


def complete_with_totp(session: AgentSession, agent: Agent, code: str, *, ip: str | None,
                       request_id: str | None = None) -> ConsoleSignin:
    """The second step with an authenticator-app code."""
    return _second_step(session, agent, ip, request_id, "totp", lambda: credentials.check_totp(agent, code))


def complete_with_key(session: AgentSession, agent: Agent, credential: dict[str, object], *, ip: str | None,
                      request_id: str | None = None) -> ConsoleSignin:
    """The second step with a security key's assertion."""
    return _second_step(session, agent, ip, request_id, "webauthn",
                        lambda: credentials.check_key(session, agent, credential))


def finish_enrolment(session: AgentSession, agent: Agent, factor_kind: str, factor_id: str, *, ip: str | None,
                     request_id: str | None = None) -> ConsoleSignin:
    """A first factor was enrolled in an `enrol` session: audited, and the session becomes full."""
    record_event(_actor(agent, ip, request_id), AuditAction.AGENT_FACTOR_ENROLLED,
                 details={"agent_id": str(agent.id), "kind": factor_kind, "factor_id": factor_id})
    return _promote(session, agent, ip, request_id, factor_kind, first_enrolment=True, factor_id=factor_id)


def step_up_with_totp(session: AgentSession, agent: Agent, code: str) -> None:
    """A fresh second-factor check in a full session (for the destructive actions)."""
    credentials.check_totp(agent, code)
    session.second_factor_at = utcnow()


def step_up_with_key(session: AgentSession, agent: Agent, credential: dict[str, object]) -> None:
    credentials.check_key(session, agent, credential)
    session.second_factor_at = utcnow()


def end_console_session(token: str) -> None:
    """Sign out."""
    session = db.session.scalars(select(AgentSession).where(AgentSession.digest == token_digest(token))).first()
    if session is not None and session.revoked_at is None:
        session.revoked_at = utcnow()
