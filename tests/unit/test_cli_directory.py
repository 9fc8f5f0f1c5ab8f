"""`rekey directory configure|check|sync|import-channel-dates` (issue 11, item 8), in process."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import select

import tests.directory_backend  # noqa: F401  (registers the memory kind)
from app import cli
from app.extensions import db
from app.tenants.models import TenantDirectory
from tests.conftest import BROKER_REDIS_DB
from tests.directory_backend import MemoryStore
from tests.factories import LONG_AGO, PHONE
from tests.flows import audit_rows
from tests.services import REDIS_BASE_URL, need

STORE_URL = f"{REDIS_BASE_URL}/{BROKER_REDIS_DB}"


@pytest.fixture
def rekey(app, monkeypatch):
    monkeypatch.setattr(cli, "_app", lambda: app)
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(cli.main, list(args), input=input, catch_exceptions=False)

    return run


def _memory_tenant(factory, rekey) -> tuple[object, MemoryStore, str]:
    need("redis")
    tenant = factory.tenant()
    store = MemoryStore(STORE_URL, f"cli{uuid.uuid4().hex[:10]}")
    ext = f"u{uuid.uuid4().hex[:6]}"
    store.add_user(ext, f"{ext}@example.com", phones=((PHONE, None),), email_added_at=LONG_AGO)
    store.add_factor(ext, "totp")
    done = rekey("directory", "configure", "--tenant", tenant.slug, "--kind", "memory", "--url", STORE_URL,
                 "--realm", store.ns, "--json", input="memory-token\n")
    assert done.exit_code == 0, done.output
    return tenant, store, ext


def test_configure_check_and_rotate(app, factory, rekey):
    tenant, store, ext = _memory_tenant(factory, rekey)
    with app.app_context():
        first = db.session.get(TenantDirectory, tenant.id).token_encrypted
    checked = rekey("directory", "check", "--tenant", tenant.slug, "--email", f"{ext}@example.com", "--json")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.output)
    assert report["kind"] == "memory" and report["user"]["factors"] == 1
    assert report["works"]["signin_history"] is False and report["works"]["channel_dates"] is False
    assert any("sign-in history" in w for w in report["warnings"])
    human = rekey("directory", "check", "--tenant", tenant.slug, "--email", f"{ext}@example.com")
    assert "directory memory: connected" in human.output
    # Again with a token: rotated; a wrong token makes the check fail, saying why.
    again = rekey("directory", "configure", "--tenant", tenant.slug, "--kind", "memory", "--url", STORE_URL,
                  "--realm", store.ns, "--token-expires-at", "2026-12-05T00:00:00Z", input="wrong-token\n")
    assert again.exit_code == 0 and "wrong-token" not in again.output
    with app.app_context():
        assert db.session.get(TenantDirectory, tenant.id).token_encrypted != first
    failed = rekey("directory", "check", "--tenant", tenant.slug, "--json")
    assert failed.exit_code == 1 and "bad service token" in failed.output
    rekey("directory", "configure", "--tenant", tenant.slug, "--kind", "memory", "--url", STORE_URL,
          "--realm", store.ns, "--token-expires-at", "2026-12-05T00:00:00Z", input="memory-token\n")
    warned = json.loads(rekey("directory", "check", "--tenant", tenant.slug, "--email", f"{ext}@example.com",
                              "--json").output)
    assert any("expires" in w for w in warned["warnings"])
    builtin = rekey("directory", "configure", "--tenant", tenant.slug, "--kind", "builtin")
    assert builtin.exit_code == 0
    assert "built-in directory" in rekey("directory", "check", "--tenant", tenant.slug).output
    events = audit_rows(app, tenant.id, "tenant.directory_configured")
    assert len(events) == 4 and not any("token" in str(e.details).replace("token_", "") for e in events)


def test_unknown_kind_is_refused(factory, rekey):
    tenant = factory.tenant()
    r = rekey("directory", "configure", "--tenant", tenant.slug, "--kind", "okta-nope", "--url", "https://x.test",
              input="t\n")
    assert r.exit_code == 2 and "okta-nope" in r.output


def test_sync_and_import_channel_dates(app, factory, rekey, tmp_path):
    from app.accounts.mirror import mirror_user
    from app.accounts.models import Channel
    from app.extensions import utcnow
    from app.tenants.models import Tenant
    from integrations.directory.registry import directory_for

    tenant, store, ext = _memory_tenant(factory, rekey)
    with app.app_context():
        directory = directory_for(db.session.get(Tenant, tenant.id))
        user = mirror_user(tenant.id, "memory", directory.describe(ext))
        user_id = user.id
        db.session.commit()
    store.set_channels(ext, [{"kind": "email", "value": f"{ext}@example.com", "added_at": LONG_AGO.isoformat()},
                             {"kind": "phone", "value": PHONE, "added_at": None},
                             {"kind": "phone", "value": "+14155550123", "added_at": None}])
    synced = rekey("directory", "sync", "--tenant", tenant.slug, "--json")
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output) | {} == {"kind": "memory", "users": 1, "added": 1, "removed": 0, "failed": 0}
    dates = tmp_path / "dates.csv"
    dates.write_text("user,channel,added_at\n"
                     f"{ext}@example.com,+1 415 555 2671,2023-05-06T07:08:09Z\n"
                     f"{ext},+14155550123,not-a-date\n")
    imported = rekey("directory", "import-channel-dates", "--tenant", tenant.slug, str(dates), "--json")
    assert imported.exit_code == 0, imported.output
    result = json.loads(imported.output)
    assert result["updated"] == 1 and [s["row"] for s in result["skipped"]] == [2]
    with app.app_context():
        phone = db.session.scalars(select(Channel).where(Channel.user_id == user_id, Channel.value == PHONE)).one()
        assert phone.added_at == datetime(2023, 5, 6, 7, 8, 9, tzinfo=UTC)
        assert phone.first_seen_at is not None and phone.first_seen_at > phone.added_at
        assert utcnow() > phone.first_seen_at
    assert len(audit_rows(app, tenant.id, "user.channel_dates_imported")) == 1
    assert len(audit_rows(app, tenant.id, "directory.synced")) == 1
