"""Fakes of the ticketing APIs Rekey posts status comments to: Zendesk's Tickets API and Jira
Cloud's REST API v3 comment resource."""

from __future__ import annotations

import itertools
import re
import ssl
from typing import Any

from integrations.fakes.server import Answer, FakeServer, RecordedRequest

_ZENDESK_PATH = re.compile(r"^/api/v2/tickets/(?P<id>[0-9]+)\.json$")
_JIRA_PATH = re.compile(r"^/rest/api/3/issue/(?P<key>[A-Za-z0-9_\-]+)/comment$")


class FakeZendesk(FakeServer):
    """`PUT /api/v2/tickets/{id}.json` with Basic `{email}/token:{api_token}`;
    `.comments[ticket_id]` holds the comment bodies posted, in order."""

    def __init__(self, email: str = "agent@example.com",
                 api_token: str = "zd-test-token",  # noqa: S107 - a fake's test credential
                 *, tls: ssl.SSLContext | None = None):
        super().__init__(tls=tls)
        self.email, self.api_token = email, api_token
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.missing_tickets: set[str] = set()  # ids answered with 404
        self._ids = itertools.count(9000)

    def handle(self, request: RecordedRequest) -> Answer:
        match = _ZENDESK_PATH.match(request.path)
        if request.method != "PUT" or not match:
            return Answer(404, {"error": "InvalidEndpoint"})
        if request.basic_auth() != (f"{self.email}/token", self.api_token):
            return Answer(401, {"error": "Couldn't authenticate you"})
        ticket_id = match["id"]
        if ticket_id in self.missing_tickets:
            return Answer(404, {"error": "RecordNotFound", "description": "Not found"})
        comment = ((request.json or {}).get("ticket") or {}).get("comment") or {}
        if not isinstance(comment.get("body"), str):
            return Answer(422, {"error": "RecordInvalid", "description": "comment body"})
        self.comments.setdefault(ticket_id, []).append(comment)
        audit_id, comment_id = next(self._ids), next(self._ids)
        return Answer(200, {
            "ticket": {"id": int(ticket_id), "status": "open"},
            "audit": {"id": audit_id, "ticket_id": int(ticket_id), "events": [
                {"id": comment_id, "type": "Comment", "body": comment["body"],
                 "public": bool(comment.get("public", True))},
            ]},
        })


class FakeJira(FakeServer):
    """`POST /rest/api/3/issue/{key}/comment` with an ADF body and Basic `email:api_token`;
    `.comments[key]` holds the ADF bodies posted, in order (`.texts(key)` as plain text)."""

    def __init__(self, email: str = "agent@example.com",
                 api_token: str = "jira-test-token",  # noqa: S107 - a fake's test credential
                 *, tls: ssl.SSLContext | None = None):
        super().__init__(tls=tls)
        self.email, self.api_token = email, api_token
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.missing_issues: set[str] = set()
        self._ids = itertools.count(10000)

    def handle(self, request: RecordedRequest) -> Answer:
        match = _JIRA_PATH.match(request.path)
        if request.method != "POST" or not match:
            return Answer(404, {"errorMessages": ["Not found"], "errors": {}})
        if request.basic_auth() != (self.email, self.api_token):
            return Answer(401, {"errorMessages": ["Unauthorized"], "errors": {}})
        key = match["key"]
        if key in self.missing_issues:
            return Answer(404, {"errorMessages": ["Issue does not exist"], "errors": {}})
        body = (request.json or {}).get("body")
        if not isinstance(body, dict) or not _is_adf(body):
            return Answer(400, {"errorMessages": [],
                                "errors": {"comment": "Comment body is not valid!"}})
        self.comments.setdefault(key, []).append(body)
        comment_id = str(next(self._ids))
        return Answer(201, {"id": comment_id, "body": body,
                            "self": f"{self.url}/rest/api/3/issue/{key}/comment/{comment_id}"})

    def texts(self, key: str) -> list[str]:
        """The comments on `key` as plain text, paragraphs joined by blank lines."""
        return ["\n\n".join(
            "".join(node.get("text", "") for node in para.get("content", []))
            for para in doc["content"]
        ) for doc in self.comments.get(key, [])]


def _is_adf(body: Any) -> bool:
    return (isinstance(body, dict) and body.get("type") == "doc" and body.get("version") == 1
            and isinstance(body.get("content"), list)
            and all(isinstance(p, dict) and p.get("type") == "paragraph" for p in body["content"]))
