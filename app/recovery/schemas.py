from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate

from app.recovery.models import STATES
from app.recovery.state import REFUSAL_TRIGGERS


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("A reason needs words, not only whitespace.")


def reason_field(*, required: bool = True) -> fields.String:
    """A reason for the audit trail: 3-2000 characters, not all of them whitespace (a blank
    reason would satisfy the rule "every action carries a reason" in form only)."""
    return fields.String(required=required, validate=[validate.Length(min=3, max=2000), _not_blank],
                         metadata={"pattern": r"\S"})


class CaseListQuery(Schema):
    state = fields.String(validate=validate.OneOf(STATES))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=500))


class EvidenceIn(Schema):
    type = fields.String(required=True, validate=validate.Length(min=1, max=40))
    details = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=dict)
    reason = reason_field()


class EvidenceOut(Schema):
    id = fields.UUID()
    type = fields.String()
    accepted = fields.Boolean()
    details = fields.Dict()
    rejection_reason = fields.String(allow_none=True)
    recorded_by_type = fields.String()
    recorded_by_id = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    recorded_at = fields.DateTime()
    round = fields.Integer(metadata={"description": "The case's round it was recorded in; only the "
                                                    "current round's evidence counts"})


class VerificationCallIn(Schema):
    channel_id = fields.UUID(required=True)
    method = fields.String(required=True, validate=validate.OneOf(["voice", "sms"]))


class VerificationCallOut(Schema):
    id = fields.UUID()
    case_id = fields.UUID()
    channel_id = fields.UUID()
    method = fields.String()
    status = fields.String()
    attempts = fields.Integer()
    max_attempts = fields.Integer()
    expires_at = fields.DateTime()
    sent_at = fields.DateTime(allow_none=True)
    verified_at = fields.DateTime(allow_none=True)


class ConfirmIn(Schema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=16), load_only=True)


class ActionIn(Schema):
    """Every action needs a reason. `trigger` is for `refuse`; `backup_codes_unusable` says why
    a reset is needed although codes remain; `delivery` is for `generate_backup_codes`
    (`verified_phone`, or `video_call` when the acting agent verified the user on one in the
    current round and no cooldown or approval applies); `action_id` is required by `approve`:
    the pending action it approves."""

    reason = reason_field()
    action_id = fields.UUID(metadata={"description": "approve: the id of the action awaiting approval"})
    trigger = fields.String(validate=validate.OneOf(REFUSAL_TRIGGERS))
    backup_codes_unusable = reason_field(required=False)
    delivery = fields.String(load_default="verified_phone",
                             validate=validate.OneOf(["verified_phone", "video_call"]))
    channel_id = fields.UUID(metadata={
        "description": "send_federated_signin_link: the user's channel on file (since before the case's day) that "
                       "gets the single-use sign-in link"})
    provider_id = fields.UUID(metadata={
        "description": "send_federated_signin_link: which of the tenant's identity providers (default: the first "
                       "at which the user has an identity linked before the case opened)"})


class CaseSummary(Schema):
    id = fields.UUID()
    state = fields.String()
    user_id = fields.UUID(allow_none=True)
    flags = fields.List(fields.String())
    refusal_trigger = fields.String(allow_none=True)
    ticket_id = fields.String(allow_none=True)
    opened_at = fields.DateTime()
    updated_at = fields.DateTime()


class _RecommendedPath(Schema):
    path = fields.String()
    reason = fields.String()


class _CaseTimelineEntry(Schema):
    seq = fields.Integer()
    occurred_at = fields.DateTime()
    action = fields.String()
    actor_type = fields.String()
    actor_id = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    details = fields.Dict()


class _CallableChannel(Schema):
    id = fields.UUID()
    kind = fields.String()
    value = fields.String()
    added_at = fields.DateTime()
    callable = fields.Boolean()
    not_callable_reason = fields.String(allow_none=True)


class CaseDetail(CaseSummary):
    round = fields.Integer(metadata={"description": "A suspension, a refusal or a reopening ends a round"})
    escalation_expires_at = fields.DateTime(allow_none=True)
    requester_email = fields.String(allow_none=True)
    subject = fields.String(allow_none=True)
    requests = fields.Integer()
    verification_expires_at = fields.DateTime(allow_none=True)
    verified_at = fields.DateTime(allow_none=True)
    closed_at = fields.DateTime(allow_none=True)
    evidence = fields.List(fields.Nested(EvidenceOut))
    evidence_required_types = fields.Integer()
    callable_channels = fields.List(fields.Nested(_CallableChannel))
    recommended_path = fields.Nested(_RecommendedPath, allow_none=True)
    allowed_actions = fields.List(fields.String())
    pending_actions = fields.List(fields.Nested(lambda: CaseActionOut()))
    timeline = fields.List(fields.Nested(_CaseTimelineEntry))


class CaseActionOut(Schema):
    id = fields.UUID()
    action = fields.String()
    status = fields.String()
    requested_by = fields.String()
    approved_by = fields.String(allow_none=True)
    reason = fields.String()
    created_at = fields.DateTime()
    execute_after = fields.DateTime(allow_none=True)
    done_at = fields.DateTime(allow_none=True)
    round = fields.Integer()


class ActionOut(Schema):
    case = fields.Nested(CaseDetail)
    action = fields.Nested(CaseActionOut, allow_none=True)
    backup_codes = fields.List(fields.String(), metadata={
        "description": "Only for generate_backup_codes with delivery=video_call: shown this once."})


class LinkOut(Schema):
    status = fields.String()
