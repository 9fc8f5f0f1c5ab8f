"""The acceptance of issue 12's metrics: after `rekey demo` against a real `rekey run` (web, a
prefork worker and beat, in multiprocess mode), `/metrics` adds up every process's samples and
shows non-zero counters for the demo's webhook, its tasks and its audit events; `rekey status`
reads the same state."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.integration.test_demo import demo, embedded_runner
from tests.integration.test_devserver import (  # noqa: F401  (start_runner is a fixture)
    REKEY,
    Runner,
    closed_redis_url,
    path_without,
    start_runner,
    wait_until,
)

pytestmark = pytest.mark.worker
TOKEN = "demo-metrics-token"


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    found = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not re.match(rf"{re.escape(name)}(\{{| )", line):
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', line.rsplit(" ", 1)[0]))
        if all(have.get(k) == v for k, v in labels.items()):
            found += float(line.rsplit(" ", 1)[1])
    return found


def scrape(runner: Runner, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{runner.url}/metrics", headers=headers, timeout=10)


def rekey(runner: Runner, *args: str) -> subprocess.CompletedProcess[str]:
    """A `rekey` command with the database and broker of `rekey run`."""
    env = {k: v for k, v in os.environ.items() if k not in ("REKEY_BROKER_URL", "REKEY_PUBLIC_URL")}
    env.update({"REKEY_ENV": "development", "REKEY_INSTANCE_DIR": str(runner.instance),
                "DATABASE_URL": f"sqlite:///{runner.instance / 'rekey.sqlite3'}"})
    broker = re.search(r"^rekey run: broker: (\S+)", runner.output(), re.MULTILINE)
    assert broker
    env["REKEY_BROKER_URL"] = broker.group(1)
    return subprocess.run([REKEY, *args], env=env, cwd=runner.instance.parent, capture_output=True, text=True,
                          timeout=60)


def status(runner: Runner) -> dict:
    done = rekey(runner, "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_after_the_demo_metrics_add_up_web_and_worker_processes(start_runner):  # noqa: F811
    runner = embedded_runner(lambda **env: start_runner(**env, REKEY_METRICS_TOKEN=TOKEN))
    multiproc = Path(re.search(r"^rekey run: metrics: (\S+) \(PROMETHEUS_MULTIPROC_DIR\)", runner.output(),
                               re.MULTILINE).group(1))
    assert multiproc == runner.instance / "prometheus"
    assert scrape(runner, token=None).status_code == 401
    assert scrape(runner, token="wrong").status_code == 401

    done = demo(runner)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    answer = scrape(runner)
    assert answer.status_code == 200
    text = answer.text
    assert total(text, "rekey_webhook_deliveries_total", kind="standard", outcome="accepted") >= 1
    # Tasks ran in the worker's pool processes, not in the web process that answers: multiprocess.
    assert total(text, "rekey_task_runs_total", outcome="success") >= 1
    assert total(text, "rekey_task_runs_total", task="rekey.recovery.screen_case", outcome="success") >= 1
    assert total(text, "rekey_task_duration_seconds_count") >= 1
    assert total(text, "rekey_audit_events_total", action="recovery.requested") >= 1
    assert total(text, "rekey_audit_events_total", action="recovery.closed") >= 1
    assert total(text, "rekey_cases", state="closed") >= 1
    assert total(text, "rekey_http_request_duration_seconds_count", route="/v1/webhooks/<integration_id>") >= 1
    worker_files = [p.name for p in multiproc.glob("*.db")]
    assert len({re.sub(r"\D", "", name) for name in worker_files}) >= 2, worker_files  # several pids wrote

    assert total(text, "rekey_audit_chain_verification_ok") == -1  # never verified yet
    verified = rekey(runner, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert total(scrape(runner).text, "rekey_audit_chain_verification_ok") == 1

    # `rekey status` reads the same state (the beat heartbeat arrives within its 30 s period).
    found = wait_until(lambda: (s := status(runner))["beat"]["last_heartbeat_at"] and s, 60, "a beat heartbeat")
    assert found["cases_by_state"].get("closed", 0) >= 1
    assert found["dead_letters"]["open"] == 0
    assert found["audit_verification"]["ok"] is True and found["audit_verification"]["broken"] == 0
    assert found["queue"]["error"] is None, found["queue"]
    assert total(scrape(runner).text, "rekey_beat_heartbeat_timestamp_seconds") > 0
