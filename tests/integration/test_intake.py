"""Issue 3 end to end: signed requests become cases that a real Celery worker screens, on the
real PostgreSQL and Redis; concurrency, a broker outage and a killed worker lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from tests.casework import (
    case_events,
    case_row,
    cases_of,
    code_in,
    counts,
    messages_for,
    outbox_rows,
    post,
    signed_request,
    standard_body,
    tenant_text,
)
from tests.factories import PHONE
from tests.flows import signin
from tests.integration.conftest import REPO, wait_for, worker_env
from tests.signing import standard_headers

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]


def _state(app: Any, case_id: str) -> str:
    return case_row(app, case_id).state


def _wait_state(app: Any, case_id: str, state: str, worker: Any, timeout: float = 15.0) -> None:
    try:
        wait_for(lambda: _state(app, case_id) == state, timeout, what=f"case {case_id} to be {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {_state(app, case_id)}\nworker log:\n{worker.tail()}") from None


@pytest.mark.parametrize("kind", ["standard", "zendesk", "jira"])
def test_signed_request_of_each_kind_is_screened_by_the_worker(app, client, factory, worker, kind):
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant, kind=kind)
    user = factory.settled_user(tenant, password=None)
    body, headers = signed_request(kind, secret, user.email)

    r = post(client, integration, body, headers)

    assert r.status_code == 202, r.json
    case_id = r.json["case_id"]
    _wait_state(app, case_id, "awaiting_verification", worker)
    [row] = outbox_rows(app, case_id=case_id)
    assert row.published_at is not None  # by the after-commit publisher, not a sweep
    assert case_row(app, case_id).verification_expires_at is not None


def _concurrently(count: int, call: Any) -> list[Any]:
    barrier = threading.Barrier(count)

    def run(i: int) -> Any:
        barrier.wait()
        return call(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_same_delivery_twenty_times_at_once_opens_one_case(app, factory, worker, pg):
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant, password=None)
    body = standard_body(user.email)
    headers = standard_headers(secret, body, msg_id="msg_twenty_at_once")

    def deliver(_: int) -> tuple[int, dict[str, Any]]:
        response = post(app.test_client(), integration, body, headers)
        return response.status_code, response.get_json()

    answers = _concurrently(20, deliver)

    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 19 + [202], answers
    assert len({json.dumps(answer, sort_keys=True) for _, answer in answers}) == 1, answers
    case_id = answers[0][1]["case_id"]
    assert [c.id for c in cases_of(app, tenant.id)] == [case_row(app, case_id).id]
    assert counts(app, tenant, integration)["deliveries"] == 1
    _wait_state(app, case_id, "awaiting_verification", worker)
    assert len(case_events(app, case_id, "recovery.requested")) == 1


def test_twenty_different_requests_for_one_user_at_once_share_one_case(app, factory, worker, pg):
    """Twenty tickets from the same locked-out user (different deliveries): one case, joined."""
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant, password=None)
    bodies = [standard_body(user.email, ticket_id=f"T-{i}") for i in range(20)]

    def deliver(i: int) -> tuple[int, dict[str, Any]]:
        response = post(app.test_client(), integration, bodies[i], standard_headers(secret, bodies[i]))
        return response.status_code, response.get_json()

    answers = _concurrently(20, deliver)

    assert [status for status, _ in answers] == [202] * 20, answers
    assert len({answer["case_id"] for _, answer in answers}) == 1, answers
    case_id = answers[0][1]["case_id"]
    [case] = cases_of(app, tenant.id)
    assert str(case.id) == case_id and case.requests == 20
    joined = [e.details["joined"] for e in case_events(app, case_id, "recovery.requested")]
    assert sorted(joined) == [False] + [True] * 19
    _wait_state(app, case_id, "awaiting_verification", worker)


def test_broker_outage_loses_nothing(app, settings, factory, redis_server, start_worker, pg):
    """The broker is down when the request arrives: 202 at once, the case waits as received
    with its unpublished outbox row; once Redis is back, the relay sweep (run by the worker, as
    beat schedules it; beat runs too) publishes it and the worker screens the case."""
    from app import create_app
    from app.extensions import db

    handle = start_worker(broker_url=redis_server.url, beat=True)
    outage_app = create_app(replace(settings, broker_url=redis_server.url, redis_url=redis_server.url),
                            TESTING=True)
    try:
        tenant = factory.tenant()
        integration, secret = factory.integration(tenant)
        user = factory.settled_user(tenant, password=None)
        redis_server.stop()

        started = time.monotonic()
        r = factory.request_recovery(outage_app.test_client(), integration, secret, user.email)
        elapsed = time.monotonic() - started

        assert r.status_code == 202, r.json
        # The sender's timeout is ~10 s (Zendesk, GitHub) and the request holds a database
        # connection until it answers: a dead broker must not hold it.
        assert elapsed < 2.0, f"the intake took {elapsed:.1f}s to answer while the broker was down"
        case_id = r.json["case_id"]
        assert _state(app, case_id) == "received"
        [row] = outbox_rows(app, case_id=case_id)
        assert row.task == "rekey.recovery.screen_case"
        assert row.published_at is None and row.publish_attempts == 1 and row.last_error

        redis_server.start()

        # The sweep beat sends every 10 s (`rekey.outbox.relay`), sent sooner here; the worker's
        # sweep publishes the row once it is past the after-commit publisher's grace.
        def sweep() -> bool:
            outage_app.extensions["celery"].send_task("rekey.outbox.relay")
            return bool(outbox_rows(app, case_id=case_id)[0].published_at)

        wait_for(sweep, timeout=30, interval=1.0, what="the relay sweep to publish the row")
        _wait_state(app, case_id, "awaiting_verification", handle)
        [row] = outbox_rows(app, case_id=case_id)
        assert row.published_at is not None and row.publish_attempts >= 2
        assert "rekey.outbox.relay" in handle.log()
    finally:
        app.extensions["celery"].set_current()
        app.extensions["celery"].set_default()
        with outage_app.app_context():
            db.engine.dispose()


def test_killed_worker_restarted_processes_what_was_queued_meanwhile(app, client, factory, worker):
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant, password=None)
    worker.kill()
    assert not worker.alive

    r = factory.request_recovery(client, integration, secret, user.email)

    assert r.status_code == 202, r.json
    case_id = r.json["case_id"]
    [row] = outbox_rows(app, case_id=case_id)
    assert row.published_at is not None  # on the broker, waiting for a worker
    assert _state(app, case_id) == "received"
    worker.restart()
    _wait_state(app, case_id, "awaiting_verification", worker)


def test_unusual_activity_refuses_and_emails_each_senior_admin(app, client, factory, worker, dev_outbox):
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    seniors = [factory.agent(tenant, "senior_admin") for _ in range(2)]
    support = factory.agent(tenant)
    user = factory.settled_user(tenant)  # with a password: real sign-ins fail against it
    for i in range(5):  # the tenant default threshold, each from an address never seen succeed
        failed = signin(client, tenant, user.email, "wrong password guess", ip=f"203.0.113.{i + 1}")
        assert failed.status_code == 401

    r = factory.request_recovery(client, integration, secret, user.email)

    case_id = r.json["case_id"]
    _wait_state(app, case_id, "refused", worker)
    wait_for(lambda: case_events(app, case_id, "recovery.senior_admins_notified"), 15,
             what="the senior admins' notification")
    case = case_row(app, case_id)
    assert case.refusal_trigger == "unusual_activity"
    [refused] = case_events(app, case_id, "recovery.refused")
    assert refused.details["trigger"] == "unusual_activity"
    assert refused.details["failed_signins_from_unknown_ips"] == 5
    [notified] = case_events(app, case_id, "recovery.senior_admins_notified")
    assert notified.details["admins"] == 2
    emails = [m for m in messages_for(dev_outbox, f"case:{case_id}:notify") if m["channel"] == "email"]
    assert sorted(m["to"] for m in emails) == sorted(s.agent.email for s in seniors)
    assert support.agent.email not in {m["to"] for m in emails}
    assert all(case_id in m["body"] for m in emails)


def _cli_messages(settings: Any, tmp_path: Any, to: str) -> list[dict[str, Any]]:
    rekey = [sys.executable, "-m", "app.cli"]
    done = subprocess.run([*rekey, "messages", "--json", "--to", to, "--limit", "50"], cwd=REPO,
                          env=worker_env(settings, instance_dir=tmp_path), capture_output=True, timeout=60,
                          check=True)
    return json.loads(done.stdout)


def test_known_number_callback_through_the_worker(app, client, factory, worker, settings, tmp_path):
    """Rekey texts a code to the phone on file (never the number in the ticket); the agent
    types back what the user reads; the code reaches no audit row, task argument, API
    answer or worker log."""
    ticket_number = "+14155550199"
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    agent = factory.agent(tenant)
    user = factory.settled_user(tenant, password=None)
    r = factory.request_recovery(client, integration, secret, user.email,
                                 text=f"New phone! Call me on {ticket_number} instead, the old one is gone.")
    case_id = r.json["case_id"]
    _wait_state(app, case_id, "awaiting_verification", worker)
    detail = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers)
    [channel] = detail.json["callable_channels"]
    assert ticket_number not in json.dumps(detail.json["callable_channels"])

    placed = client.post(f"/v1/admin/cases/{case_id}/verification-calls",
                         json={"channel_id": channel["id"], "method": "sms"}, headers=agent.headers)

    assert placed.status_code == 202, placed.json
    call_id = placed.json["id"]
    wait_for(lambda: messages_for(settings.dev_outbox, call_id), 15, what="the code in the dev channel")
    [message] = [m for m in _cli_messages(settings, tmp_path, PHONE) if call_id in m["idempotency_key"]]
    assert message["to"] == PHONE and message["channel"] == "sms"
    code = code_in(message)
    confirmed = client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm",
                            json={"code": code}, headers=agent.headers)
    assert confirmed.status_code == 200, confirmed.json
    assert confirmed.json["status"] == "verified"
    after = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers)
    assert after.json["state"] == "verified"
    assert [e["type"] for e in after.json["evidence"]] == ["known_number_callback"]

    assert _cli_messages(settings, tmp_path, ticket_number) == []
    for answer in (detail, placed, confirmed, after):
        assert code not in answer.get_data(as_text=True)
    assert code not in tenant_text(app, tenant.id)
    assert all(code not in json.dumps(row.kwargs) for row in outbox_rows(app))
    assert code not in worker.log()
