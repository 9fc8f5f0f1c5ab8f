"""What the OpenAPI document says about the webhook doors. The views read the raw body (the
signature covers its bytes), so these schemas document; the adapters parse."""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate

from integrations.base import EVENT_TYPES


class WebhookEnvelope(Schema):
    """Our event envelope, posted by kinds `standard` and `hr` (Standard Webhooks headers).
    Zendesk and Jira integrations post their own ticket payloads to the same door."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    timestamp = fields.String(metadata={"format": "date-time"})
    data = fields.Dict(required=True, metadata={
        "description": "recovery.requested: user_email, external_user_id, ticket_id, requester_email, "
                       "subject, text; recovery.attested: case_id or user_email, voucher_email, relation "
                       "(manager|hr), reference; verification.callback_result: call_id, status, provider_id"})


class IntakeOut(Schema):
    case_id = fields.UUID(metadata={"description": "recovery.requested and recovery.attested"})
    call_id = fields.UUID(metadata={"description": "verification.callback_result"})
    status = fields.String(required=True)


class TwilioStatusIn(Schema):
    """The fields of Twilio's status callback that Rekey reads (Twilio sends more)."""

    class Meta:
        unknown = INCLUDE

    MessageSid = fields.String()
    MessageStatus = fields.String()
    SmsSid = fields.String()
    SmsStatus = fields.String()
    CallSid = fields.String()
    CallStatus = fields.String()
    AnsweredBy = fields.String()
