from __future__ import annotations

from typing import Any, ClassVar

from marshmallow import Schema, fields, validate


class SigninIn(Schema):
    # Checked (after NFKC and lower-casing) by the accounts service, which refuses non-ASCII
    # addresses; documented as an email so a client knows a bare name is malformed (400).
    email = fields.String(required=True, validate=validate.Length(min=3, max=320),
                          metadata={"format": "email"})
    password = fields.String(required=True, validate=validate.Length(min=1, max=1024), load_only=True)
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
    kind = fields.String()
    status = fields.String()
    created_at = fields.DateTime()
    activated_at = fields.DateTime(allow_none=True)
    removed_at = fields.DateTime(allow_none=True)


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
