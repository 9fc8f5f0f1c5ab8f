"""Data migrations, run from the revision before them on PostgreSQL and on SQLite (development)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.migrate import upgrade
from tests.services import create_pg_database, drop_pg_database, need


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
        return
    need("postgres")
    url, name = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


def test_links_sent_before_0005_still_work_and_the_table_no_longer_builds_them(empty_database):
    """Issue 8, item 9: before 0005 a link's token was `<id>.<digest>` with the digest stored;
    the migration keeps only the SHA-256 of each such token."""
    upgrade(empty_database, "0004")
    key = hashlib.sha256(b"rekey-links:" + b"an old secret key").digest()
    tenant_id, case_id, link_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    mac = hmac.new(key, str(link_id).encode(), hashlib.sha256).hexdigest()  # what 0004's code stored
    now = datetime.now(UTC)
    engine = create_engine(empty_database)
    with engine.begin() as conn:
        ids = {"t": tenant_id.hex if empty_database.startswith("sqlite") else tenant_id,
               "c": case_id.hex if empty_database.startswith("sqlite") else case_id,
               "l": link_id.hex if empty_database.startswith("sqlite") else link_id}
        conn.execute(text("INSERT INTO tenants (id, slug, name, settings, created_at) "
                          "VALUES (:t, 'old', 'old', '{}', :now)"), {**ids, "now": now})
        conn.execute(text("INSERT INTO recovery_cases (id, tenant_id, state, flags, opened_at, updated_at, requests) "
                          "VALUES (:c, :t, 'awaiting_enrolment', '[]', :now, :now, 1)"), {**ids, "now": now})
        conn.execute(text("INSERT INTO recovery_links (id, tenant_id, case_id, purpose, digest, created_at, "
                          "expires_at) VALUES (:l, :t, :c, 'report', :mac, :now, :now)"),
                     {**ids, "mac": mac, "now": now})

    upgrade(empty_database)

    with engine.connect() as conn:
        digest, sealed = conn.execute(text("SELECT digest, token_sealed FROM recovery_links")).one()
    engine.dispose()
    old_token = f"{link_id.hex}.{mac}"
    assert digest == hashlib.sha256(old_token.encode()).hexdigest()  # what redeem_link looks up
    assert mac not in digest and sealed is None


def test_actions_before_0005_are_found_by_the_stalled_work_sweep(empty_database):
    """Issue 8, item 17: a secret sealed before 0005 is `pending` delivery, and a queued action
    counts as queued since it was created, so the new sweep's queries find them."""
    upgrade(empty_database, "0004")
    sqlite = empty_database.startswith("sqlite")
    tenant_id, case_id = uuid.uuid4(), uuid.uuid4()
    created = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    rows = {"sealed": ("done", '{"sealed": "gAAAA...", "delivery": "verified_phone"}'),
            "sent": ("done", '{"delivery": "verified_phone"}'), "queued": ("queued", "{}")}
    ids = {name: uuid.uuid4() for name in rows}

    def key(value: uuid.UUID) -> object:
        return value.hex if sqlite else value

    engine = create_engine(empty_database)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenants (id, slug, name, settings, created_at) "
                          "VALUES (:t, 'old', 'old', '{}', :now)"), {"t": key(tenant_id), "now": created})
        conn.execute(text("INSERT INTO recovery_cases (id, tenant_id, state, flags, opened_at, updated_at, requests) "
                          "VALUES (:c, :t, 'awaiting_enrolment', '[]', :now, :now, 1)"),
                     {"c": key(case_id), "t": key(tenant_id), "now": created})
        for name, (status, options) in rows.items():
            conn.execute(text("INSERT INTO case_actions (id, tenant_id, case_id, action, status, requested_by, "
                              "reason, options, created_at, done_at) VALUES (:i, :t, :c, 'generate_backup_codes', "
                              ":s, 'agent', 'r', :o, :now, :done)"),
                         {"i": key(ids[name]), "t": key(tenant_id), "c": key(case_id), "s": status, "o": options,
                          "now": created, "done": created if status == "done" else None})

    upgrade(empty_database)

    with engine.connect() as conn:
        found = {row[0]: (row[1], row[2]) for row in conn.execute(
            text("SELECT id, delivery_state, queued_at FROM case_actions")).all()}
    engine.dispose()
    by_name = {name: found[key(i) if sqlite else i] for name, i in ids.items()}
    assert by_name["sealed"][0] == "pending" and by_name["sent"][0] is None and by_name["queued"][0] is None
    assert by_name["queued"][1] is not None and by_name["sealed"][1] is None
