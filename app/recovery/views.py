"""The admin API for recovery cases: read, record evidence, verify by callback, act."""

from __future__ import annotations

from typing import Any

from flask import g

from app.recovery import closing, evidence
from app.recovery.commands import perform_action
from app.recovery.presenter import describe_case, list_cases
from app.recovery.schemas import (
    ActionIn,
    ActionOut,
    CaseDetail,
    CaseListQuery,
    CaseSummary,
    ConfirmIn,
    EvidenceIn,
    EvidenceOut,
    LinkOut,
    VerificationCallIn,
    VerificationCallOut,
)
from app.web import Blueprint, agent_required, client_ip, current_actor, error_responses

blp = Blueprint("cases", __name__, url_prefix="/v1/admin/cases", description="Recovery cases")

NO_CASE = "No such case (another tenant's case is not found either)."
WRONG_STATE = "The case's state does not allow this; the body names the allowed actions."

@blp.route("", methods=["GET"])
@agent_required()
@blp.arguments(CaseListQuery, location="query")
@blp.response(200, CaseSummary(many=True))
def index(query: dict[str, Any]) -> Any:
    """The tenant's cases, newest first, optionally by state."""
    return list_cases(current_actor(), state=query.get("state"), limit=query["limit"])


@blp.route("/<case_id>", methods=["GET"])
@agent_required()
@blp.doc(responses=error_responses({404: NO_CASE}))
@blp.response(200, CaseDetail)
def show(case_id: str) -> Any:
    """State, flags, evidence, recommended path with reasons, allowed actions, timeline."""
    return describe_case(current_actor(), case_id)


@blp.route("/<case_id>/evidence", methods=["POST"])
@agent_required()
@blp.doc(responses=error_responses({
    404: NO_CASE, 409: WRONG_STATE,
    422: "Unacceptable evidence (the runbook's reason is in details); the attempt is audited."}))
@blp.arguments(EvidenceIn)
@blp.response(201, EvidenceOut)
def add_evidence(body: dict[str, Any], case_id: str) -> Any:
    """Record out-of-band verification evidence (unacceptable types: 422 with the reason)."""
    return evidence.record_evidence(current_actor(), case_id, type_=body["type"], details=body["details"],
                                    reason=body["reason"])


@blp.route("/<case_id>/verification-calls", methods=["POST"])
@agent_required()
@blp.doc(responses=error_responses({
    404: NO_CASE + " Or no such phone channel on the case's user.", 409: WRONG_STATE,
    422: "The number was added on or after the day the case opened (on the tenant's clock).",
    429: "Too many verification calls this hour for the case, the agent or the tenant (`details.scope`); "
         "no code was sent, the refusal is audited; `Retry-After` says when a call can go out."}))
@blp.arguments(VerificationCallIn)
@blp.response(202, VerificationCallOut)
def place_call(body: dict[str, Any], case_id: str) -> Any:
    """Send a one-time code to a phone on file since before the case's day."""
    return evidence.place_verification_call(current_actor(), case_id, channel_id=str(body["channel_id"]),
                                            method=body["method"])


@blp.route("/<case_id>/verification-calls/<call_id>/confirm", methods=["POST"])
@agent_required()
@blp.doc(responses=error_responses({
    404: NO_CASE + " Or no such call on the case.", 409: WRONG_STATE,
    422: "The code is wrong, or the call expired, was locked or superseded."}))
@blp.arguments(ConfirmIn)
@blp.response(200, VerificationCallOut)
def confirm_call(body: dict[str, Any], case_id: str, call_id: str) -> Any:
    """Check the code the user read back (five tries)."""
    return evidence.confirm_verification_call(current_actor(), case_id, call_id, body["code"])


@blp.route("/<case_id>/actions/<action>", methods=["POST"])
@agent_required()
@blp.doc(responses=error_responses({
    404: NO_CASE + " Or no such action.", 409: WRONG_STATE,
    422: "A rule refused the action (no acceptable evidence, a risk flag, the two-person rule)."}))
@blp.arguments(ActionIn)
@blp.response(200, ActionOut)
def act(body: dict[str, Any], case_id: str, action: str) -> Any:
    """Take one of the runbook's actions on the case (reason required; effects run in tasks)."""
    actor = current_actor()
    outcome = perform_action(actor, case_id, action, body)
    answer: dict[str, Any] = {"case": describe_case(actor, case_id), "action": outcome.action}
    if outcome.backup_codes is not None:
        answer["backup_codes"] = outcome.backup_codes
    return answer


links = Blueprint("recovery_links", __name__, url_prefix="/v1/recovery",
                  description="Single-use links from notifications; no sign-in needed")


@links.route("/report/<token>", methods=["POST"])
@links.doc(responses=error_responses({404: "The link is not valid (used, expired or never issued)."}))
@links.response(202, LinkOut)
def report(token: str) -> Any:
    """"This wasn't me": suspends the account, revokes sessions and escalates the case."""
    closing.report_not_me(token, client_ip(), g.request_id)
    return {"status": "reported"}


@links.route("/cancel/<token>", methods=["POST"])
@links.doc(responses=error_responses({404: "The link is not valid (used, expired or never issued)."}))
@links.response(202, LinkOut)
def cancel(token: str) -> Any:
    """Cancel a scheduled reset; the case becomes a suspected attack."""
    closing.cancel_scheduled_reset(token, client_ip(), g.request_id)
    return {"status": "cancelled"}
