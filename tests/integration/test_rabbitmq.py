"""RabbitMQ as the broker (REKEY_BROKER_URL=amqp://...), with quorum queues, on a PRIVATE node
started here (its own port and data folder; the shared node on :5672 is never touched): the worker
kill, broker restart and duplicate delivery cases the Redis tests prove, and two workers with
different node names consuming one queue: no duplicate effect, no lost case. Retries with a
countdown go through Celery's native delayed delivery (quorum queues have no ETA holding)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from tests.casework import case_events, case_row, cases_of, outbox_rows, post, standard_body
from tests.integration.conftest import CeleryWorker, module_app, wait_for
from tests.integration.rabbitmq import RabbitMQServer, need_rabbitmq
from tests.services import need
from tests.signing import standard_headers

pytestmark = [pytest.mark.worker, pytest.mark.postgres]
SCREENED = "recovery.screened"


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitMQServer]:
    need_rabbitmq()
    need("postgres")
    server = RabbitMQServer()
    server.start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture(scope="module")
def rabbit_app(settings: Any, database_url: str, rabbit: RabbitMQServer) -> Iterator[Any]:
    """The application publishing to the private RabbitMQ node (the session's database)."""
    assert database_url.startswith("postgresql")
    with module_app(replace(settings, broker_url=rabbit.url)) as application:
        yield application


@pytest.fixture
def rabbit_worker(start_worker: Any, rabbit: RabbitMQServer, rabbit_app: Any) -> Any:
    def start(**kw: Any) -> CeleryWorker:
        if not rabbit.running:
            rabbit.start()
        return start_worker(broker_url=rabbit.url, **kw)

    return start


def state(app: Any, case_id: str) -> str:
    return case_row(app, case_id).state


def wait_state(app: Any, case_id: str, wanted: str, *workers: CeleryWorker, timeout: float = 45.0) -> None:
    try:
        wait_for(lambda: state(app, case_id) == wanted, timeout, interval=0.25, what=f"case {case_id} {wanted}")
    except AssertionError as exc:
        logs = "\n".join(w.tail() for w in workers)
        raise AssertionError(f"{exc}; it is {state(app, case_id)}\n{logs}") from None


def test_the_default_queue_is_a_quorum_queue_and_a_countdown_uses_native_delayed_delivery(rabbit, rabbit_app,
                                                                                            rabbit_worker):
    worker = rabbit_worker()
    types = rabbit.queue_types()
    assert types.get("celery") == "quorum", types
    assert any(name.startswith("celery_delayed_") for name in types), types

    sent = time.monotonic()
    result = rabbit_app.extensions["celery"].send_task("rekey.ops.heartbeat", countdown=3)
    ran = wait_for(lambda: re.search(rf"Task rekey\.ops\.heartbeat\[{result.id}\] succeeded", worker.log()),
                   timeout=45, what="the delayed task to run")
    assert ran and time.monotonic() - sent >= 2.5, "the countdown was not honoured"


def test_two_workers_one_quorum_queue_every_case_once(app, rabbit_app, factory, rabbit_worker, rabbit):
    """Two workers (different node names, prefork) consume one queue; 12 users' requests, each
    delivered twice at once, and every screening task published a second time (a duplicate
    delivery): 12 cases, each screened exactly once."""
    workers = [rabbit_worker(pool="prefork", concurrency=2) for _ in range(2)]
    assert workers[0].hostname != workers[1].hostname
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    users = [factory.settled_user(tenant, password=None) for _ in range(12)]
    bodies = [standard_body(u.email, ticket_id=f"T-{i}") for i, u in enumerate(users)]

    def deliver(i: int) -> Any:
        body = bodies[i % len(bodies)]
        answer = post(rabbit_app.test_client(), integration, body, standard_headers(secret, body))
        return answer.status_code, answer.get_json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(deliver, range(2 * len(bodies))))
    # A copy that arrives while its twin is mid-transaction may be told 409 (retry later).
    assert {status for status, _ in answers} <= {200, 202, 409}, answers
    case_ids = {answer["case_id"] for status, answer in answers if status in (200, 202)}
    assert len(case_ids) == len(users)
    celery = rabbit_app.extensions["celery"]
    for case_id in case_ids:
        [row] = [r for r in outbox_rows(app, case_id=case_id) if r.task == "rekey.recovery.screen_case"]
        celery.send_task(row.task, kwargs=row.kwargs)  # the same task delivered again

    for case_id in case_ids:
        wait_state(app, case_id, "awaiting_verification", *workers)
    time.sleep(2)  # let the duplicates finish too
    assert len(cases_of(app, tenant.id)) == len(users)
    for case_id in case_ids:
        assert len(case_events(app, case_id, SCREENED)) == 1, case_id
    ran = [len(re.findall(r"Task rekey\.recovery\.screen_case\[[^\]]+\] succeeded", w.log())) for w in workers]
    assert sum(ran) == 2 * len(users), ran  # every copy ran (the second changed nothing)
    assert all(ran), f"one worker took nothing from the shared queue: {ran}"


def test_worker_sigkilled_then_restarted_processes_what_was_queued(app, rabbit_app, factory, rabbit_worker):
    worker = rabbit_worker(pool="prefork", concurrency=1)
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    user = factory.settled_user(tenant, password=None)
    worker.kill()

    answer = factory.request_recovery(rabbit_app.test_client(), integration, secret, user.email)
    assert answer.status_code == 202, answer.get_json()
    case_id = answer.get_json()["case_id"]
    [row] = outbox_rows(app, case_id=case_id)
    assert row.published_at is not None  # in RabbitMQ's quorum queue, waiting for a worker
    assert state(app, case_id) == "received"
    worker.restart()
    wait_state(app, case_id, "awaiting_verification", worker)
    assert len(case_events(app, case_id, SCREENED)) == 1


def test_broker_restart_loses_nothing(app, rabbit_app, factory, rabbit_worker, rabbit):
    """The node is down when the request arrives: 202 at once, the row waits unpublished; the
    node comes back (same data folder), the relay sweep publishes it, the worker (reconnected)
    screens the case; a message already in the quorum queue before the restart is not lost."""
    worker = rabbit_worker(pool="prefork", concurrency=1)
    tenant = factory.tenant()
    integration, secret = factory.integration(tenant)
    first, second = (factory.settled_user(tenant, password=None) for _ in range(2))
    worker.stop()  # nobody consumes: the first request's task sits in the queue across the restart
    queued = factory.request_recovery(rabbit_app.test_client(), integration, secret, first.email)
    assert queued.status_code == 202
    rabbit.stop()

    started = time.monotonic()
    answer = factory.request_recovery(rabbit_app.test_client(), integration, secret, second.email)
    elapsed = time.monotonic() - started
    assert answer.status_code == 202, answer.get_json()
    assert elapsed < 5.0, f"the intake took {elapsed:.1f}s with the broker down"
    case_id = answer.get_json()["case_id"]
    [row] = outbox_rows(app, case_id=case_id)
    assert row.published_at is None and row.last_error

    rabbit.start()
    worker.start()
    celery = rabbit_app.extensions["celery"]

    def sweep() -> bool:
        try:
            celery.send_task("rekey.outbox.relay")
        except Exception:  # noqa: BLE001  (the app's pooled connection to the old node)
            return False
        return bool(outbox_rows(app, case_id=case_id)[0].published_at)

    wait_for(sweep, timeout=60, interval=1.0, what="the relay sweep to publish the row")
    wait_state(app, queued.get_json()["case_id"], "awaiting_verification", worker)
    wait_state(app, case_id, "awaiting_verification", worker)
    assert len(case_events(app, case_id, SCREENED)) == 1
