"""Console pages for the casework: the queue, a case (live by htmx polling), evidence, the
verification call, the runbook's actions (reason, confirmation, step-up), the user's MFA tab and
notes, and the audit download. Every view calls the same service as the admin API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Response, g, redirect, request, stream_with_context

from app.accounts.services import add_note, describe_user
from app.audit.models import AuditAction
from app.audit.services import AuditFilter, export_lines, record_event
from app.console import console, queries, signin
from app.console.session import agent_page
from app.errors import NotFound, RekeyError, ValidationFailed
from app.extensions import db
from app.recovery import evidence
from app.recovery.commands import AGENT_ACTIONS, perform_action
from app.recovery.evidence import REFUSED_TYPES
from app.recovery.models import STATES
from app.recovery.presenter import describe_case
from app.web import check_form_text
from app.webui import render_page

EVIDENCE_CHOICES = [("video_call", "Video call (attestation)")] + [
    (t, t.replace("_", " ").capitalize()) for t in REFUSED_TYPES]


def _form() -> dict[str, str]:
    params = {k: v for k, v in request.form.items()}
    check_form_text(params)
    return params


def _case_context(case_id: str) -> dict[str, Any]:
    case = describe_case(g.actor, case_id)
    return {"case": case, "calls": queries.open_calls(g.actor, case_id),
            "unavailable": queries.unavailable_actions_for(g.actor, case_id),
            "is_destructive": queries.is_destructive, "evidence_choices": EVIDENCE_CHOICES,
            "agent": g.agent, "stepped_up": _stepped_up(), "agent_actions": AGENT_ACTIONS}


def _stepped_up() -> bool:
    from app.tenants.step_up import has_recent_second_factor

    return has_recent_second_factor(g.actor)


def _case_page(case_id: str, *, status: int = 200, **extra: Any) -> Response:
    return render_page("console/case.html", status=status, **_case_context(case_id), **extra)


def _refused(case_id: str, exc: RekeyError, **extra: Any) -> Response:
    """Show the refusal on the case page. A refusal that must be recorded (a rejected method, a
    wrong code) keeps its audit row; anything else is rolled back first. Not found (another
    tenant's case, a call of another case) is the plain not-found page."""
    if exc.status == 404:
        raise exc
    if exc.keep_changes:
        g.keep_changes = True
    else:
        db.session.rollback()
    return _case_page(case_id, status=exc.status, refusal={"code": exc.code, "message": exc.message,
                                                           "details": exc.details}, **extra)


@console.get("/queue")
@agent_page
def queue() -> Any:
    state = request.args.get("state") or None
    if state is not None and state not in STATES:
        raise ValidationFailed("Unknown state.", details={"allowed": list(STATES)})
    return render_page("console/queue.html", **queries.queue(g.actor, state=state), state=state, states=STATES,
                       agent=g.agent)


@console.get("/cases/<case_id>")
@agent_page
def case_page(case_id: str) -> Any:
    return _case_page(case_id)


@console.get("/cases/<case_id>/live")
@agent_page
def case_live(case_id: str) -> Any:
    """The case's state panel, polled by htmx every few seconds: the page follows the worker."""
    return render_page("console/_live.html", **_case_context(case_id))


@console.post("/cases/<case_id>/evidence")
@agent_page
def add_evidence(case_id: str) -> Any:
    form = _form()
    details = {k: form.get(k, "") for k in ("result", "matched_against", "reference") if form.get(k)}
    try:
        evidence.record_evidence(g.actor, case_id, type_=form.get("type", ""), details=details,
                                 reason=form.get("reason", ""))
    except RekeyError as exc:
        return _refused(case_id, exc)
    return redirect(f"/console/cases/{case_id}", code=303)


@console.post("/cases/<case_id>/calls")
@agent_page
def place_call(case_id: str) -> Any:
    form = _form()
    try:
        evidence.place_verification_call(g.actor, case_id, channel_id=form.get("channel_id", ""),
                                         method=form.get("method", "sms"))
    except RekeyError as exc:
        return _refused(case_id, exc)
    return redirect(f"/console/cases/{case_id}", code=303)


@console.post("/cases/<case_id>/calls/<call_id>/confirm")
@agent_page
def confirm_call(case_id: str, call_id: str) -> Any:
    try:
        evidence.confirm_verification_call(g.actor, case_id, call_id, _form().get("code", "").strip())
    except RekeyError as exc:
        return _refused(case_id, exc)
    return redirect(f"/console/cases/{case_id}", code=303)


@console.post("/cases/<case_id>/actions/<action>")
@agent_page
def act(case_id: str, action: str) -> Any:
    """One of the runbook's actions: a reason, a confirmation for what cannot be undone, and for
    a destructive one a recent second factor (an authenticator code may come with the form)."""
    if action not in AGENT_ACTIONS:
        raise NotFound("No such action.")
    form = _form()
    params: dict[str, Any] = {"reason": form.get("reason", "")}
    for key in ("trigger", "action_id"):
        if form.get(key):
            params[key] = form[key]
    if form.get("backup_codes_unusable"):
        params["backup_codes_unusable"] = form.get("backup_codes_unusable")
    if queries.is_destructive(action) and form.get("confirm") != "yes":
        return _case_page(case_id, status=422, pending={"action": action, **params}, refusal={
            "code": "confirmation_required", "message": "Tick the confirmation: this action cannot be undone.",
            "details": {}})
    code = form.get("step_up_code", "").strip()
    try:
        if code:
            signin.step_up_with_totp(g.console_session, g.agent, code)
            g.actor = signin.console_actor(g.console_session, g.agent, g.actor.ip, g.actor.request_id)
        outcome = perform_action(g.actor, case_id, action, params)
    except RekeyError as exc:
        return _refused(case_id, exc, pending={"action": action, **params})
    done = {"action": action, "status": outcome.action.status if outcome.action else "done",
            "runs_at": outcome.action.execute_after if outcome.action else None}
    # A secret is never shown here: backup codes go over the verified channel only.
    return _case_page(case_id, result=done)


@console.get("/users/<user_id>")
@agent_page
def user_page(user_id: str) -> Any:
    """The runbook's MFA tab."""
    return render_page("console/user.html", user=describe_user(g.actor, user_id),
                       notes=queries.user_notes(g.actor, user_id), case_id=request.args.get("case"), agent=g.agent)


@console.post("/users/<user_id>/notes")
@agent_page
def note(user_id: str) -> Any:
    form = _form()
    try:
        add_note(g.actor, user_id, form.get("body", ""))
    except RekeyError as exc:
        if exc.status == 404:
            raise
        db.session.rollback()
        return render_page("console/user.html", status=exc.status, error=exc.message,
                           user=describe_user(g.actor, user_id), notes=queries.user_notes(g.actor, user_id),
                           case_id=form.get("case"), agent=g.agent)
    back = f"/console/users/{user_id}" + (f"?case={form['case']}" if form.get("case") else "")
    return redirect(back, code=303)


def _uuid_arg(name: str) -> uuid.UUID | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise ValidationFailed(f"{name} is not an id.", details={"field": name}) from exc


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationFailed(f"{name} is not a date (YYYY-MM-DD) or time.", details={"field": name}) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _audit_filter() -> tuple[AuditFilter, dict[str, str]]:
    """The audit filter of this request's query (action, actor, user, case, since, until), every
    id checked to be the actor's tenant's (another tenant's: 404)."""
    case_id, user_id = _uuid_arg("case"), _uuid_arg("user")
    action, actor = request.args.get("action") or None, request.args.get("actor") or None
    check_form_text({k: v for k, v in (("action", action), ("actor", actor)) if v})
    since, until = _time_arg("since"), _time_arg("until")
    if case_id is not None:
        queries.require_case(g.actor, case_id)  # another tenant's id: 404, as everywhere
    if user_id is not None:
        describe_user(g.actor, user_id)
    assert g.actor.tenant_id is not None
    query = {k: str(v) for k, v in (("case", case_id), ("user", user_id), ("action", action), ("actor", actor),
                                    ("since", since), ("until", until)) if v}
    return AuditFilter(tenant_id=g.actor.tenant_id, action=action, actor=actor, user=user_id, case=case_id,
                       since=since, until=until), query


@console.get("/audit")
@agent_page
def audit_page() -> Any:
    """The audit view: filters, and the download of what they select."""
    _flt, query = _audit_filter()
    raw = {k: request.args.get(k, "") for k in ("action", "actor", "user", "case", "since", "until")}
    return render_page("console/audit.html", agent=g.agent, values=raw, query=urlencode(
        {k: v for k, v in raw.items() if v}), actions=sorted(a.value for a in AuditAction), filtered=bool(query))


@console.get("/audit.<fmt>")
@agent_page
def audit_download(fmt: str) -> Any:
    """The tenant's audit trail, filtered, as CSV or JSON lines (streamed); the export itself is
    audited, as the API's is ("every admin-initiated MFA reset in the last 90 days")."""
    if fmt not in ("csv", "jsonl"):
        raise NotFound("The audit trail downloads as audit.csv or audit.jsonl.")
    flt, query = _audit_filter()
    record_event(g.actor, AuditAction.AUDIT_EXPORTED, details={"format": fmt, "door": "console", **query})
    db.session.commit()
    response = Response(stream_with_context(export_lines(flt, fmt)),
                        mimetype="text/csv" if fmt == "csv" else "application/x-ndjson")
    response.headers["Content-Disposition"] = f'attachment; filename="rekey-audit.{fmt}"'
    return response
