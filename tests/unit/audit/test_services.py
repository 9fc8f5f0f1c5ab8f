"""The audit chain: gapless per tenant, tamper-evident, append-only in PostgreSQL, exportable."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import text

from app.actor import Actor
from app.audit.models import AuditAction, AuditHead
from app.audit.services import AuditFilter, export_lines, iter_events, record_event, verify_chain
from app.extensions import db, utcnow
from tests.flows import audit_rows, raw

GUARD = "audit_events_no_update_delete"


def _agent(tenant_id: uuid.UUID, agent_id: str = "agent-1", ip: str = "192.0.2.5") -> Actor:
    return Actor(type="agent", id=agent_id, tenant_id=tenant_id, role="support_agent", ip=ip,
                 request_id=f"req-{agent_id}")


def _record(app, tenant, *events: tuple[AuditAction, dict]) -> None:
    with app.app_context():
        for action, kw in events:
            record_event(kw.pop("actor", _agent(tenant.id)), action, **kw)
        db.session.commit()


def _report(app, tenant):
    with app.app_context():
        return verify_chain(tenant.id)


def _tamper(app, statements: list[tuple[str, dict]]) -> None:
    """Change audit rows as a database superuser would. On PostgreSQL the guard trigger has to
    be disabled first; it is disabled and re-enabled (ALWAYS) inside one transaction, so no
    other session ever sees the table unguarded."""
    with app.app_context(), db.engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(text(f"ALTER TABLE audit_events DISABLE TRIGGER {GUARD}"))
        for sql, params in statements:
            conn.execute(raw(sql, params), params)
        if postgres:
            conn.execute(text(f"ALTER TABLE audit_events ENABLE ALWAYS TRIGGER {GUARD}"))


def _five_events(app, factory):
    tenant = factory.tenant()  # seq 1: tenant.created
    _record(app, tenant, *[(AuditAction.NOTE_ADDED, {"reason": f"note {i}", "details": {"n": i}})
                           for i in range(4)])
    return tenant


class TestChain:
    def test_chain_is_gapless_linked_and_verifies(self, app, factory):
        tenant = _five_events(app, factory)

        rows = audit_rows(app, tenant.id)

        assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
        assert rows[0].prev_hash == "0" * 64
        assert all(b.prev_hash == a.hash for a, b in zip(rows, rows[1:], strict=False))
        report = _report(app, tenant)
        assert (report.ok, report.events, report.first_broken_seq) == (True, 5, None)

    def test_event_carries_actor_request_id_and_ip(self, app, factory):
        tenant = factory.tenant()
        user_id = uuid.uuid4()

        _record(app, tenant, (AuditAction.NOTE_ADDED,
                              {"actor": _agent(tenant.id, "a-7", "198.51.100.4"),
                               "target_user_id": user_id, "reason": "why"}))

        event = audit_rows(app, tenant.id, "note.added")[0]
        assert (event.actor_type, event.actor_id, event.request_id, event.source_ip) == (
            "agent", "a-7", "req-a-7", "198.51.100.4")
        assert event.target_user_id == user_id

    def test_chains_of_two_tenants_are_independent(self, app, factory):
        one, two = _five_events(app, factory), factory.tenant()

        _record(app, two, (AuditAction.NOTE_ADDED, {}))

        assert [r.seq for r in audit_rows(app, two.id)] == [1, 2]
        assert _report(app, one).ok and _report(app, two).ok

    @pytest.mark.parametrize("details", [
        {"code": "abcde-fghij-klmno-pqrst"}, {"nested": {"password": "x"}},
        {"list": [{"secret": "JBSWY3DPEHPK3PXP"}]}, {"Token": "rk_sess_x"},
    ])
    def test_event_details_may_not_carry_a_secret_key(self, app, factory, details):
        tenant = factory.tenant()

        with app.app_context(), pytest.raises(ValueError):
            record_event(_agent(tenant.id), AuditAction.NOTE_ADDED, details=details)

        assert [r.action for r in audit_rows(app, tenant.id)] == ["tenant.created"]


class TestTamperEvidence:
    @pytest.mark.parametrize(("change", "broken_seq"), [
        ("UPDATE audit_events SET details = '{\"n\": 99}' WHERE tenant_id = :t AND seq = 3", 3),
        ("UPDATE audit_events SET reason = 'rewritten' WHERE tenant_id = :t AND seq = 2", 2),
        ("UPDATE audit_events SET occurred_at = occurred_at - interval '1 day' "
         "WHERE tenant_id = :t AND seq = 4", 4),
        ("DELETE FROM audit_events WHERE tenant_id = :t AND seq = 3", 3),
        ("DELETE FROM audit_events WHERE tenant_id = :t AND seq = 5", 5),
    ], ids=["details", "reason", "occurred_at", "delete_middle", "delete_last"])
    def test_verify_names_the_first_broken_seq(self, app, factory, is_postgres, change, broken_seq):
        if not is_postgres:
            change = change.replace("occurred_at - interval '1 day'", "'2000-01-01 00:00:00'")
        tenant = _five_events(app, factory)

        _tamper(app, [(change, {"t": tenant.id})])

        report = _report(app, tenant)
        assert report.ok is False
        assert report.first_broken_seq == broken_seq

    def test_verify_catches_two_rows_with_swapped_contents(self, app, factory):
        tenant = _five_events(app, factory)

        # Rows 2 and 3 trade everything but their id and seq, hashes included.
        _tamper(app, [("""
            UPDATE audit_events AS a SET
                occurred_at = b.occurred_at, actor_type = b.actor_type, actor_id = b.actor_id,
                action = b.action, reason = b.reason, details = b.details,
                request_id = b.request_id, source_ip = b.source_ip,
                prev_hash = b.prev_hash, hash = b.hash
            FROM audit_events AS b
            WHERE a.tenant_id = :t AND b.tenant_id = :t AND a.seq IN (2, 3) AND a.seq + b.seq = 5
        """, {"t": tenant.id})])

        rows = audit_rows(app, tenant.id)
        assert [r.reason for r in rows[1:3]] == ["note 1", "note 0"]  # the swap happened
        report = _report(app, tenant)
        assert (report.ok, report.first_broken_seq) == (False, 2)

    def test_verify_catches_a_rewritten_head(self, app, factory):
        tenant = _five_events(app, factory)
        with app.app_context():
            db.session.execute(sa.update(AuditHead).where(AuditHead.tenant_id == tenant.id)
                               .values(seq=7))
            db.session.commit()

        report = _report(app, tenant)
        assert (report.ok, report.first_broken_seq) == (False, 6)


class TestAppendOnlyInPostgres:
    @pytest.mark.parametrize("statement", [
        "UPDATE audit_events SET reason = 'x' WHERE tenant_id = :t",
        "DELETE FROM audit_events WHERE tenant_id = :t",
        "TRUNCATE audit_events",
    ])
    def test_database_refuses_changing_audit_rows(self, app, factory, pg, statement):
        tenant = _five_events(app, factory)

        with app.app_context(), pytest.raises(sa.exc.DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(text(statement), {"t": tenant.id} if ":t" in statement else {})

        assert len(audit_rows(app, tenant.id)) == 5
        assert _report(app, tenant).ok

    def test_database_refuses_changes_even_in_replica_mode(self, app, factory, pg):
        tenant = _five_events(app, factory)

        with app.app_context(), pytest.raises(sa.exc.DBAPIError, match="append-only"), db.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("DELETE FROM audit_events WHERE tenant_id = :t"), {"t": tenant.id})

        assert len(audit_rows(app, tenant.id)) == 5

    def test_guard_triggers_are_enabled_always(self, app, pg):
        with app.app_context():
            states = dict(db.session.execute(text(
                "SELECT tgname, tgenabled FROM pg_trigger "
                "WHERE tgrelid = 'audit_events'::regclass AND NOT tgisinternal")).all())
        assert states == {"audit_events_no_update_delete": "A", "audit_events_no_truncate": "A"}


class TestConcurrentWriters:
    def test_concurrent_writers_in_one_tenant_keep_the_chain_gapless(self, app, factory, pg):
        tenant = factory.tenant()
        writers, each = 8, 5
        barrier = threading.Barrier(writers)
        errors: list[BaseException] = []

        def write(w: int) -> None:
            try:
                barrier.wait()
                for i in range(each):
                    with app.app_context():
                        record_event(_agent(tenant.id, f"w{w}"), AuditAction.NOTE_ADDED,
                                     details={"writer": w, "i": i})
                        db.session.commit()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        assert errors == []
        assert [r.seq for r in audit_rows(app, tenant.id)] == list(range(1, writers * each + 2))
        assert _report(app, tenant).ok

    def test_writer_that_read_the_head_earlier_still_extends_the_latest_chain(self, app, factory, pg):
        tenant = factory.tenant()
        with app.app_context():
            db.session.get(AuditHead, tenant.id)  # an unlocked read, as `verify` does
            other = threading.Thread(target=_record, args=(app, tenant, (AuditAction.NOTE_ADDED, {})))
            other.start()
            other.join()
            record_event(_agent(tenant.id), AuditAction.NOTE_ADDED)
            db.session.commit()

        assert [r.seq for r in audit_rows(app, tenant.id)] == [1, 2, 3]
        assert _report(app, tenant).ok


class TestExport:
    def _tenant_with_events(self, app, factory):
        tenant = factory.tenant()
        alice, bob = uuid.uuid4(), uuid.uuid4()
        _record(app, tenant,
                (AuditAction.FACTOR_ENROLLED, {"actor": _agent(tenant.id, "a1"), "target_user_id": alice}),
                (AuditAction.NOTE_ADDED, {"actor": _agent(tenant.id, "a2"), "target_user_id": bob,
                                          "reason": "=HYPERLINK(\"http://evil\")"}),
                (AuditAction.FACTOR_ENROLLED, {"actor": _agent(tenant.id, "a2"), "target_user_id": bob}))
        return tenant, alice, bob

    def _export(self, app, flt, fmt="jsonl"):
        with app.app_context():
            return "".join(export_lines(flt, fmt))

    def test_export_filters_by_action_actor_and_user(self, app, factory):
        tenant, alice, bob = self._tenant_with_events(app, factory)

        def seqs(**kw):
            out = self._export(app, AuditFilter(tenant_id=tenant.id, **kw))
            return [json.loads(line)["seq"] for line in out.splitlines()]

        assert seqs(action="mfa.factor_enrolled") == [2, 4]
        assert seqs(actor="a2") == [3, 4]
        assert seqs(user=bob) == [3, 4]
        assert seqs(action="mfa.factor_enrolled", user=alice) == [2]
        assert seqs(action="no.such_action") == []

    def test_export_filters_by_time_range(self, app, factory):
        tenant, *_ = self._tenant_with_events(app, factory)
        rows = audit_rows(app, tenant.id)
        middle = rows[2].occurred_at

        def seqs(**kw):
            with app.app_context():
                return [e.seq for e in iter_events(AuditFilter(tenant_id=tenant.id, **kw))]

        assert seqs(since=middle) == [3, 4]
        assert seqs(until=middle) == [1, 2]
        assert seqs(since=middle, until=middle + timedelta(microseconds=1)) == [3]
        assert seqs(since=utcnow() + timedelta(minutes=1)) == []

    def test_export_never_shows_another_tenants_events(self, app, factory):
        tenant, *_ = self._tenant_with_events(app, factory)
        other = factory.tenant()

        out = self._export(app, AuditFilter(tenant_id=other.id))

        assert [json.loads(line)["action"] for line in out.splitlines()] == ["tenant.created"]

    def test_export_reads_in_batches_without_losing_rows(self, app, factory):
        tenant = _five_events(app, factory)

        with app.app_context():
            assert [e.seq for e in iter_events(AuditFilter(tenant_id=tenant.id), batch=2)] == [1, 2, 3, 4, 5]

    def test_export_as_csv_has_a_header_and_escapes_formulas(self, app, factory):
        tenant, *_ = self._tenant_with_events(app, factory)

        out = self._export(app, AuditFilter(tenant_id=tenant.id), "csv")

        rows = list(csv.DictReader(io.StringIO(out)))
        assert [r["seq"] for r in rows] == ["1", "2", "3", "4"]
        assert rows[2]["reason"] == "'=HYPERLINK(\"http://evil\")"
        assert not any(cell.startswith(("=", "+", "-", "@")) for r in rows for cell in r.values())

    def test_exported_lines_verify_offline_without_the_database(self, app, factory):
        tenant, *_ = self._tenant_with_events(app, factory)
        lines = [json.loads(x) for x in self._export(app, AuditFilter(tenant_id=tenant.id)).splitlines()]

        prev = "0" * 64
        for line in lines:
            payload = {k: v for k, v in line.items() if k not in ("prev_hash", "hash")}
            body = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            assert line["prev_hash"] == prev
            assert hashlib.sha256(bytes.fromhex(prev) + body.encode()).hexdigest() == line["hash"]
            prev = line["hash"]
