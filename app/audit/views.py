"""Audit export (the runbook's "show me every admin-initiated MFA reset") and chain check."""

from __future__ import annotations

from typing import Any

from flask import Response, stream_with_context
from marshmallow import RAISE

from app.audit.models import AuditAction
from app.audit.schemas import AuditQuery, ChainReportOut, CheckpointQuery, CheckpointsOut
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
    """Recompute the tenant's hash chain and name the first broken seq; when the checkpoint
    directory and the public key are configured, also check the rows against every signed
    checkpoint (`checkpoints`: how many matched; null when none could be checked)."""
    from flask import current_app

    from app.audit.checkpoints import CheckpointError, read_log, verifying_key
    from app.audit.services import ChainReport

    tenant_id = current_actor().tenant_id
    assert tenant_id is not None
    settings = current_app.extensions["rekey.settings"]
    key = verifying_key(settings)
    if key is None:
        return verify_chain(tenant_id).as_dict()
    try:
        log = read_log(settings.audit_checkpoint_dir, key, tenant_id)
    except CheckpointError as exc:
        return ChainReport(tenant_id, 0, False, None, f"broken checkpoint: {exc}", 0).as_dict()
    return verify_chain(tenant_id, checkpoints=log).as_dict()


@blp.route("/checkpoints", methods=["GET"])
@agent_required("senior_admin")
@blp.arguments(CheckpointQuery, location="query", unknown=RAISE)
@blp.doc(responses=error_responses({403: "Only a senior admin reads the checkpoints."}))
@blp.response(200, CheckpointsOut)
def checkpoints(query: dict[str, Any]) -> Any:
    """The public key that signs the audit checkpoints and the tenant's newest checkpoints
    (newest first, as stored), for an auditor to keep and check exports against."""
    from flask import current_app

    from app.audit.checkpoints import key_id, latest, public_key_pem, verifying_key

    settings = current_app.extensions["rekey.settings"]
    key = verifying_key(settings)
    found = latest(settings.audit_checkpoint_dir, current_actor().tenant_id, query["limit"])  # type: ignore[arg-type]
    return {"public_key": public_key_pem(key) if key else None, "key_id": key_id(key) if key else None,
            "checkpoints": found}
