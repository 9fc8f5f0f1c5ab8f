"""End-user auth API and the admin's user endpoints."""

from __future__ import annotations

from typing import Any

from flask import g, request

from app.accounts import mfa, security_keys
from app.accounts import signin as steps
from app.accounts.schemas import (
    BackupCodesOut,
    ChannelOut,
    CodeIn,
    FactorOut,
    KeyAssertionIn,
    KeyLabelIn,
    KeyRegistrationIn,
    NoteIn,
    NoteOut,
    PasswordChangeIn,
    PasswordStepIn,
    PasswordStepOut,
    PendingIn,
    SecondFactorIn,
    SecurityKeyOut,
    SigninIn,
    SigninOut,
    StatusOut,
    TotpEnrolmentOut,
    TrustIn,
    UserDetailOut,
    WebAuthnOptionsOut,
)
from app.accounts.services import (
    add_note,
    backup_codes_remaining,
    channel_view,
    describe_user,
    get_user,
    trust_channel,
)
from app.errors import NotFound, Unauthenticated
from app.extensions import db
from app.tenants.models import Tenant
from app.tenants.services import get_tenant_by_slug
from app.web import (
    Blueprint,
    agent_required,
    anonymous_actor,
    current_actor,
    error_responses,
    session_required,
)

auth = Blueprint("auth", __name__, url_prefix="/v1/auth", description="End-user sign-in and enrolment")
admin_users = Blueprint("admin_users", __name__, url_prefix="/v1/admin/users",
                        description="The runbook's user detail and notes")

TENANT_HEADER = "X-Rekey-Tenant"


def _tenant_from_header() -> Tenant:
    # Sign-in has no credential yet, so the tenant is named by the tenant's own sign-in front
    # end (its hostname mapping) in a header; the credentials must then match inside it.
    slug = request.headers.get(TENANT_HEADER, "")
    try:
        return get_tenant_by_slug(slug)
    except NotFound as exc:  # a database outage stays a 503, not a wrong-password 401
        raise Unauthenticated("The email, password or code is not correct.",
                              code="invalid_credentials") from exc


TENANT_PARAM = {"in": "header", "name": TENANT_HEADER, "required": True, "schema": {"type": "string"},
                "description": "The tenant's slug, set by the tenant's own sign-in front end."}
SIGNIN_ERRORS = {
    401: "The email, password or code is not correct (the same answer for an unknown account or tenant).",
    403: "The account is suspended.",
    429: "Too many failed sign-ins for the account or from the address (see Retry-After)."}
STEP_ERRORS = {
    **SIGNIN_ERRORS,
    401: "The code or key is not correct, or the pending sign-in expired, was used or belongs "
         "elsewhere (`signin_expired`: start again with the password).",
    422: "The account has no security key, or security keys are unavailable on this server."}


@auth.route("/signin", methods=["POST"])
@auth.doc(parameters=[TENANT_PARAM], responses=error_responses(SIGNIN_ERRORS))
@auth.arguments(SigninIn)
@auth.response(200, SigninOut)
def signin(body: dict[str, Any]) -> Any:
    """Sign in with email + password + (TOTP code or backup code)."""
    tenant = _tenant_from_header()
    result = steps.sign_in(tenant, anonymous_actor(tenant.id), **body)
    return {"status": result.status, "token": result.token}


@auth.route("/signin/password", methods=["POST"])
@auth.doc(parameters=[TENANT_PARAM], responses=error_responses(SIGNIN_ERRORS))
@auth.arguments(PasswordStepIn)
@auth.response(200, PasswordStepOut)
def signin_password(body: dict[str, Any]) -> Any:
    """Two-step sign-in, step 1: the password; a session, or a pending sign-in and its methods."""
    tenant = _tenant_from_header()
    result = steps.begin_sign_in(tenant, anonymous_actor(tenant.id), **body)
    return {"status": result.status, "token": result.token, "pending_token": result.pending_token,
            "methods": list(result.methods), "expires_in": result.expires_in}


@auth.route("/signin/second-factor", methods=["POST"])
@auth.doc(parameters=[TENANT_PARAM], responses=error_responses(STEP_ERRORS))
@auth.arguments(SecondFactorIn)
@auth.response(200, SigninOut)
def signin_second_factor(body: dict[str, Any]) -> Any:
    """Two-step sign-in, step 2: a TOTP code or a backup code."""
    tenant = _tenant_from_header()
    result = steps.complete_sign_in(tenant, anonymous_actor(tenant.id), **body)
    return {"status": result.status, "token": result.token}


@auth.route("/signin/webauthn/options", methods=["POST"])
@auth.doc(parameters=[TENANT_PARAM], responses=error_responses(STEP_ERRORS))
@auth.arguments(PendingIn)
@auth.response(200, WebAuthnOptionsOut)
def signin_key_options(body: dict[str, Any]) -> Any:
    """Two-step sign-in, step 2 with a security key: the request options (a new challenge)."""
    tenant = _tenant_from_header()
    options = steps.key_options(tenant, anonymous_actor(tenant.id), **body)
    return {"options": options, "expires_in": int(security_keys.CHALLENGE_TTL.total_seconds())}


@auth.route("/signin/webauthn/verify", methods=["POST"])
@auth.doc(parameters=[TENANT_PARAM], responses=error_responses(STEP_ERRORS))
@auth.arguments(KeyAssertionIn)
@auth.response(200, SigninOut)
def signin_key_verify(body: dict[str, Any]) -> Any:
    """Two-step sign-in, step 2 with a security key: the browser's assertion."""
    tenant = _tenant_from_header()
    result = steps.complete_sign_in_with_key(tenant, anonymous_actor(tenant.id), **body)
    return {"status": result.status, "token": result.token}


def _user() -> Any:
    return get_user(g.user_session.tenant_id, g.user_session.user_id)


@auth.route("/enrol/totp", methods=["POST"])
@session_required(restricted_ok=True)
@auth.response(201, TotpEnrolmentOut)
def enrol_totp() -> Any:
    """Start a TOTP enrolment: the secret and otpauth URI, shown once to this session."""
    user = _user()
    tenant = db.session.get(Tenant, user.tenant_id)
    assert tenant is not None  # users cannot outlive their tenant (foreign key)
    factor, secret, uri = mfa.start_totp_enrolment(current_actor(), user, issuer=f"Rekey ({tenant.name})")
    return {"factor_id": factor.id, "secret": secret, "otpauth_uri": uri}


@auth.route("/enrol/totp/confirm", methods=["POST"])
@session_required(restricted_ok=True)
@auth.doc(responses=error_responses({422: "The code is not valid, or no enrolment is pending."}))
@auth.arguments(CodeIn)
@auth.response(200, FactorOut)
def confirm_totp(body: dict[str, Any]) -> Any:
    """Activate the pending TOTP factor with its first code."""
    return mfa.confirm_totp_enrolment(current_actor(), _user(), body["code"])


@auth.route("/enrol/webauthn", methods=["POST"])
@session_required(restricted_ok=True)
@auth.doc(responses=error_responses({422: "Security keys are unavailable: REKEY_PUBLIC_URL has no host name."}))
@auth.response(200, WebAuthnOptionsOut)
def enrol_webauthn() -> Any:
    """Start registering a security key: the creation options, bound to this session."""
    options = security_keys.registration_options(_user(), g.user_session.id)
    return {"options": options, "expires_in": int(security_keys.CHALLENGE_TTL.total_seconds())}


@auth.route("/enrol/webauthn/confirm", methods=["POST"])
@session_required(restricted_ok=True)
@auth.doc(responses=error_responses({
    409: "This key is already registered.",
    422: "The key's answer was refused (see details.problem), or its challenge was used, expired or "
         "asked for by another session."}))
@auth.arguments(KeyRegistrationIn)
@auth.response(201, SecurityKeyOut)
def confirm_webauthn(body: dict[str, Any]) -> Any:
    """Register the security key from the browser's answer to this session's options."""
    factor = security_keys.register_key(current_actor(), _user(), g.user_session.id, body["credential"],
                                        label=body.get("label"))
    return security_keys.describe_key(factor)


@auth.route("/security-keys", methods=["GET"])
@session_required(restricted_ok=False)
@auth.response(200, SecurityKeyOut(many=True))
def list_security_keys() -> Any:
    """The signed-in user's security keys."""
    return [security_keys.describe_key(k.factor) for k in security_keys.active_keys(_user())]


@auth.route("/security-keys/<key_id>", methods=["PATCH"])
@session_required(restricted_ok=False)
@auth.doc(responses=error_responses({404: "No such key of yours."}))
@auth.arguments(KeyLabelIn)
@auth.response(200, SecurityKeyOut)
def rename_security_key(body: dict[str, Any], key_id: str) -> Any:
    """Rename one of your security keys."""
    return security_keys.describe_key(security_keys.rename_key(current_actor(), _user(), key_id, body["label"]))


@auth.route("/security-keys/<key_id>", methods=["DELETE"])
@session_required(restricted_ok=False)
@auth.doc(responses=error_responses({404: "No such key of yours.", 422: "It is your last factor."}))
@auth.response(204)
def remove_security_key(key_id: str) -> Any:
    """Remove one of your security keys (never your last factor)."""
    security_keys.remove_key(current_actor(), _user(), key_id)
    return ""


@auth.route("/backup-codes", methods=["POST"])
@session_required(restricted_ok=True)
@auth.doc(responses=error_responses({403: "A recovery session must enrol a factor first."}))
@auth.response(201, BackupCodesOut)
def regenerate_backup_codes() -> Any:
    """Replace all backup codes with ten new ones, shown once."""
    user = _user()
    codes = mfa.regenerate_backup_codes(current_actor(), user, g.user_session)
    return {"codes": codes, "remaining": backup_codes_remaining(user.id)}


@auth.route("/password", methods=["POST"])
@session_required(restricted_ok=True)
@auth.doc(responses=error_responses({
    422: "The current password is wrong, or the new one breaks a password rule."}))
@auth.arguments(PasswordChangeIn)
@auth.response(200, StatusOut)
def change_password(body: dict[str, Any]) -> Any:
    """Change the password (a forced change after a temporary password needs no current one)."""
    mfa.change_password(current_actor(), _user(), g.user_session, new_password=body["new_password"],
                        current_password=body.get("current_password"))
    return {"status": "password_changed"}


NO_USER = "No such user (another tenant's user is not found either)."


@admin_users.route("/<user_id>", methods=["GET"])
@agent_required()
@admin_users.doc(responses=error_responses({404: NO_USER}))
@admin_users.response(200, UserDetailOut)
def user_detail(user_id: str) -> Any:
    """User detail: factors, backup codes remaining, identities, channels, recent sign-ins."""
    return describe_user(current_actor(), user_id)


@admin_users.route("/<user_id>/notes", methods=["POST"])
@agent_required()
@admin_users.doc(responses=error_responses({
    404: NO_USER, 422: "The note looks like it holds a code; secrets never go in notes."}))
@admin_users.arguments(NoteIn)
@admin_users.response(201, NoteOut)
def post_note(body: dict[str, Any], user_id: str) -> Any:
    """Add a manual note to the user's record (and the audit trail)."""
    return add_note(current_actor(), user_id, body["body"])


@admin_users.route("/<user_id>/channels/<channel_id>/trust", methods=["POST"])
@agent_required()
@admin_users.doc(responses=error_responses({
    403: "Only a senior admin may trust a channel again (and never one of their own account).",
    404: NO_USER + " Or no such channel on the user.",
    409: "The channel is not marked compromised."}))
@admin_users.arguments(TrustIn)
@admin_users.response(200, ChannelOut)
def trust(body: dict[str, Any], user_id: str, channel_id: str) -> Any:
    """Mark a phone verified in a suspected attack's round trusted again (senior admin, reason)."""
    return channel_view(trust_channel(current_actor(), user_id, channel_id, reason=body["reason"]))
