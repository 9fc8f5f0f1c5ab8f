"""Console sign-in pages: the invitation (set the password), the password step, the second factor
(authenticator app or security key), the first enrolment, the step-up, sign-out. Each view calls
one service in app/console/signin.py or credentials.py; the security-key steps are small JSON
calls made by static/js/console.js (CSRF header, same origin)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, redirect, request

from app.console import console, credentials, session, signin
from app.errors import RekeyError
from app.extensions import db
from app.web import check_form_text, client_ip, loads_strict
from app.webui import render_page


def _form() -> dict[str, str]:
    params = {k: v for k, v in request.form.items()}
    check_form_text(params)
    return params


def _json_body() -> dict[str, Any]:
    body = loads_strict(request.get_data(cache=True) or b"{}")
    return body if isinstance(body, dict) else {}


def _refused_json(exc: RekeyError) -> Response:
    if exc.keep_changes:
        g.keep_changes = True
    else:
        db.session.rollback()
    response = jsonify({"error": {"code": exc.code, "message": exc.message, "details": exc.details}})
    response.status_code = exc.status
    return response


@console.get("/")
def home() -> Any:
    return redirect("/console/queue" if session.current_session(("full",)) else "/console/signin", code=303)


# --- the invitation --------------------------------------------------------------------------


@console.get("/invitation/<token>")
def invitation(token: str) -> Any:
    """Who the invitation is for and the password form (reads only)."""
    agent = credentials.describe_invitation(token)
    return render_page("console/invitation.html", agent=agent, token=token, tenant_slug=request.args.get("tenant", ""),
                       no_referrer=True)


@console.post("/invitation/<token>")
def accept_invitation(token: str) -> Any:
    form = _form()
    agent = credentials.describe_invitation(token)
    if form.get("password", "") != form.get("password_again", ""):
        return render_page("console/invitation.html", agent=agent, token=token, status=422, no_referrer=True,
                           tenant_slug=form.get("tenant", ""), error="The two passwords differ.")
    try:
        credentials.accept_invitation(token, password=form.get("password", ""), ip=client_ip(),
                                      request_id=g.get("request_id"))
    except RekeyError as exc:
        if exc.status == 404:
            raise
        db.session.rollback()
        return render_page("console/invitation.html", agent=agent, token=token, status=exc.status, no_referrer=True,
                           tenant_slug=form.get("tenant", ""), error=exc.message)
    from app.tenants.models import Tenant

    tenant = db.session.get(Tenant, agent.tenant_id)
    return redirect(f"/console/signin?tenant={tenant.slug if tenant else ''}&email={agent.email}", code=303)


# --- sign-in -----------------------------------------------------------------------------------


def _signin_page(status: int = 200, error: str | None = None, **values: str) -> Response:
    return render_page("console/signin.html", status=status, error=error,
                       tenant_slug=values.get("tenant", request.args.get("tenant", ""))[:64],
                       email=values.get("email", request.args.get("email", ""))[:320],
                       next=session.safe_next(values.get("next") or request.args.get("next")))


@console.get("/signin")
def signin_page() -> Any:
    return _signin_page()


@console.post("/signin")
def signin_submit() -> Any:
    form = _form()
    try:
        started = signin.begin_console_sign_in(tenant_slug=form.get("tenant", ""), email=form.get("email", ""),
                                               password=form.get("password", ""), ip=client_ip(),
                                               request_id=g.get("request_id"))
    except RekeyError as exc:
        if exc.keep_changes:
            g.keep_changes = True
        response = _signin_page(exc.status, exc.message, tenant=form.get("tenant", ""), email=form.get("email", ""),
                                next=form.get("next", ""))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            response.headers["Retry-After"] = str(retry_after)
        return response
    session.begin(started.token)
    back = session.safe_next(form.get("next"))
    target = "/console/enrol" if started.stage == "enrol" else "/console/signin/factor"
    return redirect(target + (f"?next={back}" if back else ""), code=303)


@console.get("/signin/factor")
def factor_page() -> Any:
    found = session.current_session(("password",))
    if found is None:
        return redirect("/console/signin", code=303)
    return render_page("console/factor.html", methods=credentials.methods_of(found[1].id),
                       next=session.safe_next(request.args.get("next")))


def _after_signin(result: signin.ConsoleSignin, back: str | None) -> str:
    session.begin(result.token)
    return back or "/console/queue"


@console.post("/signin/factor")
def factor_submit() -> Any:
    found = session.current_session(("password",))
    if found is None:
        return redirect("/console/signin", code=303)
    form = _form()
    try:
        result = signin.complete_with_totp(found[0], found[1], form.get("code", "").strip(), ip=client_ip(),
                                           request_id=g.get("request_id"))
    except RekeyError as exc:
        if exc.keep_changes:
            g.keep_changes = True
        return render_page("console/factor.html", status=exc.status, error=exc.message,
                           methods=credentials.methods_of(found[1].id), next=session.safe_next(form.get("next")))
    return redirect(_after_signin(result, session.safe_next(form.get("next"))), code=303)


@console.post("/signin/key/options")
def factor_key_options() -> Any:
    found = session.current_session(("password",))
    if found is None:
        return jsonify({"error": {"code": "session_invalid", "message": "Sign in again.", "details": {}}}), 401
    try:
        return jsonify(credentials.key_assertion_options(found[0], found[1]))
    except RekeyError as exc:
        return _refused_json(exc)


@console.post("/signin/key")
def factor_key() -> Any:
    found = session.current_session(("password",))
    if found is None:
        return jsonify({"error": {"code": "session_invalid", "message": "Sign in again.", "details": {}}}), 401
    body = _json_body()
    try:
        result = signin.complete_with_key(found[0], found[1], body.get("credential") or {}, ip=client_ip(),
                                          request_id=g.get("request_id"))
    except RekeyError as exc:
        return _refused_json(exc)
    return jsonify({"redirect": _after_signin(result, session.safe_next(body.get("next")))})


# --- first enrolment -------------------------------------------------------------------------


@console.get("/enrol")
def enrol_page() -> Any:
    if session.current_session(("enrol",)) is None:
        return redirect("/console/signin", code=303)
    return render_page("console/enrol.html", secret=None, uri=None)


@console.post("/enrol/totp")
def enrol_totp_start() -> Any:
    found = session.current_session(("enrol",))
    if found is None:
        return redirect("/console/signin", code=303)
    secret, uri = credentials.start_totp(*found)
    return render_page("console/enrol.html", secret=secret, uri=uri)


@console.post("/enrol/totp/confirm")
def enrol_totp_confirm() -> Any:
    found = session.current_session(("enrol",))
    if found is None:
        return redirect("/console/signin", code=303)
    try:
        factor = credentials.confirm_totp(found[1], _form().get("code", "").strip())
    except RekeyError as exc:
        if exc.keep_changes:
            g.keep_changes = True
        return render_page("console/enrol.html", status=exc.status, error=exc.message, secret=None, uri=None)
    result = signin.finish_enrolment(found[0], found[1], "totp", str(factor.id), ip=client_ip(),
                                     request_id=g.get("request_id"))
    return redirect(_after_signin(result, None), code=303)


@console.post("/enrol/key/options")
def enrol_key_options() -> Any:
    found = session.current_session(("enrol",))
    if found is None:
        return jsonify({"error": {"code": "session_invalid", "message": "Sign in again.", "details": {}}}), 401
    try:
        return jsonify(credentials.key_registration_options(found[0], found[1]))
    except RekeyError as exc:
        return _refused_json(exc)


@console.post("/enrol/key")
def enrol_key() -> Any:
    found = session.current_session(("enrol",))
    if found is None:
        return jsonify({"error": {"code": "session_invalid", "message": "Sign in again.", "details": {}}}), 401
    try:
        factor = credentials.register_key(found[0], found[1], _json_body().get("credential") or {})
    except RekeyError as exc:
        return _refused_json(exc)
    result = signin.finish_enrolment(found[0], found[1], "webauthn", str(factor.id), ip=client_ip(),
                                     request_id=g.get("request_id"))
    return jsonify({"redirect": _after_signin(result, None)})


# --- step-up and sign-out ---------------------------------------------------------------------


@console.post("/step-up/key/options")
@session.agent_page
def step_up_key_options() -> Any:
    try:
        return jsonify(credentials.key_assertion_options(g.console_session, g.agent))
    except RekeyError as exc:
        return _refused_json(exc)


@console.post("/step-up/key")
@session.agent_page
def step_up_key() -> Any:
    try:
        signin.step_up_with_key(g.console_session, g.agent, _json_body().get("credential") or {})
    except RekeyError as exc:
        return _refused_json(exc)
    return jsonify({"status": "ok"})


@console.post("/signout")
def signout() -> Any:
    session.end()
    return redirect("/console/signin", code=303)
