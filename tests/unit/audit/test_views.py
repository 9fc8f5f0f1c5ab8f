"""Audit export and chain check over the admin API."""

from __future__ import annotations

import csv
import io
import json
import uuid
from urllib.parse import quote

from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.extensions import db
from tests.flows import audit_rows


def _seed(app, tenant, agent_id: str):
    """Two enrolments (different users), a note with a formula, by two actors."""
    alice, bob = uuid.uuid4(), uuid.uuid4()
    with app.app_context():
        for actor_id, action, user, reason in (
            (agent_id, AuditAction.FACTOR_ENROLLED, alice, None),
            ("other-agent", AuditAction.NOTE_ADDED, bob, "@SUM(A1:A9) -- pasted"),
            ("other-agent", AuditAction.FACTOR_ENROLLED, bob, None),
        ):
            record_event(Actor(type="agent", id=actor_id, tenant_id=tenant.id, ip="192.0.2.1",
                               request_id="seed"), action, target_user_id=user, reason=reason)
        db.session.commit()
    return alice, bob


def _jsonl(response) -> list[dict]:
    return [json.loads(line) for line in response.get_data(as_text=True).splitlines()]


def test_export_by_action_returns_exactly_those_events_as_json_lines(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant)
    _seed(app, tenant, str(agent.agent.id))

    r = client.get("/v1/admin/audit?action=mfa.factor_enrolled", headers=agent.headers)

    assert r.status_code == 200
    assert r.mimetype == "application/x-ndjson"
    events = _jsonl(r)
    assert [e["action"] for e in events] == ["mfa.factor_enrolled", "mfa.factor_enrolled"]
    assert {e["tenant_id"] for e in events} == {str(tenant.id)}


def test_export_filters_by_actor_user_and_time(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant)
    alice, bob = _seed(app, tenant, str(agent.agent.id))
    rows = audit_rows(app, tenant.id)
    third = rows[3].occurred_at.isoformat()

    def seqs(query: str) -> list[int]:
        r = client.get(f"/v1/admin/audit?{query}", headers=agent.headers)
        assert r.status_code == 200, r.get_data(as_text=True)
        return [e["seq"] for e in _jsonl(r) if e["action"] != "audit.exported"]

    assert seqs(f"actor={agent.agent.id}&action=mfa.factor_enrolled") == [3]
    assert seqs(f"user={bob}") == [4, 5]
    assert seqs(f"user={alice}&action=mfa.factor_enrolled") == [3]
    assert seqs(f"since={quote(third)}&action=mfa.factor_enrolled") == [5]
    assert seqs(f"until={quote(third)}&action=note.added") == []


def test_export_as_csv_escapes_formulas(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant)
    _seed(app, tenant, str(agent.agent.id))

    r = client.get("/v1/admin/audit?format=csv&action=note.added", headers=agent.headers)

    assert r.status_code == 200
    assert r.mimetype == "text/csv"
    [row] = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert row["reason"] == "'@SUM(A1:A9) -- pasted"
    assert row["action"] == "note.added"


def test_export_is_itself_audited_with_its_filter(app, client, factory):
    tenant = factory.tenant()
    agent = factory.agent(tenant)

    client.get("/v1/admin/audit?action=note.added&format=csv", headers={**agent.headers, "X-Request-Id": "exp-1"},
               environ_base={"REMOTE_ADDR": "192.0.2.99"})

    [event] = audit_rows(app, tenant.id, "audit.exported")
    assert (event.actor_id, event.request_id, event.source_ip) == (str(agent.agent.id), "exp-1", "192.0.2.99")
    assert event.details == {"format": "csv", "action": "note.added"}


def test_export_shows_only_the_agents_own_tenant(app, client, factory):
    mine, theirs = factory.tenant(), factory.tenant()
    agent = factory.agent(mine)
    _seed(app, theirs, "x")

    r = client.get(f"/v1/admin/audit?actor=other-agent&user={uuid.uuid4()}", headers=agent.headers)
    everything = _jsonl(client.get("/v1/admin/audit", headers=agent.headers))

    assert r.status_code == 200 and _jsonl(r) == []
    assert {e["tenant_id"] for e in everything} == {str(mine.id)}


def test_export_without_a_token_is_unauthenticated(client):
    r = client.get("/v1/admin/audit")

    assert r.status_code == 401
    assert r.json["error"]["code"] == "unauthenticated"


def test_verify_is_for_senior_admins_and_reports_the_chain(app, client, factory):
    tenant = factory.tenant()
    agent, senior = factory.agent(tenant), factory.agent(tenant, role="senior_admin")
    _seed(app, tenant, "a")

    refused = client.get("/v1/admin/audit/verify", headers=agent.headers)
    report = client.get("/v1/admin/audit/verify", headers=senior.headers)

    assert refused.status_code == 403
    assert report.status_code == 200
    assert report.json["ok"] is True
    assert report.json["first_broken_seq"] is None
    assert report.json["events"] == len(audit_rows(app, tenant.id))
