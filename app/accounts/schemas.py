from __future__ import annotations

from typing import Any, ClassVar

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema


class PasswordStepIn(Schema):
    # Checked (after NFKC and lower-casing) by the accounts service, which refuses non-ASCII
    # addresses; documented as an email so a client knows a bare name is malformed (400).
    email = fields.String(required=True, validate=validate.Length(min=3, max=320),
                          metadata={"format": "email"})
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024), load_only=True)


class SigninIn(PasswordStepIn):
    otp = fields.String(validate=validate.Length(min=1, max=16), load_only=True)
    backup_code = fields.String(validate=validate.Length(min=1, max=64), load_only=True)
    # A sign-in names one second factor: both at once is malformed (400).
    openapi_keywords: ClassVar[dict[str, Any]] = {"not": {"required": ["otp", "backup_code"]}}


class SigninOut(Schema):
    status = fields.String(required=True)
    token = fields.String(allow_none=True)


class TotpEnrolmentOut(Schema):
    factor_id = fields.UUID()
    secret = fields.String()
    otpauth_uri = fields.String()


class CodeIn(Schema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=16), load_only=True)


class FactorOut(Schema):
    id = fields.UUID()
    kind = fields.String(metadata={"description": "totp | webauthn (a security key)"})
    status = fields.String()
    created_at = fields.DateTime()
    activated_at = fields.DateTime(allow_none=True)
    removed_at = fields.DateTime(allow_none=True)
    label = fields.String(allow_none=True, metadata={"description": "A security key's name, given by its user."})
    last_used_at = fields.DateTime(allow_none=True, metadata={"description": "A security key's last sign-in."})


class BackupCodesOut(Schema):
    codes = fields.List(fields.String())
    remaining = fields.Integer()


class PasswordChangeIn(Schema):
    new_password = fields.String(required=True, validate=validate.Length(min=1, max=1024), load_only=True)
    current_password = fields.String(validate=validate.Length(min=1, max=1024), load_only=True)


class StatusOut(Schema):
    status = fields.String()


class _PasswordState(Schema):
    set = fields.Boolean()
    must_change = fields.Boolean()
    set_at = fields.DateTime(allow_none=True)


class _BackupCodesState(Schema):
    remaining = fields.Integer()
    label = fields.String()


class _Identity(Schema):
    id = fields.UUID()
    issuer = fields.String()
    subject = fields.String()
    linked_at = fields.DateTime()


class ChannelOut(Schema):
    id = fields.UUID()
    kind = fields.String()
    value = fields.String(metadata={"description": "phones are masked"})
    added_at = fields.DateTime()
    verified_at = fields.DateTime(allow_none=True)
    removed_at = fields.DateTime(allow_none=True)
    compromised_at = fields.DateTime(allow_none=True, metadata={
        "description": "Set when the phone was verified in a round that ended as a suspected attack: "
                       "it verifies nobody until a senior admin trusts it again"})
    compromised_case_id = fields.UUID(allow_none=True)


class TrustIn(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=3, max=2000))


class _Signin(Schema):
    occurred_at = fields.DateTime()
    ip = fields.String(allow_none=True)
    result = fields.String()
    method = fields.String()


class UserDetailOut(Schema):
    id = fields.UUID()
    email = fields.String()
    display_name = fields.String()
    status = fields.String()
    enrolment_closed_at = fields.DateTime(allow_none=True, metadata={
        "description": "Set while a refused or suspected recovery left the user without a factor: "
                       "no sign-in without a factor until a case is verified again"})
    privileged = fields.Boolean()
    created_at = fields.DateTime()
    password = fields.Nested(_PasswordState)
    factors = fields.List(fields.Nested(FactorOut))
    backup_codes = fields.Nested(_BackupCodesState)
    identities = fields.List(fields.Nested(_Identity))
    channels = fields.List(fields.Nested(ChannelOut))
    recent_signins = fields.List(fields.Nested(_Signin))


class NoteIn(Schema):
    body = fields.String(required=True, validate=validate.Length(min=1, max=2000))


class NoteOut(Schema):
    id = fields.UUID()
    user_id = fields.UUID()
    author_id = fields.UUID()
    body = fields.String()
    created_at = fields.DateTime()


# --- the two-step sign-in and security keys ----------------------------------------------------



def _pending_token() -> fields.String:
    return fields.String(required=True, validate=validate.Length(min=1, max=128), load_only=True,
                         metadata={"description": "The pending sign-in's token from the password step."})


# WebAuthn's JSON encodes binary as base64url (padding optional).
_B64URL = validate.Regexp(r"^[A-Za-z0-9_-]*={0,2}$", error="Not base64url.")


def _b64url(max_length: int, *, required: bool = True) -> fields.String:
    return fields.String(required=required, validate=[validate.Length(min=1, max=max_length), _B64URL])


class PasswordStepOut(Schema):
    status = fields.String(required=True, metadata={
        "description": "ok | mfa_required | enrolment_required | password_change_required"})
    token = fields.String(allow_none=True, metadata={"description": "The session, unless a factor is owed."})
    pending_token = fields.String(allow_none=True, metadata={
        "description": "With mfa_required: finishes the sign-in once, within expires_in seconds."})
    methods = fields.List(fields.String(), metadata={
        "description": "With mfa_required: what the account can finish with (totp, webauthn, backup_code)."})
    expires_in = fields.Integer(allow_none=True)


class SecondFactorIn(Schema):
    pending_token = _pending_token()
    otp = fields.String(validate=validate.Length(min=1, max=16), load_only=True)
    backup_code = fields.String(validate=validate.Length(min=1, max=64), load_only=True)
    openapi_keywords: ClassVar[dict[str, Any]] = {"oneOf": [{"required": ["otp"]}, {"required": ["backup_code"]}]}

    @validates_schema
    def _one_factor(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("otp" in data) == ("backup_code" in data):
            raise ValidationError("Give exactly one of otp and backup_code.", "_schema")


class PendingIn(Schema):
    pending_token = _pending_token()


class _AttestationResponse(Schema):
    class Meta:
        unknown = EXCLUDE  # browsers add fields (publicKey, authenticatorData) we do not need

    clientDataJSON = _b64url(4096)  # noqa: N815  (WebAuthn's own names)
    attestationObject = _b64url(65536)  # noqa: N815
    transports = fields.List(fields.String(validate=validate.Length(max=32)), validate=validate.Length(max=16))


class _AssertionResponse(Schema):
    class Meta:
        unknown = EXCLUDE

    clientDataJSON = _b64url(4096)  # noqa: N815
    authenticatorData = _b64url(4096)  # noqa: N815
    signature = _b64url(2048)
    userHandle = fields.String(allow_none=True, validate=[validate.Length(max=1024), _B64URL])  # noqa: N815


class _Credential(Schema):
    """`PublicKeyCredential.toJSON()` as the browser sends it."""

    class Meta:
        unknown = EXCLUDE

    id = _b64url(1400)
    rawId = _b64url(1400)  # noqa: N815
    type = fields.String(required=True, validate=validate.OneOf(["public-key"]))
    authenticatorAttachment = fields.String(allow_none=True)  # noqa: N815
    clientExtensionResults = fields.Dict()  # noqa: N815


class RegistrationCredentialIn(_Credential):
    response = fields.Nested(_AttestationResponse, required=True)


class AssertionCredentialIn(_Credential):
    response = fields.Nested(_AssertionResponse, required=True)


class KeyRegistrationIn(Schema):
    credential = fields.Nested(RegistrationCredentialIn, required=True)
    label = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "Your name for the key."})


class KeyAssertionIn(Schema):
    pending_token = _pending_token()
    credential = fields.Nested(AssertionCredentialIn, required=True)


class KeyLabelIn(Schema):
    label = fields.String(required=True, validate=validate.Length(min=1, max=64))


class WebAuthnOptionsOut(Schema):
    options = fields.Dict(metadata={"description": "WebAuthn options in their JSON form, for the browser's "
                                                   "PublicKeyCredential.parseCreationOptionsFromJSON (or "
                                                   "parseRequestOptionsFromJSON)."})
    expires_in = fields.Integer(metadata={"description": "Seconds until the challenge in them expires."})


class SecurityKeyOut(Schema):
    id = fields.UUID()
    label = fields.String()
    created_at = fields.DateTime()
    last_used_at = fields.DateTime(allow_none=True)
    aaguid = fields.String(metadata={"description": "The authenticator model (all zeros: not told)."})
    transports = fields.List(fields.String())
    backed_up = fields.Boolean(metadata={"description": "A synced passkey rather than a single device."})
