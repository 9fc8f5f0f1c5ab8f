"""Flower, the optional Celery monitor (`rekey run --flower`, docker-compose's `flower` profile):
started with the command `rekey run --flower` uses, against a real worker on a private Redis, its
dashboard and API answer only with basic auth, and its /metrics (open: Flower does not protect
it) counts the worker's task events."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import requests

from app.devserver import optional_commands
from tests.integration.conftest import ManagedProcess, free_port, wait_for, worker_env
from tests.integration.test_devserver import publish_relay

pytestmark = pytest.mark.worker
AUTH = ("ops", "flower-test-password")


def test_flower_needs_basic_auth_and_its_metrics_count_task_events(settings, redis_server, start_worker,
                                                                    tmp_path, monkeypatch):
    worker = start_worker(broker_url=redis_server.url)
    port = free_port()
    monkeypatch.setenv("REKEY_FLOWER_PORT", str(port))
    argv = optional_commands(replace(settings, metrics_bind=""), flower=True)["flower"]
    assert f"--port={port}" in argv and "--address=127.0.0.1" in argv
    env = {**worker_env(settings, broker_url=redis_server.url, instance_dir=tmp_path),
           "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    flower = ManagedProcess("flower", argv, env, tmp_path / "flower.log", "Visit me at")
    flower.start(timeout=60)
    try:
        url = f"http://127.0.0.1:{port}"
        # The dashboard and the API need the basic auth...
        for path in ("/", "/workers", "/api/workers", "/api/tasks"):
            assert requests.get(f"{url}{path}", timeout=10).status_code == 401, path
            assert requests.get(f"{url}{path}", auth=("ops", "wrong"), timeout=10).status_code == 401, path
        assert requests.get(f"{url}/workers", auth=AUTH, timeout=10).status_code == 200
        # ...but Flower serves /metrics (and /healthcheck) to anyone who reaches the port (Flower
        # 2.x does not authenticate them, so a scraper needs no password): hence the loopback bind
        # in `rekey run --flower` and docker-compose (docs/OPERATIONS.md, Flower).
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 200

        task_id = publish_relay(redis_server.url)
        wait_for(lambda: re.search(rf"Task rekey\.outbox\.relay\[{re.escape(task_id)}\] succeeded", worker.log()),
                 timeout=45, what="the worker to run the task")

        def counted() -> bool:
            answer = requests.get(f"{url}/metrics", timeout=10)
            assert answer.status_code == 200
            return any(line.startswith("flower_events_total{") and 'type="task-succeeded"' in line
                       and 'task="rekey.outbox.relay"' in line and float(line.rsplit(" ", 1)[1]) >= 1
                       for line in answer.text.splitlines())

        wait_for(counted, timeout=30, interval=0.5, what="Flower to count the task-succeeded event")
    finally:
        flower.stop()
