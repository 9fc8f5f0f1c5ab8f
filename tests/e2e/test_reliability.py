"""Idempotency and crashes with a real worker on PostgreSQL and Redis: a reset delivered three
times, a pool child SIGKILLed in the middle of the reset, a ticket that fails then answers, and
one that fails for good (dead letter, `rekey dlq`).

"The middle" is made deterministic from outside the product: the test holds a row lock on the
user's factor in its own database connection, so the reset task blocks inside its transaction
(effect claimed, case locked, the UPDATE of the factors waiting) until the test lets go.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from app.extensions import db
from integrations.fakes import FakeJira, Reply
from tests.integration.conftest import wait_for
from tests.recovery_paths import RESET_REASON, expect_notices, expect_one_comment, ticket_comments
from tests.recovery_steps import (
    act,
    active_factor_count,
    assert_no_secrets,
    audit,
    cast,
    enrol_and_close,
    give_backup_codes,
    signin,
    state,
    verified_case,
)

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]
REPO = Path(__file__).resolve().parents[2]
EXECUTE = "rekey.recovery.execute_action"


# --- the database from outside, and the worker's processes --------------------------------------


def _dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def factor_row_locked(database_url: str, user_id: uuid.UUID) -> Iterator[psycopg.Connection[Any]]:
    """Hold FOR UPDATE on the user's active factors until the block ends (then roll back)."""
    with psycopg.connect(_dsn(database_url)) as conn:
        rows = conn.execute("SELECT id FROM mfa_factors WHERE user_id = %s AND status = 'active' FOR UPDATE",
                            (user_id,)).fetchall()
        assert len(rows) == 1
        try:
            yield conn
        finally:
            conn.rollback()


def lock_waiters(database_url: str, query_like: str) -> list[tuple[int, int]]:
    """(backend pid, client port) of sessions waiting on a row lock in a statement like this."""
    with psycopg.connect(_dsn(database_url), autocommit=True) as conn:
        return [(pid, port) for pid, port in conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query ILIKE %s", (query_like,)).fetchall()]


def pool_children(main_pid: int) -> list[int]:
    """The prefork pool's child processes of the worker's main process."""
    path = Path(f"/proc/{main_pid}/task/{main_pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _socket_inode(local_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                return fields[9]
    return None


def process_with_port(pids: list[int], local_port: int) -> int:
    """The process among `pids` whose TCP socket has this local port (its database connection)."""
    inode = _socket_inode(local_port)
    assert inode, f"no socket with local port {local_port}"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker child owns the connection on port {local_port}")


def outbox_task_id(app: Any, task: str, **kwargs: str) -> str:
    from app.jobs.models import OutboxMessage

    with app.app_context():
        rows = [r for r in db.session.scalars(select(OutboxMessage).where(OutboxMessage.task == task)).all()
                if all(r.kwargs.get(k) == v for k, v in kwargs.items())]
        assert len(rows) == 1, rows
        return str(rows[0].id)


def dead_letters(app: Any, case_id: str) -> list[Any]:
    from app.jobs.models import DeadLetter

    with app.app_context():
        rows = [r for r in db.session.scalars(select(DeadLetter)).all() if r.kwargs.get("case_id") == case_id]
        db.session.expunge_all()
        return rows


def rekey(cli_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO, env=cli_env,
                          capture_output=True, text=True, timeout=60, check=False)


def assert_reset_exactly_once(world: Any, c: Any, case_id: str) -> None:
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset carried out")
    world.quiesce()
    resets = audit(world, c.tenant, "mfa.factor_admin_reset")
    assert len(resets) == 1 and resets[0].actor_id == str(c.agent.agent.id) and resets[0].reason == RESET_REASON
    assert resets[0].details["factors_removed"] == 1
    assert active_factor_count(world, c.user) == 0
    assert len(audit(world, c.tenant, "recovery.action_queued", case_id)) == 1
    expect_notices(world, case_id, "mfa.factor_admin_reset", c.user)  # one per channel on file
    told = sorted(e.details["channel_kind"] for e in audit(world, c.tenant, "user.notified", case_id))
    assert told == ["email", "phone"]


# --- idempotency ----------------------------------------------------------------------------------


def test_reset_delivered_three_times_concurrently_resets_once(world, worker, database_url):
    c = cast(world)
    case_id = verified_case(world, c)
    celery = world.app.extensions["celery"]
    with factor_row_locked(database_url, c.user.id):
        r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
        assert r.status_code == 200, r.json
        action_id = r.json["action"]["id"]
        wait_for(lambda: lock_waiters(database_url, "UPDATE mfa_factors%"), 15, what="the first copy mid-reset")
        task_id = outbox_task_id(world.app, EXECUTE, action_id=action_id)
        # The same message again (a redelivery) and a second publish (as the outbox sweep might).
        celery.send_task(EXECUTE, kwargs={"action_id": action_id}, task_id=task_id)
        celery.send_task(EXECUTE, kwargs={"action_id": action_id})
        # The other pool child now runs a copy at the same time and waits on a lock the first
        # copy holds (the case's row, whatever statement takes it): two sessions waiting.
        wait_for(lambda: len(lock_waiters(database_url, "%")) >= 2, 15,
                 what="a concurrent copy waiting on a lock the first copy holds")
    assert_reset_exactly_once(world, c, case_id)
    assert worker.log().count(f"Task {EXECUTE}[") >= 6  # three received, three succeeded


def test_pool_child_sigkilled_mid_reset_is_redelivered_and_resets_once(world, worker, database_url, cli_env):
    """SIGKILL the prefork child that is inside the reset's transaction. The parent sees the
    child die (WorkerLostError) and, with acks_late + reject_on_worker_lost, rejects the message
    with requeue: Redis puts it back on the queue at once (no visibility timeout involved). The
    killed transaction never committed, so the effect claim is gone and the redelivery does the
    reset exactly once."""
    c = cast(world)
    case_id = verified_case(world, c)
    main_pid = worker.worker.pid
    assert main_pid is not None
    with factor_row_locked(database_url, c.user.id):
        r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
        action_id = r.json["action"]["id"]
        task_id = outbox_task_id(world.app, EXECUTE, action_id=action_id)
        [(_, port)] = wait_for(lambda: lock_waiters(database_url, "UPDATE mfa_factors%"), 15,
                               what="the reset task blocked inside its transaction")
        children = pool_children(main_pid)
        victim = process_with_port(children, port)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "WorkerLostError" in worker.log(), 15, what="the parent noticing the lost child")
        wait_for(lambda: victim not in pool_children(main_pid) and len(pool_children(main_pid)) == len(children),
                 15, what="a replacement pool child")
        # Killed mid-transaction: nothing of the reset is visible.
        assert active_factor_count(world, c.user) == 1
        assert audit(world, c.tenant, "mfa.factor_admin_reset") == []
    # The lock is released: the requeued message runs in the new child.
    assert_reset_exactly_once(world, c, case_id)
    log = worker.log()
    assert "signal 9 (SIGKILL)" in log
    assert log.count(f"Task {EXECUTE}[{task_id}] received") == 2  # delivered, killed, delivered again
    assert f"Task {EXECUTE}[{task_id}] succeeded" in log
    assert worker.alive and main_pid == worker.worker.pid  # only the child died

    # The runbook's auditor question: one row per reset, with the agent and the reason.
    out = rekey(cli_env, "audit", "export", "--tenant", c.tenant.slug, "--action", "mfa.factor_admin_reset")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["actor_type"], r["actor_id"], r["reason"], r["case_id"]) for r in rows] == [
        ("agent", str(c.agent.agent.id), RESET_REASON, case_id)]


# --- ticket comments that fail ------------------------------------------------------------------------


def _close_with_jira_ticket(world: Any, jira: FakeJira) -> tuple[Any, str]:
    """A backup-code recovery opened from Jira, up to the case closing (the comment comes next)."""
    c = cast(world)
    codes = give_backup_codes(world, c.user)
    case_id = verified_case(world, c, kind="jira", fake=jira)
    r = signin(world, c, backup_code=codes[0])
    assert r.json["status"] == "enrolment_required", r.json
    enrol_and_close(world, c, case_id, r.json["token"])
    return c, case_id


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira() as fake:
        yield fake


def test_ticket_comment_after_500_and_timeout_is_posted_once_after_backoff(world, worker, jira):
    # 500, then an answer that never comes in time (the worker's read timeout is 15 s; this reply
    # is not processed, as when a gateway times out in front of Jira), then Jira's normal 201.
    jira.script([500, Reply(status=504, body={"errorMessages": ["gateway"]}, delay=17.0)])
    started = time.monotonic()
    c, case_id = _close_with_jira_ticket(world, jira)
    world.settle(lambda: ticket_comments(jira, "jira"), "the comment after two retries")
    assert time.monotonic() - started > 15  # the timeout really was waited out
    expect_one_comment(world, jira, "jira", case_id)
    assert len(jira.requests) == 3
    retries = [json.loads(line[line.index("{"):]) for line in worker.log().splitlines()
               if '"task_retry"' in line and "post_ticket_comment" in line]
    assert [(r["retries"], r["error"]) for r in retries] == [(0, "TransientDeliveryError"),
                                                             (1, "TransientDeliveryError")]
    assert all(0 <= r["countdown"] <= 0.2 * 2 ** r["retries"] for r in retries)
    assert len(audit(world, c.tenant, "recovery.ticket_commented", case_id)) == 1
    assert dead_letters(world.app, case_id) == []


def test_ticket_comment_failing_for_good_is_dead_lettered_then_replayed_once(world, worker, jira, cli_env):
    jira.script([500, 503, 500])  # the first try and both retries
    c, case_id = _close_with_jira_ticket(world, jira)
    [dead] = world.settle(lambda: dead_letters(world.app, case_id), "a dead letter for the comment")
    world.quiesce()
    assert len(dead_letters(world.app, case_id)) == 1
    assert (dead.task, dead.attempts, dead.error_type) == ("rekey.recovery.post_ticket_comment", 3,
                                                           "TransientDeliveryError")
    assert len(jira.requests) == 3 and ticket_comments(jira, "jira") == []
    assert audit(world, c.tenant, "recovery.ticket_commented", case_id) == []

    out = rekey(cli_env, "dlq", "list", "--json")
    assert out.returncode == 0, out.stderr
    listed = [row for row in json.loads(out.stdout) if row["id"] == str(dead.id)]
    assert listed and listed[0]["task"] == dead.task and listed[0]["kwargs"] == {"case_id": case_id}

    out = rekey(cli_env, "dlq", "retry", str(dead.id))  # Jira answers normally again
    assert out.returncode == 0, out.stderr
    expect_one_comment(world, jira, "jira", case_id)
    assert len(audit(world, c.tenant, "recovery.ticket_commented", case_id)) == 1
    out = rekey(cli_env, "dlq", "list", "--json")
    assert str(dead.id) not in out.stdout
    assert rekey(cli_env, "dlq", "retry", str(dead.id)).returncode == 2  # replayed once only
    world.quiesce()
    assert len(ticket_comments(jira, "jira")) == 1
    assert_no_secrets(world, fakes=(jira,), logs=worker.log())


# --- a secret texted, then the transaction lost -------------------------------------------------------


@contextmanager
def dev_channel_held(path: str) -> Iterator[None]:
    """Hold the development channel's file lock: a task sending a message waits inside `send`."""
    import fcntl

    Path(path).touch()
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_backends_sending(database_url: str, main_pid: int) -> list[int]:
    """Backends of the worker's pool children that looked up the channel to text and now wait,
    inside their transaction, for the message to be sent."""
    with psycopg.connect(_dsn(database_url), autocommit=True) as conn:
        rows = conn.execute("SELECT pid, client_port FROM pg_stat_activity WHERE datname = current_database() "
                            "AND state = 'idle in transaction' AND client_port > 0 "
                            "AND query LIKE 'SELECT channels.%%WHERE channels.id = %%'").fetchall()
    children = pool_children(main_pid)
    found = []
    for pid, port in rows:
        try:
            process_with_port(children, port)
        except AssertionError:
            continue
        found.append(pid)
    return found


@pytest.mark.parametrize("action", ["set_temporary_password", "generate_backup_codes"])
def test_secret_texted_then_connection_lost_still_works_for_the_user(world, worker, database_url, settings, action):
    """The worker texts the secret, then its database connection drops before the commit (a
    transient error: the task is retried). What the user received must still be what works."""
    from tests.recovery_paths import TEMP_PASSWORD
    from tests.recovery_steps import BACKUP_CODE, PHONE, messages

    c = cast(world)
    case_id = verified_case(world, c)
    if action == "set_temporary_password":
        act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
        world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    world.quiesce()
    with dev_channel_held(settings.dev_outbox):
        r = act(world, case_id, action, c.agent, reason="Secret over the verified phone, ticket #1234")
        assert r.status_code == 200, r.json
        action_id = r.json["action"]["id"]
        [backend] = wait_for(lambda: worker_backends_sending(database_url, worker.worker.pid), 15,
                             what="the task holding its transaction while it sends the text")
        with psycopg.connect(_dsn(database_url), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (backend,))
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment" and audit(
        world, c.tenant, "mfa.backup_codes_generated" if action == "generate_backup_codes"
        else "user.password_set_by_admin", case_id if action == "set_temporary_password" else None),
        "the action carried out after the retry")
    world.quiesce()
    # The transaction that sent the text was lost, and the delivery retried.
    retried = [json.loads(line[line.index("{"):]) for line in worker.log().splitlines() if '"task_retry"' in line]
    assert any(r["error"] == "OperationalError" and r["task"] in (EXECUTE, "rekey.recovery.deliver_secret")
               for r in retried), retried
    texts = messages(world, f"action:{action_id}", to=PHONE)
    assert len(texts) == 1
    with world.app.app_context():
        from app.recovery.models import CaseAction

        sent_row = db.session.get(CaseAction, uuid.UUID(action_id))
        assert sent_row is not None and "sealed" not in sent_row.options  # not kept once sent
    if action == "set_temporary_password":
        secret = TEMP_PASSWORD.search(texts[-1]["body"]).group(1)  # type: ignore[union-attr]
        world.handed_out.append(secret)
        r = signin(world, c, secret)
        assert r.status_code == 200 and r.json["status"] == "password_change_required", (len(texts), r.json)
    else:
        codes = BACKUP_CODE.findall(texts[-1]["body"])
        world.handed_out.extend(codes)
        r = signin(world, c, backup_code=codes[0])
        assert r.status_code == 200 and r.json["status"] == "enrolment_required", (len(texts), r.json)


@pytest.mark.parametrize("action, hold, waiting", [
    # The task blocks inside its transaction on a row this test holds: the password row it
    # rewrites, or (for codes) the user row its new code rows reference.
    ("set_temporary_password", "SELECT 1 FROM password_identities WHERE user_id = %s FOR UPDATE",
     "UPDATE password_identities%"),
    ("generate_backup_codes", "SELECT 1 FROM users WHERE id = %s FOR UPDATE", "INSERT INTO backup_codes%"),
])
def test_pool_child_sigkilled_mid_secret_action_does_it_once(world, worker, database_url, settings, action,
                                                              hold, waiting):
    """The other destructive tasks, killed in the middle too: one audit event, one text, and the
    secret in that text is the one that works."""
    from tests.recovery_paths import TEMP_PASSWORD
    from tests.recovery_steps import BACKUP_CODE, PHONE, messages

    c = cast(world)
    case_id = verified_case(world, c)
    if action == "set_temporary_password":
        act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
        world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    world.quiesce()
    main_pid = worker.worker.pid
    assert main_pid is not None
    event = "user.password_set_by_admin" if action == "set_temporary_password" else "mfa.backup_codes_generated"
    with psycopg.connect(_dsn(database_url)) as held:
        assert held.execute(hold, (c.user.id,)).fetchall()
        r = act(world, case_id, action, c.agent, reason="Secret over the verified phone, ticket #1234")
        assert r.status_code == 200, r.json
        action_id = r.json["action"]["id"]
        [(_, port)] = wait_for(lambda: lock_waiters(database_url, waiting), 15,
                               what="the task blocked inside its transaction")
        children = pool_children(main_pid)
        lost_before = worker.log().count("WorkerLostError")
        os.kill(process_with_port(children, port), signal.SIGKILL)
        wait_for(lambda: worker.log().count("WorkerLostError") > lost_before, 15,
                 what="the parent noticing the lost child")
        assert [e for e in audit(world, c.tenant, event) if e.case_id == uuid.UUID(case_id)] == []
        held.rollback()
    world.settle(lambda: [e for e in audit(world, c.tenant, event) if e.case_id == uuid.UUID(case_id)],
                 "the action carried out after the redelivery")
    world.quiesce()
    assert len([e for e in audit(world, c.tenant, event) if e.case_id == uuid.UUID(case_id)]) == 1
    texts = messages(world, f"action:{action_id}", to=PHONE)
    assert len(texts) == 1
    if action == "set_temporary_password":
        secret = TEMP_PASSWORD.search(texts[0]["body"]).group(1)  # type: ignore[union-attr]
        world.handed_out.append(secret)
        r = signin(world, c, secret)
        assert r.status_code == 200 and r.json["status"] == "password_change_required", r.json
    else:
        codes = BACKUP_CODE.findall(texts[0]["body"])
        world.handed_out.extend(codes)
        r = signin(world, c, backup_code=codes[0])
        assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
