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
