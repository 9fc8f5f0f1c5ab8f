"""The audit trail against whoever runs the database (issue 13), on PostgreSQL.

The owner drops the triggers and rewrites the chain consistently, cuts its tail, or the
checkpoint files are edited: the chain alone cannot tell, the signed checkpoints (kept outside
the database, signed with a key the database never sees) can, through `rekey audit verify
--checkpoints`, the API's verify, and an auditor's offline check of an export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import cli
from app.actor import Actor
from app.audit.chain import hash_values
from app.audit.checkpoints import (
    load_signing_key,
    parse_log,
    private_key_pem,
    public_key_pem,
    sign,
)
from app.audit.models import GENESIS_HASH, AuditAction
from app.audit.services import AuditFilter, iter_rows, record_event
from app.extensions import db
from tests.services import PG_ADMIN_URL, create_pg_database, drop_pg_database

pytestmark = pytest.mark.usefixtures("pg")

REKEY = str(Path(sys.executable).with_name("rekey"))
GUARD_SQL = """
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION rekey_audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION rekey_audit_append_only();
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_update_delete;
ALTER TABLE audit_events ENABLE ALWAYS TRIGGER audit_events_no_truncate;
"""
DROP_GUARD_SQL = ("DROP TRIGGER audit_events_no_update_delete ON audit_events; "
                  "DROP TRIGGER audit_events_no_truncate ON audit_events")


@pytest.fixture
def signing(tmp_path, tune):
    """A fresh signing key (as a file outside the database) and checkpoint directory."""
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(private_key_pem(key))
    public_file = tmp_path / "public.pem"
    public_file.write_text(public_key_pem(key.public_key()))
    directory = tmp_path / "checkpoints"
    tune(audit_signing_key=str(key_file), audit_checkpoint_dir=str(directory), audit_public_key="")
    return type("Signing", (), {"key": key, "key_file": key_file, "public_file": public_file, "dir": directory})


@pytest.fixture
def rekey(app, monkeypatch):
    monkeypatch.setattr(cli, "_app", lambda: app)
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli.main, list(args), catch_exceptions=False)

    return run


def _notes(app, tenant, n: int) -> None:
    with app.app_context():
        for i in range(n):
            record_event(Actor(type="agent", id="agent-1", tenant_id=tenant.id), AuditAction.NOTE_ADDED,
                         reason=f"note {i}", details={"n": i})
        db.session.commit()


def _checkpoint(rekey) -> dict:
    out = rekey("audit", "checkpoint", "--json")
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def _owner_rewrite(app, tenant_id: uuid.UUID, *, reason_at: int | None = None, drop_newest: int = 0) -> None:
    """What the database owner can do: drop the triggers, change a reason (or delete the newest
    events), recompute every later hash and the head, put the triggers back; one transaction."""
    with app.app_context():
        db.session.execute(text(DROP_GUARD_SQL))
        if drop_newest:
            db.session.execute(text("DELETE FROM audit_events WHERE tenant_id = :t AND seq > "
                                    "(SELECT max(seq) FROM audit_events WHERE tenant_id = :t) - :n"),
                               {"t": tenant_id, "n": drop_newest})
        if reason_at is not None:
            db.session.execute(text("UPDATE audit_events SET reason = 'nothing happened here' "
                                    "WHERE tenant_id = :t AND seq = :s"), {"t": tenant_id, "s": reason_at})
        prev = GENESIS_HASH
        for row in list(iter_rows(AuditFilter(tenant_id=tenant_id))):
            digest = hash_values(prev, row)
            db.session.execute(text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE tenant_id = :t "
                                    "AND seq = :s"), {"p": prev, "h": digest, "t": tenant_id, "s": row["seq"]})
            prev, last = digest, row["seq"]
        db.session.execute(text("UPDATE audit_heads SET seq = :s, hash = :h WHERE tenant_id = :t"),
                           {"s": last, "h": prev, "t": tenant_id})
        db.session.execute(text(GUARD_SQL))
        db.session.commit()


def _verify(rekey, tenant, *extra: str):
    out = rekey("audit", "verify", "--tenant", tenant.slug, "--json", *extra)
    return out.exit_code, json.loads(out.output)[0]


def _log_lines(signing, tenant) -> list[bytes]:
    return (signing.dir / f"{tenant.id}.jsonl").read_bytes().splitlines(keepends=True)


class TestOwnerRewrite:
    def test_consistent_rewrite_verifies_without_checkpoints_and_fails_with_them(self, app, factory, rekey,
                                                                                 signing):
        tenant = factory.tenant()  # seq 1
        _notes(app, tenant, 4)     # seq 2..5
        _checkpoint(rekey)         # #1 at seq 5
        _notes(app, tenant, 3)     # seq 6..8
        _checkpoint(rekey)         # #2 at seq 8
        _notes(app, tenant, 2)     # seq 9..10, not yet checkpointed
        assert _verify(rekey, tenant, "--checkpoints", str(signing.dir)) == (0, pytest.approx({
            "tenant": tenant.slug, "tenant_id": str(tenant.id), "events": 10, "ok": True,
            "first_broken_seq": None, "problem": None, "checkpoints": 2}))

        _owner_rewrite(app, tenant.id, reason_at=5)

        code, plain = _verify(rekey, tenant)
        assert (code, plain["ok"]) == (0, True)  # the gap this issue closes
        code, report = _verify(rekey, tenant, "--checkpoints", str(signing.dir))
        assert (code, report["ok"], report["first_broken_seq"]) == (1, False, 5)
        assert "signed checkpoint #1" in report["problem"]

    def test_a_rewrite_between_checkpoints_is_named_by_the_checkpoint_that_sees_it(self, app, factory, rekey,
                                                                                   signing):
        tenant = factory.tenant()
        _notes(app, tenant, 4)
        _checkpoint(rekey)         # seq 5
        _notes(app, tenant, 3)
        _checkpoint(rekey)         # seq 8

        _owner_rewrite(app, tenant.id, reason_at=7)

        code, report = _verify(rekey, tenant, "--checkpoints", str(signing.dir))
        assert (code, report["first_broken_seq"]) == (1, 8)
        assert "the first rewritten event is in seq 6..8" in report["problem"]

    def test_newest_ten_events_deleted_and_head_reset_is_detected(self, app, factory, rekey, signing):
        tenant = factory.tenant()
        _notes(app, tenant, 4)
        _checkpoint(rekey)         # seq 5
        _notes(app, tenant, 10)
        _checkpoint(rekey)         # seq 15

        _owner_rewrite(app, tenant.id, drop_newest=10)

        assert _verify(rekey, tenant)[0] == 0
        code, report = _verify(rekey, tenant, "--checkpoints", str(signing.dir))
        assert (code, report["ok"], report["first_broken_seq"]) == (1, False, 6)
        assert "checkpoint #2 vouches for seq 15" in report["problem"]

    def test_the_api_verify_checks_the_checkpoints(self, app, factory, client, rekey, signing):
        tenant = factory.tenant()
        senior = factory.agent(tenant, role="senior_admin")
        _notes(app, tenant, 3)
        _checkpoint(rekey)
        auth = {"Authorization": f"Bearer {senior.token}"}
        assert client.get("/v1/admin/audit/verify", headers=auth).json["checkpoints"] == 1

        _owner_rewrite(app, tenant.id, reason_at=4)  # seq 1 tenant, 2 agent, 3..5 notes

        report = client.get("/v1/admin/audit/verify", headers=auth).json
        assert (report["ok"], report["first_broken_seq"]) == (False, 5)
        assert "seq 1..5" in report["problem"]


class TestCheckpointFile:
    def _two_checkpoints(self, app, factory, rekey):
        tenant = factory.tenant()
        _notes(app, tenant, 2)
        _checkpoint(rekey)
        _notes(app, tenant, 2)
        _checkpoint(rekey)
        _notes(app, tenant, 2)
        _checkpoint(rekey)
        return tenant

    def test_an_edited_line_is_detected(self, app, factory, rekey, signing):
        tenant = self._two_checkpoints(app, factory, rekey)
        lines = _log_lines(signing, tenant)
        record = json.loads(lines[1])
        record["body"]["seq"] -= 1
        lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        (signing.dir / f"{tenant.id}.jsonl").write_bytes(b"".join(lines))

        code, report = _verify(rekey, tenant, "--checkpoints", str(signing.dir))

        assert code == 1 and "broken checkpoint" in report["problem"] and "line 2" in report["problem"]

    def test_a_removed_line_is_detected(self, app, factory, rekey, signing):
        tenant = self._two_checkpoints(app, factory, rekey)
        lines = _log_lines(signing, tenant)
        (signing.dir / f"{tenant.id}.jsonl").write_bytes(lines[0] + lines[2])

        code, report = _verify(rekey, tenant, "--checkpoints", str(signing.dir))

        assert code == 1 and "expected checkpoint #2" in report["problem"]

    def test_lines_re_signed_with_another_key_are_detected(self, app, factory, rekey, signing):
        tenant = self._two_checkpoints(app, factory, rekey)
        other = Ed25519PrivateKey.generate()
        forged, prev = [], "0" * 64
        for raw in _log_lines(signing, tenant):
            body = {**json.loads(raw)["body"], "prev_digest": prev}
            point = sign(body, other)
            forged.append(point.line())
            prev = point.digest
        (signing.dir / f"{tenant.id}.jsonl").write_bytes(b"".join(forged))

        code, report = _verify(rekey, tenant, "--checkpoints", str(signing.dir))

        assert code == 1 and "signature does not verify" in report["problem"]

    def test_writer_killed_mid_line_then_run_again_leaves_one_checkpoint_and_an_intact_chain(
            self, app, factory, rekey, signing):
        tenant = factory.tenant()
        _notes(app, tenant, 2)
        _checkpoint(rekey)
        _notes(app, tenant, 2)
        path = signing.dir / f"{tenant.id}.jsonl"
        before = path.read_bytes()
        _checkpoint(rekey)
        whole = path.read_bytes()
        # The state a SIGKILL between the first and last byte of the write leaves: part of the line.
        torn_line = whole[len(before):]
        path.write_bytes(before + torn_line[: len(torn_line) // 2])
        assert _verify(rekey, tenant, "--checkpoints", str(signing.dir))[0] == 0  # torn tail ignored

        again = _checkpoint(rekey)

        mine = [p for p in again["written"] if p["tenant_id"] == str(tenant.id)]
        assert [(p["number"], p["seq"]) for p in mine] == [(2, 5)]
        data = path.read_bytes()
        assert data.endswith(b"\n") and data.count(b"\n") == 2
        log = parse_log(data, signing.key.public_key(), tenant.id)
        assert [(p.number, p.seq) for p in log.points] == [(1, 3), (2, 5)] and not log.torn_tail
        assert _verify(rekey, tenant, "--checkpoints", str(signing.dir))[1]["checkpoints"] == 2
        # Nothing moved: a third run writes nothing for this tenant.
        assert not [p for p in _checkpoint(rekey)["written"] if p["tenant_id"] == str(tenant.id)]

    def test_checkpoints_route_publishes_the_key_and_the_newest_lines_to_senior_admins(
            self, app, factory, client, rekey, signing):
        tenant = factory.tenant()
        _notes(app, tenant, 2)
        _checkpoint(rekey)
        senior = factory.agent(tenant, role="senior_admin")
        agent = factory.agent(tenant)

        shown = client.get("/v1/admin/audit/checkpoints", headers={"Authorization": f"Bearer {senior.token}"})
        refused = client.get("/v1/admin/audit/checkpoints", headers={"Authorization": f"Bearer {agent.token}"})
        bad = client.get("/v1/admin/audit/checkpoints?limit=0", headers={"Authorization": f"Bearer {senior.token}"})

        assert shown.status_code == 200
        assert shown.json["public_key"] == public_key_pem(signing.key.public_key())
        assert [c["body"]["seq"] for c in shown.json["checkpoints"]] == [3]
        assert refused.status_code == 403 and bad.status_code == 400
        assert rekey("audit", "public-key").output == shown.json["public_key"]


class TestKeys:
    def test_production_refuses_to_write_checkpoints_without_a_key(self, app, rekey, tune):
        tune(env="production", audit_signing_key="")

        out = rekey("audit", "checkpoint")

        assert out.exit_code == 2 and "REKEY_AUDIT_SIGNING_KEY" in out.output

    def test_development_generates_one_key_under_the_instance_folder(self, app, tmp_path):
        settings = app.extensions["rekey.settings"]
        from dataclasses import replace

        dev = replace(settings, env="development", audit_signing_key="",
                      audit_dev_key_path=str(tmp_path / "instance" / "audit-signing-key.pem"))
        first = load_signing_key(dev)
        second = load_signing_key(dev)

        assert public_key_pem(first.public_key()) == public_key_pem(second.public_key())
        assert oct((tmp_path / "instance" / "audit-signing-key.pem").stat().st_mode & 0o777) == "0o600"

    def test_a_malformed_key_is_refused_without_echoing_it(self, rekey, tune):
        tune(audit_signing_key="not-a-key-but-a-secret-value")

        out = rekey("audit", "checkpoint")

        assert out.exit_code == 2 and "not-a-key-but-a-secret-value" not in out.output


class TestOfflineVerification:
    """The auditor has the export, the checkpoint files and the public key; no database (the
    command runs with a DATABASE_URL nothing listens on)."""

    def _offline(self, export: Path, signing, tmp_path) -> tuple[int, dict]:
        env = {**os.environ, "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none",
               "REKEY_INSTANCE_DIR": str(tmp_path / "auditor")}
        done = subprocess.run([REKEY, "audit", "verify", "--export", str(export), "--checkpoints",
                               str(signing.dir), "--public-key", str(signing.public_file), "--json"],
                              capture_output=True, text=True, env=env, timeout=60, check=False)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, json.loads(done.stdout)[0]

    def _export(self, app, factory, rekey, signing, tmp_path):
        tenant = factory.tenant()
        _notes(app, tenant, 4)
        _checkpoint(rekey)          # seq 5
        _notes(app, tenant, 4)
        out = rekey("audit", "export", "--tenant", tenant.slug)  # adds audit.exported: seq 10
        _checkpoint(rekey)          # seq 10
        export = tmp_path / "export.jsonl"
        export.write_text(out.output)
        return tenant, export

    def test_an_honest_trail_passes(self, app, factory, rekey, signing, tmp_path):
        tenant, export = self._export(app, factory, rekey, signing, tmp_path)

        assert self._offline(export, signing, tmp_path) == (0, {
            "tenant": str(tenant.id), "tenant_id": str(tenant.id), "events": 10, "ok": True,
            "first_broken_seq": None, "problem": None, "checkpoints": 2})

    def test_an_edited_row_fails(self, app, factory, rekey, signing, tmp_path):
        _, export = self._export(app, factory, rekey, signing, tmp_path)
        rows = [json.loads(line) for line in export.read_text().splitlines()]
        rows[3]["reason"] = "edited"
        export.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

        code, report = self._offline(export, signing, tmp_path)

        assert (code, report["first_broken_seq"], report["problem"]) == (1, 4, "content does not match its hash")

    def test_a_consistent_rewrite_fails_against_the_checkpoints(self, app, factory, rekey, signing, tmp_path):
        _, export = self._export(app, factory, rekey, signing, tmp_path)
        rows = [json.loads(line) for line in export.read_text().splitlines()]
        rows[6]["reason"] = "rewritten"
        prev = GENESIS_HASH
        for row in rows:
            row["prev_hash"], row["hash"] = prev, hash_values(prev, row)
            prev = row["hash"]
        export.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

        code, report = self._offline(export, signing, tmp_path)

        assert (code, report["first_broken_seq"]) == (1, 10)
        assert "seq 6..10" in report["problem"]

    @pytest.mark.parametrize("tampering", ["edited", "removed", "re-signed"])
    def test_a_tampered_checkpoint_file_fails(self, app, factory, rekey, signing, tmp_path, tampering):
        tenant, export = self._export(app, factory, rekey, signing, tmp_path)
        path = signing.dir / f"{tenant.id}.jsonl"
        lines = path.read_bytes().splitlines(keepends=True)
        if tampering == "edited":
            lines[0] = lines[0].replace(b'"seq":5', b'"seq":4')
        elif tampering == "removed":
            lines = lines[1:]
        else:
            other = Ed25519PrivateKey.generate()
            lines = [sign(json.loads(lines[0])["body"], other).line(), *lines[1:]]
        path.write_bytes(b"".join(lines))

        code, report = self._offline(export, signing, tmp_path)

        assert code == 1 and report["problem"].startswith("broken checkpoint")


class TestApplicationRole:
    """`rekey db upgrade` with two URLs: migrations as the owner, the app's role granted only
    INSERT and SELECT on the audit table."""

    @pytest.fixture
    def split_database(self):
        url, name = create_pg_database()
        role = f"rekey_app_{uuid.uuid4().hex[:8]}"
        owner = make_url(url)
        app_url = owner.set(username=role, password="app-role-pass").render_as_string(hide_password=False)
        try:
            yield url, app_url, role, name
        finally:
            drop_pg_database(name)
            admin = make_url(PG_ADMIN_URL)
            with psycopg.connect(host=admin.host, port=admin.port or 5432, user=admin.username,
                                 dbname=admin.database, autocommit=True) as conn:
                conn.execute(f'DROP ROLE IF EXISTS "{role}"')

    def _upgrade(self, owner_url: str, app_url: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": app_url, "DATABASE_MIGRATION_URL": owner_url}
        return subprocess.run([REKEY, "db", "upgrade", *args], capture_output=True, text=True, env=env,
                              timeout=120, check=False)

    @staticmethod
    def _connect(url: str) -> psycopg.Connection:
        u = make_url(url)
        return psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                               dbname=u.database, autocommit=True)

    def test_the_app_role_cannot_update_delete_or_truncate_the_audit_table_even_without_triggers(
            self, split_database, settings):
        owner_url, app_url, role, _ = split_database
        done = self._upgrade(owner_url, app_url)
        assert done.returncode == 0, done.stderr
        assert f"application role {role}" in done.stdout

        # The app works as that role: a tenant and its audit event, then a verified chain.
        from dataclasses import replace

        from app import create_app
        from app.audit.services import verify_chain
        from app.tenants.services import create_tenant

        application = create_app(replace(settings, database_url=app_url))
        with application.app_context():
            tenant = create_tenant(slug=f"t-{uuid.uuid4().hex[:8]}", name=None, settings={})
            db.session.commit()
            assert verify_chain(tenant.id).ok
            db.session.remove()
            db.engine.dispose()

        with self._connect(owner_url) as owner:
            owner.execute(DROP_GUARD_SQL)
        with self._connect(app_url) as conn:
            assert conn.execute("SELECT count(*) FROM audit_events").fetchone() == (1,)
            for statement in ("UPDATE audit_events SET reason = 'x'", "DELETE FROM audit_events",
                              "TRUNCATE audit_events"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
        with self._connect(owner_url) as owner:  # the owner could (hence the checkpoints)
            owner.execute("UPDATE audit_events SET reason = 'x'")

    def test_no_create_role_prints_the_grants_and_creates_nothing(self, split_database):
        owner_url, app_url, role, _ = split_database

        done = self._upgrade(owner_url, app_url, "--no-create-role")

        assert done.returncode == 0, done.stderr
        assert f'REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON "audit_events" FROM "{role}";' in done.stdout
        assert "app-role-pass" not in done.stdout + done.stderr
        with self._connect(owner_url) as owner:
            assert owner.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
