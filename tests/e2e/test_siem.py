"""The SIEM sink down for a while: audit events are forwarded later, none lost, none doubled.

A real worker forwards each event (`rekey.audit.forward`) to a local receiver that checks the
Standard Webhooks signature. A short outage is ridden out by retries with backoff; a long one
ends in dead letters that `rekey dlq retry` delivers once the sink is back.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

import pytest
from sqlalchemy import select

from integrations.fakes.callbacks import CallbackReceiver
from tests.e2e.conftest import E2E_ENV, wait_idle
from tests.integration.conftest import CeleryWorker, worker_env

SIEM_SECRET = "whsec_" + base64.b64encode(b"siem-test-secret-32-bytes-long!!").decode()
pytestmark = pytest.mark.worker


@pytest.fixture
def sink():
    with CallbackReceiver(SIEM_SECRET, path="/siem") as receiver:
        yield receiver


@pytest.fixture
def siem(settings, broker, sink, tmp_path):
    """An app and a worker that forward every audit event to the sink."""
    from app import create_app
    from app.extensions import db

    app = create_app(replace(settings, broker_url=broker.url, redis_url=broker.url,
                             siem_url=sink.callback_url, siem_secret=SIEM_SECRET), TESTING=True)
    env = {**worker_env(settings, broker_url=broker.url, instance_dir=tmp_path), **E2E_ENV,
           "REKEY_SIEM_URL": sink.callback_url, "REKEY_SIEM_SECRET": SIEM_SECRET}
    worker = CeleryWorker(env, tmp_path, pool="prefork", concurrency=2).start()
    try:
        yield app, env
    finally:
        worker.stop()
        with app.app_context():
            db.engine.dispose()


def _tenant_event_ids(app, tenant_id) -> set[str]:
    from app.audit.models import AuditEvent
    from app.extensions import db

    with app.app_context():
        ids = {str(i) for i in db.session.scalars(select(AuditEvent.id).where(AuditEvent.tenant_id == tenant_id))}
        db.session.rollback()
        return ids


def _delivered(sink) -> Counter[str]:
    return Counter(d["data"]["id"] for d in sink.deliveries)


def _notes(app, factory, count: int):
    factory.app = app
    tenant = factory.tenant()
    agent = factory.agent(tenant)
    user = factory.settled_user(tenant)
    client = app.test_client()
    for i in range(count):
        answer = client.post(f"/v1/admin/users/{user.id}/notes", json={"body": f"Called the user back, note {i}"},
                             headers=agent.headers)
        assert answer.status_code == 201, answer.json
    return tenant


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_short_outage_forwards_every_event_once_after_backoff(siem, sink, broker, factory):
    app, _env = siem
    sink.script([500, 503, 500])  # down for the first three requests, then back
    tenant = _notes(app, factory, 3)
    expected = _tenant_event_ids(app, tenant.id)
    _wait_for(lambda: expected <= set(_delivered(sink)))
    wait_idle(broker.url)
    delivered = _delivered(sink)
    assert {k: v for k, v in delivered.items() if k in expected} == dict.fromkeys(expected, 1)
    failed = [r for r in sink.requests if r.path == "/siem"]
    assert len(failed) == len(expected) + 3  # three refused attempts, then one delivery each


def test_long_outage_dead_letters_then_dlq_retry_delivers_once(siem, sink, broker, factory):
    from app.extensions import db
    from app.jobs.models import DeadLetter

    app, env = siem
    started = time.time()
    sink.script([500] * 200)  # down longer than every retry
    tenant = _notes(app, factory, 2)
    expected = _tenant_event_ids(app, tenant.id)

    def parked() -> list[str]:
        with app.app_context():
            rows = [str(r.id) for r in db.session.scalars(
                select(DeadLetter).where(DeadLetter.task == "rekey.audit.forward"))
                if r.kwargs.get("event_id") in expected and r.retried_at is None]
            db.session.rollback()
            return rows

    _wait_for(lambda: len(parked()) == len(expected), timeout=60)
    assert not set(_delivered(sink)) & expected  # nothing got through, nothing is lost either
    with sink._lock:
        sink._script.clear()  # the sink is back
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("REKEY_") and k != "DATABASE_URL"}
    cli_env.update({k: v for k, v in env.items() if k.startswith("REKEY_") or k == "DATABASE_URL"})
    cli_seconds = 0.0  # each `rekey dlq retry` is a whole Python process: its start-up is not backoff
    for dead_letter_id in parked():
        cli_started = time.time()
        done = subprocess.run([sys.executable, "-m", "app.cli", "dlq", "retry", dead_letter_id, "--json"],
                              env=cli_env, capture_output=True, text=True, timeout=60)
        cli_seconds += time.time() - cli_started
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["task"] == "rekey.audit.forward"
    _wait_for(lambda: expected <= set(_delivered(sink)), timeout=60)
    wait_idle(broker.url)
    delivered = _delivered(sink)
    assert {k: v for k, v in delivered.items() if k in expected} == dict.fromkeys(expected, 1)
    # The retries' own budget; on a loaded machine (make test: two xdist workers) the CLI processes'
    # start-up alone took over 20 s, so it is left out.
    assert time.time() - started - cli_seconds < 90
