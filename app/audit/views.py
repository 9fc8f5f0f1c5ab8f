"""Audit export (the runbook's "show me every admin-initiated MFA reset") and chain check."""

from __future__ import annotations

from typing import Any

from flask import Response, stream_with_context
from marshmallow import RAISE

from app.audit.models import AuditAction
from app.audit.schemas import AuditQuery, ChainReportOut
from app.audit.services import AuditFilter, export_lines, record_event, verify_chain
from app.extensions import db
from app.web import Blueprint, agent_required, current_actor, error_responses

blp = Blueprint("audit", __name__, url_prefix="/v1/admin/audit", description="Audit trail")


@blp.route("", methods=["GET"])
@agent_required()
# An unknown parameter is refused, not ignored: a misspelt filter (`acton=`) would otherwise
# hand a compliance officer the whole trail as if it were the filtered one.
@blp.arguments(AuditQuery, location="query", unknown=RAISE)
@blp.doc(responses={200: {
    "description": "The events in seq order: one JSON object a line (format=jsonl), or CSV with a "
                   "header row (format=csv).",
    "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}}}}})
def export(query: dict[str, Any]) -> Any:
    """Stream the tenant's audit events, filtered, as JSON lines or CSV."""
    actor = current_actor()
    fmt = query.pop("format")
    flt = AuditFilter(tenant_id=actor.tenant_id, **query)  # type: ignore[arg-type]
    # The export is itself audited, committed before the stream starts (ASVS 16.4).
    record_event(actor, AuditAction.AUDIT_EXPORTED,
                 details={"format": fmt, **{k: str(v) for k, v in query.items()}})
    db.session.commit()
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(stream_with_context(export_lines(flt, fmt)), mimetype=mimetype)


@blp.route("/verify", methods=["GET"])
@agent_required("senior_admin")
@blp.doc(responses=error_responses({403: "Only a senior admin verifies the chain."}))
@blp.response(200, ChainReportOut)
def verify() -> Any:
    """Recompute the tenant's hash chain and name the first broken seq."""
    return verify_chain(current_actor().tenant_id).as_dict()  # type: ignore[arg-type]
