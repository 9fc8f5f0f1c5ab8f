"""Issue 2's scenario end to end on PostgreSQL: provision by CLI, enrol and sign in over the API,
single use of every code under concurrency, the agent's view, notes, and an audit trail that
exports, verifies, holds no secret and exposes tampering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyotp
import pytest
from sqlalchemy import text

from app.audit.services import verify_chain
from app.extensions import db
from tests.flows import audit_rows, bearer, signin

REKEY = str(Path(sys.executable).with_name("rekey"))
PASSWORD = "scenario passphrase one"
NEW_PASSWORD = "scenario passphrase two"
PHONE = "+14155552671"
LISTED_EVENTS = ["auth.signin_succeeded", "auth.signin_failed", "mfa.factor_enrolled",
                 "mfa.backup_codes_generated", "mfa.backup_code_used", "user.password_changed",
                 "note.added"]


def _cli_env(settings: Any, instance_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKEY_") and k != "DATABASE_URL"}
    env.update({
        "DATABASE_URL": settings.database_url,
        "REKEY_ENCRYPTION_KEYS": settings.encryption_keys,
        "REKEY_CODE_PEPPER": settings.code_pepper,
        "REKEY_SECRET_KEY": settings.secret_key,
        "REKEY_BROKER_URL": settings.broker_url,
        "REKEY_ENV": "test",
        "REKEY_LOG_LEVEL": "WARNING",
        "REKEY_INSTANCE_DIR": str(instance_dir),
    })
    return env


def _concurrent_signins(app: Any, tenant: Any, email: str, n: int, **factor: str) -> list[int]:
    """n sign-ins released together, each from its own client (and so its own app context).
    Each loser is refused: 401 (the code was already spent) or 429 (it lost the race for the
    account while the winner's attempt was in flight)."""
    barrier = threading.Barrier(n)
    statuses: list[int] = []

    def attempt(i: int) -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(signin(client, tenant, email, PASSWORD, ip=f"203.0.113.{100 + i}",
                               **factor).status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == n, "a sign-in thread crashed"
    return sorted(statuses)


def test_foundation_scenario(app, client, factory, settings, pg, tmp_path, totp_clock, tune):
    # This scenario is about single use; the lockout has its own tests and must not interfere
    # with 20 deliberate concurrent failures.
    tune(signin_max_failures=100, ip_max_failures=1000)
    env = _cli_env(settings, tmp_path)

    def rekey(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([REKEY, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def finish(proc: subprocess.Popen[str], status: int = 0) -> str:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == status, err
        return out

    # --- provisioning by CLI (the agent and the user in parallel, as two operators would) ------
    slug = f"scn-{uuid.uuid4().hex[:8]}"
    tenant_id = uuid.UUID(json.loads(finish(rekey("tenant", "create", slug, "--json")))["id"])
    email = "dana@example.com"
    making_agent = rekey("agent", "create", "--tenant", slug, "--email", "agent@staff.test",
                         "--role", "support_agent", "--json")
    making_user = rekey("user", "create", "--tenant", slug, "--email", email, "--password", PASSWORD,
                        "--phone", PHONE, "--phone-added-at", "2025-01-06T09:00:00Z", "--json")
    agent = json.loads(finish(making_agent))
    user_id = json.loads(finish(making_user))["id"]
    tenant = SimpleNamespace(slug=slug, id=tenant_id)
    agent_headers = bearer(agent["token"])
    tokens: list[str] = [agent["token"]]

    # --- enrol TOTP over the API, then sign in with it ----------------------------------------
    first = signin(client, tenant, email, PASSWORD, ip="198.51.100.1")
    assert first.json["status"] == "enrolment_required"
    restricted = first.json["token"]
    tokens.append(restricted)
    assert client.post("/v1/auth/backup-codes", headers=bearer(restricted)).status_code == 403
    enrolment = client.post("/v1/auth/enrol/totp", headers=bearer(restricted),
                            environ_base={"REMOTE_ADDR": "198.51.100.1"})
    secret = enrolment.json["secret"]
    totp = pyotp.TOTP(secret)
    confirmed = client.post("/v1/auth/enrol/totp/confirm", headers=bearer(restricted),
                            json={"code": totp.at(totp_clock.time())},
                            environ_base={"REMOTE_ADDR": "198.51.100.1"})
    assert confirmed.json["status"] == "active"

    otp = totp.at(totp_clock.advance())
    full = signin(client, tenant, email, PASSWORD, otp=otp, ip="198.51.100.2")
    assert full.json["status"] == "ok"
    tokens.append(full.json["token"])
    assert signin(client, tenant, email, PASSWORD, otp=otp, ip="198.51.100.2").status_code == 401

    # --- backup codes: regenerate, sign in with one, once -------------------------------------
    codes = client.post("/v1/auth/backup-codes", headers=bearer(full.json["token"])).json["codes"]
    assert len(codes) == 10
    with_code = signin(client, tenant, email, PASSWORD, backup_code=codes[0], ip="198.51.100.3")
    assert with_code.json["status"] == "ok"
    tokens.append(with_code.json["token"])
    assert signin(client, tenant, email, PASSWORD, backup_code=codes[0], ip="198.51.100.3").status_code == 401

    # --- the agent's view ---------------------------------------------------------------------
    detail = client.get(f"/v1/admin/users/{user_id}", headers=agent_headers)
    assert detail.status_code == 200
    assert [(f["kind"], f["status"]) for f in detail.json["factors"]] == [("totp", "active")]
    assert detail.json["backup_codes"]["label"] == "9 remaining"
    [phone] = [c for c in detail.json["channels"] if c["kind"] == "phone"]
    assert phone["value"] == "+141******71"
    assert phone["added_at"].startswith("2025-01-06T09:00:00")
    assert PHONE not in detail.get_data(as_text=True)
    seen = {(s["ip"], s["result"]) for s in detail.json["recent_signins"]}
    assert {("198.51.100.1", "succeeded"), ("198.51.100.2", "succeeded"), ("198.51.100.2", "bad_factor"),
            ("198.51.100.3", "succeeded"), ("198.51.100.3", "bad_factor")} <= seen

    stranger = factory.agent(factory.tenant(), role="senior_admin")
    assert client.get(f"/v1/admin/users/{user_id}", headers=stranger.headers).status_code == 404
    assert client.get("/v1/admin/users/not-a-uuid", headers=agent_headers).status_code == 404
    assert client.get(f"/v1/admin/users/{user_id}").status_code == 401

    note = client.post(f"/v1/admin/users/{user_id}/notes", headers=agent_headers,
                       json={"body": "Verified by callback to the number on file."})
    assert note.status_code == 201
    for leaked in (codes[5], otp):
        refused = client.post(f"/v1/admin/users/{user_id}/notes", headers=agent_headers,
                              json={"body": f"user read out {leaked}"})
        assert refused.status_code == 422

    # --- single use under concurrency ---------------------------------------------------------
    def exactly_one_success(statuses: list[int]) -> bool:
        return statuses.count(200) == 1 and set(statuses) <= {200, 401, 429}

    assert exactly_one_success(_concurrent_signins(app, tenant, email, 2, backup_code=codes[1]))
    assert exactly_one_success(_concurrent_signins(app, tenant, email, 20, backup_code=codes[2]))
    fresh = totp.at(totp_clock.advance())
    assert exactly_one_success(_concurrent_signins(app, tenant, email, 3, otp=fresh))
    # A loser that ran after the winner found the code spent; none got a second session.
    assert signin(client, tenant, email, PASSWORD, backup_code=codes[2]).status_code == 401
    assert signin(client, tenant, email, PASSWORD, otp=fresh).status_code == 401

    # --- password change ------------------------------------------------------------------------
    changed = client.post("/v1/auth/password", headers=bearer(full.json["token"]),
                          json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 200
    assert client.post("/v1/auth/enrol/totp", headers=bearer(with_code.json["token"])).status_code == 401

    # --- the audit trail ------------------------------------------------------------------------
    rows = audit_rows(app, tenant_id)
    for action in LISTED_EVENTS:
        events = [e for e in rows if e.action == action]
        assert events, f"no {action} event"
        for event in events:
            assert event.actor_type and event.request_id and event.source_ip, (action, event.id)
            if action != "auth.signin_failed":
                assert event.actor_id, (action, event.id)
    assert {e.actor_id for e in rows if e.action == "note.added"} == {agent["id"]}
    assert [e.details["remaining"] for e in rows if e.action == "mfa.backup_code_used"] == [9, 8, 7]

    exported = client.get("/v1/admin/audit?action=mfa.factor_enrolled", headers=agent_headers)
    api_ids = [json.loads(line)["id"] for line in exported.get_data(as_text=True).splitlines()]
    assert api_ids == [str(e.id) for e in rows if e.action == "mfa.factor_enrolled"]
    as_csv = client.get("/v1/admin/audit?action=mfa.factor_enrolled&format=csv", headers=agent_headers)
    assert as_csv.get_data(as_text=True).splitlines()[1].split(",")[1] == api_ids[0]
    with app.app_context():
        assert verify_chain(tenant_id).ok

    # No secret anywhere in the trail: every column of every row of the tenant, as text.
    secrets_ = {PASSWORD, NEW_PASSWORD, secret, PHONE, *tokens}
    for code in codes:
        secrets_ |= {code, code.replace("-", ""), code.upper()}
    with app.app_context():
        dump = [" ".join(map(str, row)) for row in db.session.execute(
            text("SELECT * FROM audit_events WHERE tenant_id = :t"), {"t": tenant_id})]
    for row_text in dump:
        for value in secrets_:
            assert value not in row_text, "a secret reached the audit trail"
    for event in rows:
        for code in (otp, fresh):
            assert code not in json.dumps(event.details) + (event.reason or "")

    # --- tampering is exposed -------------------------------------------------------------------
    target = next(e for e in rows if e.action == "mfa.backup_code_used")
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update_delete"))
        conn.execute(text("UPDATE audit_events SET details = '{\"remaining\": 10}' WHERE id = :id"),
                     {"id": target.id})
        conn.execute(text("ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_update_delete"))
    verdict = finish(rekey("audit", "verify", "--tenant", slug), status=1)
    assert f"BROKEN at seq {target.seq}" in verdict


@pytest.fixture(autouse=True)
def _postgres_only(pg):
    """Real threads racing for one code only mean something on PostgreSQL."""
