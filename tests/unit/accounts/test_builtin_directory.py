"""The built-in directory behind the seam, and choosing a tenant's directory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.accounts.directory import BuiltinDirectory
from app.accounts.models import BackupCode, MfaFactor, User, UserSession
from app.actor import Actor
from app.errors import ValidationFailed
from app.extensions import db, utcnow
from app.tenants.directory import configure_directory
from app.tenants.models import Tenant, TenantDirectory
from integrations.directory import Directory, PermanentDirectoryError
from integrations.directory.registry import DirectoryConfig, directory_for, register, unregister
from tests.factories import PHONE
from tests.flows import audit_rows, enrol_totp, issue_codes, session_token

pytestmark = pytest.mark.usefixtures("cached_password_hashes")


def test_a_tenant_uses_the_builtin_directory_by_default(app, factory):
    tenant = factory.tenant()
    with app.app_context():
        directory = directory_for(db.session.get(Tenant, tenant.id))
        assert isinstance(directory, BuiltinDirectory) and isinstance(directory, Directory)
        assert directory.kind == "builtin"


def test_describe_reset_and_enrolled_since(app, factory, totp_clock):
    tenant = factory.tenant()
    user = factory.user(tenant, phones=[(PHONE, datetime(2024, 1, 2, tzinfo=UTC))])
    enrol_totp(app, user, totp_clock)
    issue_codes(app, user)
    session_token(app, user)
    with app.app_context():
        directory = directory_for(db.session.get(Tenant, tenant.id))
        found = directory.find_user(email=user.email)
        assert found is not None and found.external_id == str(user.id)
        described = directory.describe(found.external_id)
        assert [f.kind for f in described.factors] == ["totp"]
        assert described.backup_codes_remaining == 10
        assert [(c.kind, c.value) for c in described.channels if c.kind == "phone"] == [("phone", PHONE)]
        since = utcnow() - timedelta(hours=1)
        assert len(directory.enrolled_since(found.external_id, since)) == 1
        result = directory.reset_factors(found.external_id)
        assert result.details["factors_removed"] == 1 and result.details["backup_codes_revoked"] == 10
        assert result.details["sessions_revoked"] == 1 and len(result.removed) == 1
        assert directory.reset_factors(found.external_id).removed == ()  # a repeat removes nothing
        assert directory.enrolled_since(found.external_id, since) == ()
        assert db.session.scalars(select(MfaFactor.status).where(MfaFactor.user_id == user.id)).all() == ["removed"]
        assert db.session.scalars(select(UserSession.id).where(UserSession.user_id == user.id,
                                                               UserSession.revoked_at.is_(None))).all() == []
        db.session.rollback()


def test_codes_password_suspend_reactivate(app, factory):
    tenant = factory.tenant()
    user = factory.user(tenant)
    with app.app_context():
        directory = directory_for(db.session.get(Tenant, tenant.id))
        ref = str(user.id)
        issued = directory.issue_backup_codes(ref, reference="a1", count=10)
        again = directory.issue_backup_codes(ref, reference="a1", count=10)
        live = db.session.scalars(select(BackupCode.batch_id).where(
            BackupCode.user_id == user.id, BackupCode.revoked_at.is_(None))).all()
        assert set(map(str, live)) == {again.reference} and issued.reference != again.reference  # never two sets
        password = directory.set_temporary_password(ref, reference="a2")
        row = db.session.get(User, user.id)
        assert len(password.secrets) == 1 and row.password.temporary and row.password.must_change
        directory.suspend(ref)
        assert row.status == "suspended" and directory.describe(ref).user.suspended
        directory.reactivate(ref)
        assert row.status == "active" and row.suspended_at is None
        with pytest.raises(PermanentDirectoryError):
            directory.describe(str(tenant.id))  # not a user of this tenant
        db.session.rollback()


def test_configure_an_external_kind_encrypts_and_rotates_the_token(app, factory):
    register("test-external", lambda config: config)  # type: ignore[arg-type,return-value]
    tenant = factory.tenant()
    try:
        with app.app_context():
            row_tenant = db.session.get(Tenant, tenant.id)
            actor = Actor.system(tenant.id)
            with pytest.raises(ValidationFailed):
                configure_directory(actor, row_tenant, kind="no-such-kind", url="https://x.test")
            with pytest.raises(ValidationFailed):
                configure_directory(actor, row_tenant, kind="test-external", url="https://pi.test")  # no token
            configure_directory(actor, row_tenant, kind="test-external", url="https://pi.test/", realm="staff",
                                token="tok-one")
            stored = db.session.get(TenantDirectory, tenant.id)
            assert stored is not None and "tok-one" not in stored.token_encrypted
            first = stored.token_encrypted
            config = directory_for(row_tenant)
            assert isinstance(config, DirectoryConfig)
            assert (config.kind, config.url, config.realm, config.token) == ("test-external", "https://pi.test",
                                                                              "staff", "tok-one")
            configure_directory(actor, row_tenant, kind="test-external", url="https://pi.test", token="tok-two")
            assert stored.token_encrypted != first and directory_for(row_tenant).token == "tok-two"
            configure_directory(actor, row_tenant, kind="builtin")
            assert isinstance(directory_for(row_tenant), BuiltinDirectory)
            db.session.commit()
        events = audit_rows(app, tenant.id, "tenant.directory_configured")
        assert [e.details["kind"] for e in events] == ["test-external", "test-external", "builtin"]
        assert all("tok-" not in str(e.details) for e in events)
    finally:
        unregister("test-external")
