from __future__ import annotations

from datetime import UTC, datetime

from marshmallow import Schema, ValidationError, fields, validate


def _representable_in_utc(moment: datetime) -> None:
    # 9999-12-31T23:59-14:00 is a valid ISO time whose UTC form does not exist: without this
    # check it fails deep in the query, after the export has started.
    try:
        moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValidationError("The time is out of range.") from exc


class AuditQuery(Schema):
    action = fields.String(validate=validate.Length(max=64))
    actor = fields.String(validate=validate.Length(max=64))
    user = fields.UUID()
    case = fields.UUID()
    since = fields.AwareDateTime(default_timezone=None, validate=_representable_in_utc)
    until = fields.AwareDateTime(default_timezone=None, validate=_representable_in_utc)
    format = fields.String(load_default="jsonl", validate=validate.OneOf(["jsonl", "csv"]))


class ChainReportOut(Schema):
    tenant_id = fields.String()
    events = fields.Integer()
    ok = fields.Boolean()
    first_broken_seq = fields.Integer(allow_none=True)
    problem = fields.String(allow_none=True)
    # How many signed checkpoints the rows matched (null: no checkpoints were checked).
    checkpoints = fields.Integer(allow_none=True)


class CheckpointQuery(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=1000))


class CheckpointBody(Schema):
    tenant_id = fields.String()
    number = fields.Integer()
    seq = fields.Integer()
    hash = fields.String()
    event_time = fields.String()
    checkpoint_time = fields.String()
    prev_digest = fields.String()
    key_id = fields.String()


class CheckpointOut(Schema):
    body = fields.Nested(CheckpointBody)
    digest = fields.String()
    signature = fields.String()
    unreadable = fields.String()


class CheckpointsOut(Schema):
    public_key = fields.String(allow_none=True, metadata={"description": "Ed25519 public key, PEM"})
    key_id = fields.String(allow_none=True)
    checkpoints = fields.List(fields.Nested(CheckpointOut))
