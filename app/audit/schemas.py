from __future__ import annotations

from marshmallow import Schema, fields, validate


class AuditQuery(Schema):
    action = fields.String(validate=validate.Length(max=64))
    actor = fields.String(validate=validate.Length(max=64))
    user = fields.UUID()
    case = fields.UUID()
    since = fields.AwareDateTime(default_timezone=None)
    until = fields.AwareDateTime(default_timezone=None)
    format = fields.String(load_default="jsonl", validate=validate.OneOf(["jsonl", "csv"]))


class ChainReportOut(Schema):
    tenant_id = fields.String()
    events = fields.Integer()
    ok = fields.Boolean()
    first_broken_seq = fields.Integer(allow_none=True)
    problem = fields.String(allow_none=True)
