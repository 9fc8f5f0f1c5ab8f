"""Issue 11, item 6: a tenant on a REAL privacyIDEA 3.14 (tests/directory_servers.py starts it), the runbook over
HTTP, every task in the real Celery worker (which reaches privacyIDEA itself, allow-listed to 127.0.0.1).

The user exists only in privacyIDEA (realm user with `email` and `mobile`). Before the case, the tenant's admin has
done what docs/PRIVACYIDEA.md says for a newly connected directory: the user is mirrored and the phone's date is
imported from the company's records (privacyIDEA keeps none), so the callback rule sees an old phone.
"""
from __future__ import annotations

import base64
import os
import re
import secrets
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyotp
import pytest

from app.actor import Actor
from app.extensions import db
from integrations.fakes.server import RecordedRequest
from tests.directory_servers import HOTP_VALUES, ForwardingProxy, PrivacyIDEAServer
from tests.e2e.conftest import E2E_ENV, start_e2e_worker, worker_world
from tests.factories import LONG_AGO, PHONE
from tests.integration.conftest import CeleryWorker, RedisServer
from tests.recovery_steps import (
    Cast,
    World,
    act,
    audit,
    case,
    links_in,
    messages,
    notices,
    open_case,
    state,
    verify_by_callback,
)

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

# privacyIDEA restarting takes 10-20 s here: the worker of this module retries long enough to outlast it.
RETRYING = {"REKEY_TASK_RETRY_BASE_SECONDS": "1.0", "REKEY_TASK_MAX_RETRIES": "10"}
TAN = re.compile(r"\b[2-9a-hjkmnp-z]{14}\b")


@pytest.fixture(scope="module")
def _e2e_worker(settings: Any, broker: RedisServer, app: Any, tmp_path_factory: Any) -> Iterator[CeleryWorker]:
    """The e2e worker (tests/e2e/conftest.py) with a longer retry budget."""
    saved = dict(E2E_ENV)
    E2E_ENV.update(RETRYING)
    try:
        handle = start_e2e_worker(settings, broker, tmp_path_factory.mktemp("pi-worker"))
    finally:
        E2E_ENV.clear()
        E2E_ENV.update(saved)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(autouse=True)
def _allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The intake looks the user up in privacyIDEA from this process too: same allow-list as the worker."""
    monkeypatch.setenv("REKEY_OUTBOUND_ALLOWLIST", "127.0.0.1")


@pytest.fixture
def world(client: Any, factory: Any, worker: CeleryWorker, broker: RedisServer) -> World:
    return worker_world(client, factory, broker.url, worker=worker, timeout=90.0)


def _serial(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(4).upper()}"


def pi_cast(world: World, pi: PrivacyIDEAServer, *, url: str | None = None) -> tuple[Cast, str, set[str]]:
    """A tenant on privacyIDEA; its user there with a TOTP and a HOTP token and an old mobile number."""
    from app.accounts.mirror import import_channel_dates, mirror_user
    from app.tenants.directory import configure_directory
    from app.tenants.models import Tenant
    from integrations.directory.registry import directory_for

    tenant = world.factory.tenant()
    email = f"pi-{uuid.uuid4().hex[:8]}@example.com"
    username = pi.create_user(email=email, mobile=PHONE)
    serials = {_serial("TOTP"), _serial("HOTP")}
    totp, hotp = sorted(serials, reverse=True)
    pi.enrol_totp(username, totp, secrets.token_hex(20))
    pi.enrol_hotp(username, hotp)
    with world.app.app_context():
        row = db.session.get(Tenant, tenant.id)
        configure_directory(Actor.system(tenant.id), row, kind="privacyidea", url=url or pi.url, realm=pi.realm,
                            token=pi.token)
        db.session.flush()
        user = mirror_user(tenant.id, "privacyidea", directory_for(row).describe(username))
        result = import_channel_dates(tenant.id, [{"user": email, "channel": PHONE, "added_at": LONG_AGO},
                                                  {"user": email, "channel": email, "added_at": LONG_AGO}])
        assert result["updated"] == 2, result
        user_id = user.id
        db.session.commit()
    return (Cast(tenant, SimpleNamespace(email=email, id=user_id), world.factory.agent(tenant),
                 world.factory.agent(tenant, "senior_admin"), None), username, serials)


def _verified(world: World, c: Cast) -> str:
    case_id = open_case(world, c)
    verify_by_callback(world, case_id, c.agent)
    assert state(world, case_id, c.agent) == "verified"
    return case_id


def _reset_event(world: World, c: Cast, case_id: str) -> Any:
    [event] = audit(world, c.tenant, "mfa.factor_admin_reset", case_id)
    return event


@pytest.mark.xfail(strict=False, reason=(
    "open: in the full parallel suite the enrolment poll sometimes never sees the token enrolled in "
    "privacyIDEA (passes alone and in most full runs); the reset half is asserted before that point"))
def test_force_reset_happens_in_privacyidea_and_the_new_token_closes_the_case(
        world: World, privacyidea_server: PrivacyIDEAServer) -> None:
    pi = privacyidea_server
    c, username, serials = pi_cast(world, pi)
    case_id = _verified(world, c)

    r = act(world, case_id, "force_mfa_reset", c.agent)

    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset in privacyIDEA")
    assert pi.serials(username) == set()
    assert not pi.validate(username, HOTP_VALUES[1])
    event = _reset_event(world, c, case_id)
    assert sorted(event.details["removed"]) == sorted(serials) and event.details["factors_removed"] == 2
    assert event.details["directory"] == "privacyidea" and event.details["sessions_revoked"] is False
    assert pi.token not in str(event.details)

    # The user enrols a new token in privacyIDEA (not in Rekey); Rekey's poll sees it.
    key = secrets.token_hex(20)
    pi.enrol_totp(username, _serial("TOTP"), key)
    assert pi.validate(username, pyotp.TOTP(base64.b32encode(bytes.fromhex(key)).decode()).now())

    def polled_again() -> bool:
        # As the beat does every minute: a poll that found privacyIDEA slow (a loaded machine) skips
        # the case and the next one asks again.
        world.run_task("rekey.recovery.poll_enrolments", {})
        return state(world, case_id, c.agent) in ("recovered", "closed")

    world.settle(polled_again, "the enrolment seen")
    assert len(audit(world, c.tenant, "recovery.recovered", case_id)) == 1


def test_admin_backup_codes_are_a_tan_token_texted_to_the_verified_phone_only(
        world: World, privacyidea_server: PrivacyIDEAServer) -> None:
    pi = privacyidea_server
    c, username, _ = pi_cast(world, pi)
    case_id = _verified(world, c)

    r = act(world, case_id, "generate_backup_codes", c.agent, reason="User cannot enrol any factor; ticket #1234")

    assert r.status_code == 200, r.json
    action_id = r.json["action"]["id"]
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "codes issued in privacyIDEA")
    world.quiesce()
    [token] = pi.admin("GET", "/token/", serial=action_id)["tokens"]
    assert token["tokentype"] == "tan" and token["username"] == username
    texts = messages(world, f"action:{action_id}")
    assert [m["to"] for m in texts] == [PHONE]  # the verified phone, nothing to the email, nothing to the agent
    codes = TAN.findall(texts[0]["body"])
    assert len(codes) == 10
    assert not any(code in str(case(world, case_id, c.agent)) for code in codes)
    [event] = audit(world, c.tenant, "mfa.backup_codes_generated", case_id)
    assert not any(code in str(event.details) for code in codes)
    assert pi.validate(username, codes[3])
    assert not pi.validate(username, codes[3])  # each works once, at privacyIDEA's /validate/check


def test_this_wasnt_me_suspends_the_user_in_privacyidea(world: World, privacyidea_server: PrivacyIDEAServer) -> None:
    pi = privacyidea_server
    c, username, _ = pi_cast(world, pi)
    case_id = _verified(world, c)
    assert act(world, case_id, "force_mfa_reset", c.agent).status_code == 200
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    sent = world.settle(lambda: [m for m in notices(world, case_id, "mfa.factor_admin_reset") if m["to"] == PHONE],
                        "the reset notice to the phone on file")
    report = links_in(sent[0], "report")[0]
    # Whoever is at the keyboard enrols a token in privacyIDEA before the poll runs ...
    pi.enrol_hotp(username, _serial("HOTP"))
    assert pi.validate(username, HOTP_VALUES[1])

    # ... and the real user, reading the notice on their phone, says it was not them.
    r = world.client.post(report)

    assert r.status_code == 202 and r.json == {"status": "reported"}, r.json
    assert state(world, case_id, c.senior) == "suspected_attack"
    world.settle(lambda: audit(world, c.tenant, "directory.user_suspended", case_id), "suspended in privacyIDEA")
    assert not pi.validate(username, HOTP_VALUES[2])  # /validate/check now rejects the user
    tokens = pi.admin("GET", "/token/", user=username, realm=pi.realm)["tokens"]
    assert tokens and all(not t["active"] for t in tokens)


def test_privacyidea_stopped_in_the_middle_of_a_reset_the_task_retries_and_audits_once(
        world: World, privacyidea_server: PrivacyIDEAServer) -> None:
    pi = privacyidea_server
    deletes: list[str] = []
    down = threading.Event()

    def stop_at_second_delete(n: int, request: RecordedRequest) -> None:
        if request.method == "DELETE":
            deletes.append(request.path)
            if len(deletes) == 2 and not down.is_set():
                pi.stop()  # after the first token is gone, before the second
                down.set()
                threading.Thread(target=pi.start, daemon=True).start()  # back in 10-20 s

    with ForwardingProxy(pi.url, before=stop_at_second_delete) as proxy:
        c, username, serials = pi_cast(world, pi, url=proxy.url)
        case_id = _verified(world, c)

        assert act(world, case_id, "force_mfa_reset", c.agent).status_code == 200

        assert down.wait(60), "the reset never reached its second delete"
        # privacyIDEA is down with the reset half done: Rekey claims nothing.
        assert audit(world, c.tenant, "mfa.factor_admin_reset", case_id) == []
        assert state(world, case_id, c.agent) == "verified"
        world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the retried reset")
    assert pi.serials(username) == set()
    event = _reset_event(world, c, case_id)
    assert sorted(event.details["removed"]) == sorted(serials)
    assert len(deletes) >= 3  # the first try's two, then the retry's
    world.quiesce()
    assert len(audit(world, c.tenant, "mfa.factor_admin_reset", case_id)) == 1


def _pool_children(main_pid: int) -> list[int]:
    path = Path(f"/proc/{main_pid}/task/{main_pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_worker_killed_after_the_remote_delete_before_the_audit_write_one_event(
        world: World, worker: CeleryWorker, privacyidea_server: PrivacyIDEAServer) -> None:
    pi = privacyidea_server
    deletes: list[str] = []
    killed = threading.Event()
    main_pid = worker.worker.pid
    assert main_pid is not None

    class KillAfterLastDelete(ForwardingProxy):
        def handle(self, request: RecordedRequest) -> Any:
            answer = super().handle(request)  # privacyIDEA has deleted the token
            if request.method == "DELETE":
                deletes.append(request.path)
                if len(deletes) == 2 and not killed.is_set():
                    for child in _pool_children(main_pid):  # before the task hears back: no audit write
                        os.kill(child, signal.SIGKILL)
                    killed.set()
            return answer

    with KillAfterLastDelete(pi.url) as proxy:
        c, username, serials = pi_cast(world, pi, url=proxy.url)
        case_id = _verified(world, c)
        lost_before = worker.log().count("WorkerLostError")

        assert act(world, case_id, "force_mfa_reset", c.agent).status_code == 200

        assert killed.wait(60), "the reset never deleted both tokens"
        assert pi.serials(username) == set()  # the effect happened in privacyIDEA ...
        world.settle(lambda: worker.log().count("WorkerLostError") > lost_before, "the parent noticing the kill")
        world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the redelivered task")
        world.quiesce()
    event = _reset_event(world, c, case_id)  # ... and is audited once, with what was really removed
    assert sorted(event.details["removed"]) == sorted(serials)
    assert worker.alive
