"""End-to-end: the runbook's paths over HTTP with a real Celery worker on PostgreSQL and Redis.

The worker is the one tests/integration/conftest.py runs (`celery -A tasks.worker worker`,
the production entry point, in its own process group), with three settings the e2e tests need:
outbound calls allow-listed to 127.0.0.1 (where the fake vendors listen), a 0.2 s retry base and
two retries. It runs the prefork pool, so a test can SIGKILL the pool child that holds a task
and watch the parent reject it back onto the queue.

Each module gets a private `redis-server` as its broker (and an app publishing to it): every
test session on this machine shares Redis db 11, and a worker of another session would take
our tasks and find none of our rows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CeleryWorker, RedisServer, module_app, purge, worker_env
from tests.recovery_steps import World, polled
from tests.services import need

E2E_ENV = {
    "REKEY_OUTBOUND_ALLOWLIST": "127.0.0.1",
    "REKEY_TASK_RETRY_BASE_SECONDS": "0.2",
    "REKEY_TASK_MAX_RETRIES": "2",
}
IDLE_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: Any) -> Iterator[RedisServer]:
    """A private Redis for this module's worker and app."""
    need("redis")
    need("postgres")
    server = RedisServer(tmp_path_factory.mktemp("broker"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def app(settings: Any, database_url: str, broker: RedisServer) -> Iterator[Any]:
    """The application under test, publishing to the private broker (the session's database)."""
    assert database_url.startswith("postgresql")
    with module_app(replace(settings, broker_url=broker.url, redis_url=broker.url)) as application:
        yield application


def start_e2e_worker(settings: Any, broker: RedisServer, workdir: Path, *, concurrency: int = 2) -> CeleryWorker:
    env = {**worker_env(settings, broker_url=broker.url, instance_dir=workdir), **E2E_ENV}
    return CeleryWorker(env, workdir, pool="prefork", concurrency=concurrency).start()


@pytest.fixture(scope="module")
def _e2e_worker(settings: Any, broker: RedisServer, app: Any, tmp_path_factory: Any) -> Iterator[CeleryWorker]:
    handle = start_e2e_worker(settings, broker, tmp_path_factory.mktemp("e2e-worker"))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def worker(_e2e_worker: CeleryWorker) -> CeleryWorker:
    """The module's worker, alive at the start of every test (restarted if a test killed it)."""
    if not _e2e_worker.alive:
        _e2e_worker.restart()
    return _e2e_worker


def broker_idle(broker_url: str) -> bool:
    """Nothing waiting in the queue and nothing delivered but unacknowledged (late acks: a
    task is acknowledged only when it has finished, retries with a countdown included)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        return client.llen("celery") == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def wait_idle(broker_url: str, timeout: float = IDLE_TIMEOUT) -> None:
    """Wait until the worker has finished everything queued (idle on three checks in a row)."""
    deadline, calm = time.monotonic() + timeout, 0
    while calm < 3:
        calm = calm + 1 if broker_idle(broker_url) else 0
        if time.monotonic() > deadline:
            raise AssertionError(f"the worker was still busy after {timeout}s")
        time.sleep(0.05)


def worker_world(client: Any, factory: Any, broker_url: str, *, timeout: float = 20.0,
                 worker: CeleryWorker | None = None) -> World:
    """Requests in this process; every task in the real worker consuming `broker_url`."""

    def run_task(name: str, kwargs: dict[str, Any]) -> None:
        factory.app.extensions["celery"].send_task(name, kwargs=kwargs)
        wait_idle(broker_url)

    @contextmanager
    def paused() -> Iterator[None]:
        assert worker is not None, "this world has no worker of its own to pause"
        wait_idle(broker_url)
        worker.stop()
        try:
            yield
        finally:
            worker.start()

    return World(client, factory, polled(timeout=timeout), run_task, lambda: wait_idle(broker_url),
                 paused=paused, lose_queued=lambda: purge(broker_url))


@pytest.fixture
def world(client: Any, factory: Any, worker: CeleryWorker, broker: RedisServer) -> World:
    """Requests in this process; every task in the real worker."""
    return worker_world(client, factory, broker.url, worker=worker)


@pytest.fixture
def cli_env(settings: Any, broker: RedisServer) -> dict[str, str]:
    """The environment `rekey` runs with against this session's database and broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKEY_") and k != "DATABASE_URL"}
    env.update({"DATABASE_URL": settings.database_url, "REKEY_ENCRYPTION_KEYS": settings.encryption_keys,
                "REKEY_CODE_PEPPER": settings.code_pepper, "REKEY_SECRET_KEY": settings.secret_key,
                "REKEY_BROKER_URL": broker.url, "REKEY_ENV": "test", "REKEY_LOG_LEVEL": "WARNING",
                "REKEY_DEV_OUTBOX": settings.dev_outbox})
    return env
