"""Recovery through an external directory (issue 11, items 3-4), in process: the `memory` kind
(tests/directory_backend.py) keeps its state in Redis; the worker tests are in
tests/e2e/test_directory_worker.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

import tests.directory_backend  # noqa: F401  (registers the memory kind)
from app.actor import Actor
from app.extensions import db, utcnow
from app.jobs.models import DeadLetter
from app.tenants.directory import configure_directory
from app.tenants.models import Tenant
from integrations.directory import TransientDirectoryError
from tests.conftest import BROKER_REDIS_DB
from tests.directory_backend import MemoryStore
from tests.factories import LONG_AGO, PHONE
from tests.recovery_steps import Cast, act, audit, case, in_process, open_case, state, verify_by_callback
from tests.services import REDIS_BASE_URL, need

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

STORE_URL = f"{REDIS_BASE_URL}/{BROKER_REDIS_DB}"


def external_cast(world: Any, *, phone_added: datetime | None = LONG_AGO,
                  email_added: datetime | None = LONG_AGO) -> tuple[Cast, MemoryStore, str]:
    """A tenant on the memory directory, its user there (two old factors, an old phone), an agent
    and a senior admin. The user has no local row until a case names them."""
    need("redis")
    tenant = world.factory.tenant()
    store = MemoryStore(STORE_URL, f"t{uuid.uuid4().hex[:10]}")
    with world.app.app_context():
        configure_directory(Actor.system(tenant.id), db.session.get(Tenant, tenant.id), kind="memory",
                            url=STORE_URL, realm=store.ns, token="memory-token")
        db.session.commit()
    ext, email = f"u{uuid.uuid4().hex[:8]}", f"ext-{uuid.uuid4().hex[:8]}@example.com"
    store.add_user(ext, email, phones=((PHONE, phone_added),), email_added_at=email_added)
    store.add_factor(ext, "totp", created_at=LONG_AGO)
    store.add_factor(ext, "hotp", created_at=LONG_AGO)
    cast = Cast(tenant, SimpleNamespace(email=email, id=None), world.factory.agent(tenant),
                world.factory.agent(tenant, "senior_admin"), None)
    return cast, store, ext


@pytest.fixture
def world(client: Any, factory: Any) -> Any:
    return in_process(client, factory)


def _verified(world: Any, c: Cast) -> str:
    case_id = open_case(world, c)
    verify_by_callback(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "verified"
    return case_id


def test_reset_goes_to_the_directory_and_the_poll_closes_the_loop(world):
    c, store, ext = external_cast(world)
    serials = sorted(store.factors(ext))
    case_id = _verified(world, c)
    r = act(world, case_id, "force_mfa_reset", c.agent)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "reset in the directory")
    assert store.factors(ext) == {}
    calls = store.calls()
    assert calls.index("describe", calls.index("find_user")) < calls.index("reset_factors")  # listed first
    [event] = audit(world, c.tenant, "mfa.factor_admin_reset", case_id)
    assert event.details["removed"] == serials and event.details["factors_removed"] == 2
    assert event.details["directory"] == "memory" and event.details["sessions_revoked"] is False
    # Nothing enrolled yet: the poll leaves the case waiting.
    world.run_task("rekey.recovery.poll_enrolments", {})
    assert state(world, case_id, c.agent) == "awaiting_enrolment"
    store.add_factor(ext, "totp")
    world.run_task("rekey.recovery.poll_enrolments", {})
    assert state(world, case_id, c.agent) in ("recovered", "closed")
    assert len(audit(world, c.tenant, "recovery.recovered", case_id)) == 1


def test_a_lost_answer_after_the_remote_reset_is_repaired_by_the_retry_with_one_event(world):
    c, store, ext = external_cast(world)
    serials = sorted(store.factors(ext))
    case_id = _verified(world, c)
    store.fail("reset_factors", "lost")
    r = act(world, case_id, "force_mfa_reset", c.agent)
    assert r.status_code == 200, r.json
    action_id = r.json["action"]["id"]
    with pytest.raises(TransientDirectoryError):
        world.factory.drain_tasks()  # the planning run, then the reset whose answer is lost
    assert store.factors(ext) == {}  # the effect happened in the directory...
    assert audit(world, c.tenant, "mfa.factor_admin_reset", case_id) == []  # ...Rekey recorded nothing
    assert state(world, case_id, c.agent) == "verified"
    world.run_task("rekey.recovery.execute_action", {"action_id": action_id})  # the retry
    [event] = audit(world, c.tenant, "mfa.factor_admin_reset", case_id)
    assert event.details["removed"] == serials  # the real effect, although the retry found nothing
    assert state(world, case_id, c.agent) == "awaiting_enrolment"
    world.run_task("rekey.recovery.execute_action", {"action_id": action_id})  # a redelivery: nothing new
    assert len(audit(world, c.tenant, "mfa.factor_admin_reset", case_id)) == 1


def test_a_permanent_refusal_fails_the_action_and_a_senior_admin_retries_it(world):
    c, store, ext = external_cast(world)
    case_id = _verified(world, c)
    store.fail("reset_factors", "permanent")
    r = act(world, case_id, "force_mfa_reset", c.agent)
    action_id = r.json["action"]["id"]
    world.factory.drain_tasks()
    assert state(world, case_id, c.agent) == "verified"
    assert len(store.factors(ext)) == 2 and audit(world, c.tenant, "mfa.factor_admin_reset", case_id) == []
    [failed] = audit(world, c.tenant, "recovery.action_failed", case_id)
    assert failed.details["action_id"] == action_id and "refuses" in failed.reason
    with world.app.app_context():
        letters = db.session.scalars(select(DeadLetter).where(DeadLetter.task == "rekey.recovery.execute_action")).all()
        assert any(d.kwargs == {"action_id": action_id} for d in letters)
    assert "retry_action" not in case(world, case_id, c.agent)["allowed_actions"]
    refused = act(world, case_id, "retry_action", c.agent, action_id=action_id)
    assert refused.status_code == 403, refused.json
    retried = act(world, case_id, "retry_action", c.senior, action_id=action_id)
    assert retried.status_code == 200, retried.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the retried reset")
    assert store.factors(ext) == {} and len(audit(world, c.tenant, "mfa.factor_admin_reset", case_id)) == 1
    again = act(world, case_id, "retry_action", c.senior, action_id=action_id)
    assert again.status_code == 409, again.json  # only a failed action is retried


def test_secrets_are_issued_by_the_directory_under_the_actions_reference(world):
    c, store, ext = external_cast(world)
    case_id = _verified(world, c)
    r = act(world, case_id, "generate_backup_codes", c.agent)
    assert r.status_code == 200, r.json
    action_id = r.json["action"]["id"]
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "codes issued")
    issued = store.secret(ext, action_id)
    assert issued is not None and len(issued["secrets"]) == 10
    [event] = audit(world, c.tenant, "mfa.backup_codes_generated", case_id)
    assert event.details["batch_id"] == action_id and event.details["directory"] == "memory"
    assert not any(code in str(event.details) for code in issued["secrets"])


def test_suspension_is_told_to_the_directory(world):
    c, store, ext = external_cast(world)
    case_id = _verified(world, c)
    r = act(world, case_id, "suspend_user", c.agent)
    assert r.status_code == 200, r.json
    world.factory.drain_tasks()
    assert store.suspended(ext)
    [confirmed] = audit(world, c.tenant, "directory.user_suspended", case_id)
    assert confirmed.details == {"directory": "memory", "sessions_revoked": False}
    [local] = audit(world, c.tenant, "user.suspended", case_id)
    assert local.details["sessions_revoked"] == "in_directory"


def test_channels_without_dates_count_as_new_until_dates_are_imported(world):
    from app.accounts.mirror import import_channel_dates
    from app.accounts.models import Channel, User
    from app.accounts.sync import sync_tenant

    c, store, ext = external_cast(world, phone_added=None, email_added=None)
    case_id = open_case(world, c, expect="escalated")  # every channel first seen today: a recent change
    detail = case(world, case_id, c.senior)
    assert "recent_channel_change" in detail["flags"] and detail["callable_channels"] == []
    with world.app.app_context():
        user_id = db.session.scalars(select(User.id).where(User.tenant_id == c.tenant.id,
                                                           User.directory_ref == ext)).one()
        phone = db.session.scalars(select(Channel).where(Channel.user_id == user_id, Channel.kind == "phone")).one()
        assert phone.first_seen_at is not None and phone.added_at == phone.first_seen_at
        result = import_channel_dates(c.tenant.id, [
            {"user": c.user.email, "channel": PHONE, "added_at": LONG_AGO},
            {"user": "nobody@example.com", "channel": PHONE, "added_at": LONG_AGO},
            {"user": ext, "channel": PHONE, "added_at": utcnow()},  # never made newer
        ])
        assert result["updated"] == 1 and [s["row"] for s in result["skipped"]] == [2]
        db.session.commit()
    assert [ch["kind"] for ch in case(world, case_id, c.senior)["callable_channels"]] == ["phone"]
    # The directory gains a phone and loses the old one: the sync mirrors both.
    store.set_channels(ext, [{"kind": "email", "value": c.user.email, "added_at": None},
                             {"kind": "phone", "value": "+14155550123", "added_at": None}])
    with world.app.app_context():
        counts = sync_tenant(db.session.get(Tenant, c.tenant.id))
        assert (counts["users"], counts["added"], counts["removed"]) == (1, 1, 1)
        rows = {ch.value: ch for ch in db.session.scalars(select(Channel).where(Channel.user_id == user_id)).all()}
        assert rows[PHONE].removed_at is not None
        assert rows["+14155550123"].first_seen_at is not None
        assert rows["+14155550123"].added_at >= utcnow() - timedelta(minutes=5)
        db.session.commit()


def test_a_directory_that_does_not_answer_at_intake_is_a_503_not_a_refusal(world):
    from tests.recovery_steps import integration, request_body

    c, store, _ = external_cast(world)
    store.fail("find_user", "transient")
    found, signing = integration(world, c.tenant)
    body, headers = request_body("standard", signing, c.user.email)
    r = world.client.post(f"/v1/webhooks/{found.id}", data=body, headers=headers)
    assert r.status_code == 503 and r.json["error"]["code"] == "directory_unavailable", r.json
    # Nothing was kept: the sender's retry of the same delivery opens the case.
    again = world.client.post(f"/v1/webhooks/{found.id}", data=body, headers=headers)
    assert again.status_code == 202, again.json
    world.settle(lambda: state(world, again.json["case_id"], c.agent) == "awaiting_verification", "screened")


def test_builtin_behaviour_holds_for_builtin_users_of_an_external_tenant(world):
    """A user created in Rekey before the tenant connected a directory keeps the built-in one."""
    from app.recovery.effects import directory_of_user

    c, _, _ = external_cast(world)
    local = world.factory.settled_user(c.tenant)
    with world.app.app_context():
        from app.accounts.models import User

        assert directory_of_user(db.session.get(User, local.id)).kind == "builtin"


def test_dates_are_aware():
    assert LONG_AGO.tzinfo is not None and datetime.now(UTC) > LONG_AGO
