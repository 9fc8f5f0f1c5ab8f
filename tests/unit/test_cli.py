"""The `rekey` provisioning and audit commands, run in-process against the test database."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest
from click.testing import CliRunner

from app import cli
from app.actor import Actor
from app.audit.models import AuditAction
from app.audit.services import record_event
from app.extensions import db
from tests.flows import audit_rows

pytestmark = pytest.mark.usefixtures("cached_password_hashes")


@pytest.fixture
def rekey(app, monkeypatch):
    """Invoke `rekey ...` as the shell would, bound to the test app (settings, database)."""
    monkeypatch.setattr(cli, "_app", lambda: app)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli.main, list(args), catch_exceptions=False)

    return run


def _enrolments(app, tenant, n: int = 2) -> None:
    with app.app_context():
        for i in range(n):
            record_event(Actor(type="user", id=f"u{i}", tenant_id=tenant.id), AuditAction.FACTOR_ENROLLED,
                         target_user_id=uuid.uuid4(), details={"kind": "totp"})
        record_event(Actor.system(tenant.id), AuditAction.NOTE_ADDED, reason="+1 means agreed")
        db.session.commit()


def test_provisioning_commands_create_a_working_agent_and_a_user_with_a_dated_phone(app, client, rekey):
    slug = f"cli-{uuid.uuid4().hex[:8]}"

    made = rekey("tenant", "create", slug, "--json")
    agent = rekey("agent", "create", "--tenant", slug, "--email", "agent@staff.test", "--role",
                  "support_agent", "--json")
    user = rekey("user", "create", "--tenant", slug, "--email", "ana@example.com", "--password",
                 "a perfectly long password", "--phone", "+1 415 555 2671", "--phone-added-at",
                 "2024-02-03T04:05:06Z", "--json")

    assert (made.exit_code, agent.exit_code, user.exit_code) == (0, 0, 0)
    token = json.loads(agent.output)["token"]
    user_id = json.loads(user.output)["id"]
    detail = client.get(f"/v1/admin/users/{user_id}", headers={"Authorization": f"Bearer {token}"})
    assert detail.status_code == 200
    [phone] = [c for c in detail.json["channels"] if c["kind"] == "phone"]
    assert phone["added_at"].startswith("2024-02-03T04:05:06")
    assert phone["value"] == "+141******71"


def test_tenant_create_twice_fails_with_the_error_shape(rekey):
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    rekey("tenant", "create", slug)

    again = rekey("tenant", "create", slug)

    assert again.exit_code == 2
    assert json.loads(again.stderr)["error"]["code"] == "conflict"


def test_audit_export_by_action_prints_exactly_those_events(app, factory, rekey):
    tenant = factory.tenant()
    _enrolments(app, tenant)

    out = rekey("audit", "export", "--tenant", tenant.slug, "--action", "mfa.factor_enrolled")

    assert out.exit_code == 0
    lines = [json.loads(line) for line in out.output.splitlines()]
    assert [(e["action"], e["actor_id"]) for e in lines] == [("mfa.factor_enrolled", "u0"),
                                                             ("mfa.factor_enrolled", "u1")]
    [exported] = audit_rows(app, tenant.id, "audit.exported")
    assert exported.details["via"] == "cli"


def test_audit_export_as_csv_escapes_formulas(app, factory, rekey):
    tenant = factory.tenant()
    _enrolments(app, tenant)

    out = rekey("audit", "export", "--tenant", tenant.slug, "--action", "note.added", "--format", "csv")

    [row] = list(csv.DictReader(io.StringIO(out.output)))
    assert row["reason"] == "'+1 means agreed"


def test_audit_export_filters_by_user_and_refuses_bad_values(app, factory, rekey):
    tenant = factory.tenant()
    _enrolments(app, tenant)
    target = str(audit_rows(app, tenant.id, "mfa.factor_enrolled")[1].target_user_id)

    one = rekey("audit", "export", "--tenant", tenant.slug, "--user", target)
    bad_user = rekey("audit", "export", "--tenant", tenant.slug, "--user", "not-a-uuid")
    naive = rekey("audit", "export", "--tenant", tenant.slug, "--since", "2026-01-01T00:00:00")

    assert [json.loads(line)["target_user_id"] for line in one.output.splitlines()] == [target]
    assert bad_user.exit_code == naive.exit_code == 2
    assert "Traceback" not in bad_user.output + naive.output


def test_audit_verify_exits_non_zero_naming_the_tampered_seq(app, factory, rekey, is_postgres):
    tenant = factory.tenant()
    _enrolments(app, tenant, n=3)
    assert rekey("audit", "verify", "--tenant", tenant.slug).exit_code == 0

    from tests.unit.audit.test_services import _tamper

    _tamper(app, [("UPDATE audit_events SET actor_id = 'someone-else' WHERE tenant_id = :t AND seq = 3",
                   {"t": tenant.id})])
    broken = rekey("audit", "verify", "--tenant", tenant.slug)
    as_json = rekey("audit", "verify", "--tenant", tenant.slug, "--json")

    assert broken.exit_code == 1
    assert "BROKEN at seq 3" in broken.output
    assert json.loads(as_json.output)[0]["first_broken_seq"] == 3


def test_audit_verify_unknown_tenant_exits_2(rekey):
    assert rekey("audit", "verify", "--tenant", "no-such-tenant").exit_code == 2


def test_tenant_create_takes_a_time_zone_and_limits_as_settings(app, rekey):
    from app.tenants.models import Tenant

    slug = f"cli-{uuid.uuid4().hex[:8]}"
    made = rekey("tenant", "create", slug, "--setting", "time_zone=Asia/Singapore",
                 "--setting", "verification_calls_per_case_per_hour=2", "--json")

    assert made.exit_code == 0, made.output
    with app.app_context():
        tenant = db.session.scalars(db.select(Tenant).where(Tenant.slug == slug)).one()
        assert (tenant.setting("time_zone"), tenant.setting("verification_calls_per_case_per_hour"),
                tenant.setting("verification_texts_per_tenant_per_hour")) == ("Asia/Singapore", 2, 200)


@pytest.mark.parametrize("setting", ["time_zone=Mars/Olympus_Mons", 'time_zone="../../etc/passwd"',
                                     "verification_calls_per_case_per_hour=0", "no_such_setting=1",
                                     "time_zone"])
def test_tenant_create_with_a_bad_setting_fails_and_creates_nothing(app, rekey, setting):
    from app.tenants.models import Tenant

    slug = f"cli-{uuid.uuid4().hex[:8]}"
    made = rekey("tenant", "create", slug, "--setting", setting)

    assert made.exit_code == 2
    with app.app_context():
        assert db.session.scalars(db.select(Tenant).where(Tenant.slug == slug)).first() is None


def test_agent_create_links_the_agents_own_accounts(app, client, factory, rekey):
    """Issue 8, item 8: an agent created with their employee id and federated subject cannot
    act on the recovery of the user account that carries either."""
    from tests.casework import open_case

    tenant = factory.tenant()
    made = rekey("agent", "create", "--tenant", tenant.slug, "--email", "ana.admin@staff.example",
                 "--role", "support_agent", "--external-id", "E-1001",
                 "--federated", "https://login.corp.example:00u1ana", "--json")
    assert made.exit_code == 0, made.output
    headers = {"Authorization": f"Bearer {json.loads(made.output)['token']}"}
    by_id = open_case(factory, client, tenant=tenant, email="ana@home.example")
    with app.app_context():
        from app.accounts.models import User

        db.session.get(User, by_id.user.id).external_id = "E-1001"
        db.session.commit()
    by_subject = open_case(factory, client, tenant=tenant, email="ana@other.example",
                           federated=[("https://login.corp.example", "00u1ana", None)])

    for opened in (by_id, by_subject):
        r = client.post(f"/v1/admin/cases/{opened.case_id}/evidence", headers=headers,
                        json={"type": "video_call", "reason": "video call",
                              "details": {"result": "match", "matched_against": "hr_photo", "reference": "V-1"}})
        assert r.status_code == 403 and r.json["error"]["code"] == "own_account", r.json
