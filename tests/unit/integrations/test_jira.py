"""Kind `jira`: the hub signature (GitHub's official vector) and `jira:issue_created`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from integrations.base import PayloadError, SignatureError
from integrations.ticketing.jira import JiraAdapter, adf_to_text, sign

SECRET = "jira-webhook-secret-0123456789"
NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
IDENTIFIER = "a1b2c3d4-0000-4000-8000-000000000001"

adapter = JiraAdapter()

ADF: dict[str, Any] = {"type": "doc", "version": 1, "content": [
    {"type": "paragraph", "content": [
        {"type": "text", "text": "I lost my phone, "},
        {"type": "text", "text": "please help", "marks": [{"type": "strong"}]},
        {"type": "hardBreak"},
        {"type": "mention", "attrs": {"id": "557058:x", "text": "@Support"}}]},
    {"type": "bulletList", "content": [
        {"type": "listItem", "content": [{"type": "paragraph", "content": [
            {"type": "text", "text": "no backup codes"}]}]}]},
]}
ISSUE_CREATED: dict[str, Any] = {
    "timestamp": 1714555800000, "webhookEvent": "jira:issue_created",
    "issue": {"id": "10002", "key": "HELP-42", "fields": {
        "summary": "Cannot sign in",
        "description": ADF,
        "reporter": {"emailAddress": "ana@example.com", "accountId": "5b10a2844c20165700ede21g"},
    }},
}


def test_sign_matches_github_official_vector():
    # Same construction as GitHub's X-Hub-Signature-256 (reference 2.4).
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign("It's a Secret to Everybody", b"Hello, World!") == expected


def test_verify_accepts_github_vector_and_returns_identifier():
    sent = {"X-Hub-Signature": sign("It's a Secret to Everybody", b"Hello, World!"),
            "X-Atlassian-Webhook-Identifier": IDENTIFIER}
    delivery = adapter.verify(sent, b"Hello, World!", "It's a Secret to Everybody", now=NOW)
    assert delivery == IDENTIFIER


def test_verify_accepts_uppercase_hex():
    body = b"{}"
    sent = {"x-hub-signature": "sha256=" + sign(SECRET, body).removeprefix("sha256=").upper()}
    assert adapter.verify(sent, body, SECRET, now=NOW).startswith("sha256:")


def test_delivery_id_without_identifier_is_the_body_digest():
    body = json.dumps(ISSUE_CREATED).encode()
    first = adapter.verify({"X-Hub-Signature": sign(SECRET, body)}, body, SECRET, now=NOW)
    again = adapter.verify({"X-Hub-Signature": sign(SECRET, body)}, body, SECRET, now=NOW)
    assert first == again and first.startswith("sha256:")


@pytest.mark.parametrize("value", [
    "sha1=0123456789abcdef0123456789abcdef01234567",
    "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    "sha256=757107ea",
    "sha256=zz7107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
])
def test_verify_rejects_malformed_header(value):
    with pytest.raises(SignatureError, match="malformed x-hub-signature"):
        adapter.verify({"X-Hub-Signature": value}, b"Hello, World!", SECRET, now=NOW)


def test_verify_rejects_missing_header():
    with pytest.raises(SignatureError, match="missing x-hub-signature"):
        adapter.verify({"X-Atlassian-Webhook-Identifier": IDENTIFIER}, b"{}", SECRET, now=NOW)


def test_verify_rejects_bad_signature():
    sent = {"X-Hub-Signature": sign(SECRET, b'{"a": 1}')}
    with pytest.raises(SignatureError, match="no matching signature"):
        adapter.verify(sent, b'{"a": 2}', SECRET, now=NOW)


def test_verify_has_no_window_because_jira_signs_no_timestamp():
    body = b"{}"
    long_after = datetime(2030, 1, 1, tzinfo=UTC)
    assert adapter.verify({"X-Hub-Signature": sign(SECRET, body)}, body, SECRET, now=long_after)


# --- parse ----------------------------------------------------------------------------------

def test_parse_maps_issue_created_with_adf_description():
    event = adapter.parse({}, ISSUE_CREATED)
    assert event.type == "recovery.requested"
    assert event.data == {
        "user_email": "ana@example.com", "external_user_id": None, "ticket_id": "HELP-42",
        "requester_email": "ana@example.com", "subject": "Cannot sign in",
        "text": "I lost my phone, please help\n@Support\nno backup codes"}


def test_parse_accepts_plain_string_description_and_null():
    fields = {**ISSUE_CREATED["issue"]["fields"], "description": "Lost my phone."}
    payload = {**ISSUE_CREATED, "issue": {**ISSUE_CREATED["issue"], "fields": fields}}
    assert adapter.parse({}, payload).data["text"] == "Lost my phone."
    fields["description"] = None
    assert adapter.parse({}, payload).data["text"] is None


def _with_fields(**change: Any) -> dict[str, Any]:
    fields = {**ISSUE_CREATED["issue"]["fields"], **change}
    return {**ISSUE_CREATED, "issue": {**ISSUE_CREATED["issue"], "fields": fields}}


@pytest.mark.parametrize(("payload", "message"), [
    ({**ISSUE_CREATED, "webhookEvent": "jira:issue_updated"}, "must be jira:issue_created"),
    ({**ISSUE_CREATED, "issue": None}, "issue must be an object"),
    ({**ISSUE_CREATED, "issue": {"key": "HELP-1"}}, "issue.fields must be an object"),
    (_with_fields(reporter={"accountId": "5b10a2844c20165700ede21g"}), "emailAddress is missing"),
    (_with_fields(reporter=None), "emailAddress is missing"),
    (_with_fields(description=42), "description must be a string"),
    (_with_fields(description={"type": "paragraph"}), "neither a string nor an ADF"),
    (_with_fields(description={"type": "doc", "content": "x"}), "not a list"),
    ({**ISSUE_CREATED, "issue": {"id": "1", "fields": ISSUE_CREATED["issue"]["fields"]}},
     "issue.key is required"),
])
def test_parse_refuses_unmappable_payloads(payload, message):
    with pytest.raises(PayloadError, match=message):
        adapter.parse({}, payload)


def test_adf_refuses_hostile_nesting_without_recursion_error():
    node: dict = {"type": "text", "text": "x"}
    for _ in range(5000):
        node = {"type": "blockquote", "content": [node]}
    with pytest.raises(PayloadError, match="too deeply nested"):
        adf_to_text({"type": "doc", "content": [node]})


def test_adf_keeps_headings_and_paragraphs_on_separate_lines():
    doc = {"type": "doc", "content": [
        {"type": "heading", "content": [{"type": "text", "text": "Title"}]},
        {"type": "paragraph", "content": [{"type": "emoji", "attrs": {"shortName": ":phone:"}}]},
        {"type": "paragraph", "content": []}]}
    assert adf_to_text(doc) == "Title\n:phone:"
