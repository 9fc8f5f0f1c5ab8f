"""The external-directory path with the real worker (issue 11, item 3): the worker imports the
`memory` directory kind (tests/directory_backend.py, state in Redis) through
REKEY_DIRECTORY_MODULES, as a deployment would import its own adapter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from tests.e2e.conftest import E2E_ENV
from tests.integration.conftest import CeleryWorker, worker_env
from tests.recovery_steps import act, audit, state
from tests.unit.recovery.test_directory_seam import _verified, external_cast

EXECUTE = "rekey.recovery.execute_action"


@pytest.fixture(scope="module")
def _directory_worker(settings: Any, broker: Any, app: Any, tmp_path_factory: Any) -> Iterator[CeleryWorker]:
    workdir = tmp_path_factory.mktemp("directory-worker")
    env = {**worker_env(settings, broker_url=broker.url, instance_dir=workdir), **E2E_ENV,
           "REKEY_DIRECTORY_MODULES": "tests.directory_backend"}
    handle = CeleryWorker(env, workdir, pool="prefork", concurrency=2).start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def worker(_directory_worker: CeleryWorker) -> CeleryWorker:
    if not _directory_worker.alive:
        _directory_worker.restart()
    return _directory_worker


def _retries(worker: CeleryWorker) -> list[dict[str, Any]]:
    return [json.loads(line[line.index("{"):]) for line in worker.log().splitlines() if '"task_retry"' in line]


def test_transient_failures_retry_and_nothing_is_audited_until_the_reset_happened(world, worker):
    c, store, ext = external_cast(world)
    serials = sorted(store.factors(ext))
    case_id = _verified(world, c)
    store.fail("reset_factors", "transient", 2)  # the worker retries twice (E2E_ENV), the third call succeeds
    r = act(world, case_id, "force_mfa_reset", c.agent)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset after two retries")
    world.quiesce()
    assert store.calls().count("reset_factors") == 3 and store.factors(ext) == {}
    [event] = audit(world, c.tenant, "mfa.factor_admin_reset", case_id)
    assert event.details["removed"] == serials
    assert [x["error"] for x in _retries(worker) if x["task"] == EXECUTE].count("TransientDirectoryError") >= 2


def test_worker_killed_after_the_remote_delete_audits_once_on_the_retry(world, worker):
    c, store, ext = external_cast(world)
    serials = sorted(store.factors(ext))
    case_id = _verified(world, c)
    store.fail("reset_factors", "crash")  # the pool child dies right after the directory deleted the tokens
    r = act(world, case_id, "force_mfa_reset", c.agent)
    assert r.status_code == 200, r.json
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the redelivered reset", )
    world.quiesce()
    assert store.calls().count("reset_factors") == 2 and store.factors(ext) == {}
    [event] = audit(world, c.tenant, "mfa.factor_admin_reset", case_id)
    assert event.details["removed"] == serials and event.details["factors_removed"] == 2
    assert "WorkerLostError" in worker.log() or "exited with 'exitcode 137'" in worker.log()


def test_retries_exhausted_leave_a_dead_letter_and_a_verified_case(world, worker):
    from app.extensions import db
    from app.jobs.models import DeadLetter

    c, store, ext = external_cast(world)
    case_id = _verified(world, c)
    store.fail("reset_factors", "transient", 10)
    r = act(world, case_id, "force_mfa_reset", c.agent)
    action_id = r.json["action"]["id"]

    def dead() -> list[Any]:
        with world.app.app_context():
            return list(db.session.scalars(select(DeadLetter).where(DeadLetter.task == EXECUTE)).all())

    world.settle(lambda: [d for d in dead() if d.kwargs == {"action_id": action_id}], "the dead letter")
    world.quiesce()
    assert state(world, case_id, c.agent) == "verified" and len(store.factors(ext)) == 2
    assert audit(world, c.tenant, "mfa.factor_admin_reset", case_id) == []
    store.clear_failures()


def test_the_enrolment_poll_runs_in_the_worker(world, worker):
    c, store, ext = external_cast(world)
    case_id = _verified(world, c)
    act(world, case_id, "force_mfa_reset", c.agent)
    world.settle(lambda: state(world, case_id, c.agent) == "awaiting_enrolment", "the reset")
    store.add_factor(ext, "totp")
    world.run_task("rekey.recovery.poll_enrolments", {})
    world.settle(lambda: state(world, case_id, c.agent) in ("recovered", "closed"), "recovered after enrolment")
