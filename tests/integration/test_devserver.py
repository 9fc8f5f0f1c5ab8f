"""`rekey run` as a developer runs it: a real subprocess with web, worker and beat, on each
broker it can choose; every wait is bounded and nothing may outlive it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.config import Settings
from app.devserver import Supervisor, choose_broker, free_port, redacted
from tests.conftest import BROKER_REDIS_DB
from tests.services import REDIS_BASE_URL, need

pytestmark = pytest.mark.worker

REKEY = str(Path(sys.executable).parent / "rekey")
# This worker's own Redis database (REKEY_TEST_REDIS_DB + the xdist worker number), flushed first:
# a developer's db 0 and another worker's or session's queue are never touched.
DEVSERVER_REDIS_DB = BROKER_REDIS_DB
READY_TIMEOUT = 60.0
TASK_TIMEOUT = 45.0
STOP_TIMEOUT = 40.0


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def path_without(executable: str) -> str:
    """PATH with every directory that holds `executable` left out."""
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / executable).exists()]
    return os.pathsep.join(kept)


def closed_redis_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


def live_processes_in_groups(pgids: set[int]) -> list[str]:
    """Processes still running (zombies aside) in any of these process groups."""
    listing = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat=,args="], capture_output=True,
                             text=True, check=True, timeout=10).stdout
    alive = []
    for line in listing.splitlines():
        pid, pgid, stat, *args = line.split(None, 3)
        if int(pgid) in pgids and not stat.startswith("Z"):
            alive.append(f"{pid} {stat} {' '.join(args)}")
    return alive


def publish_relay(broker: str) -> str:
    """Send one `rekey.outbox.relay` with a known id, as the outbox would; returns the id."""
    from celery import Celery

    task_id = f"devserver-test-{uuid.uuid4()}"
    publisher = Celery("devserver-test", broker=broker, set_as_current=False)
    try:
        publisher.send_task("rekey.outbox.relay", task_id=task_id)
    finally:
        publisher.close()
    return task_id


class Runner:
    """`rekey run` in a subprocess, its output in a file the test reads."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.instance = tmp_path / "instance"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "rekey-run.log"
        inherited = {"REKEY_BROKER_URL", "REKEY_PUBLIC_URL"}
        full_env = {k: v for k, v in os.environ.items() if k not in inherited}
        full_env.update({
            "REKEY_ENV": "development",
            "REKEY_INSTANCE_DIR": str(self.instance),
            "DATABASE_URL": f"sqlite:///{self.instance / 'rekey.sqlite3'}",
            "REKEY_HOST": "127.0.0.1",
            "REKEY_PORT": str(self.port),
            "REKEY_LOG_LEVEL": "INFO",
        })
        full_env.update(env)
        self.started_at = time.monotonic()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([REKEY, "run"], env=full_env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def assert_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"rekey run exited ({self.process.returncode}):\n{self.output()}")

    def wait_for_line(self, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            self.assert_running()
            return re.search(pattern, self.output(), re.MULTILINE)

        return wait_until(found, timeout, f"{pattern!r} in the output of rekey run")  # type: ignore[no-any-return]

    def child_pids(self) -> dict[str, int]:
        line = self.wait_for_line(r"^rekey run: started (.*);").group(1)
        return {name: int(pid) for name, pid in re.findall(r"(\w+) pid=(\d+)", line)}

    def wait_ready(self) -> float:
        """Seconds from start until /readyz answered 200."""

        def ready() -> bool:
            self.assert_running()
            try:
                return requests.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, READY_TIMEOUT, f"{self.url}/readyz to answer 200", interval=0.5)
        return time.monotonic() - self.started_at

    def wait_task_ran(self, task_id: str) -> None:
        ran = rf"^worker \| Task rekey\.outbox\.relay\[{re.escape(task_id)}\] succeeded"
        self.wait_for_line(ran, TASK_TIMEOUT)

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=STOP_TIMEOUT)

    def cleanup(self) -> None:
        """After a failed test: never leave a runner or its children behind."""
        pids = set()
        if self.log.exists():
            pids = {int(p) for p in re.findall(r"\bpid=(\d+)", self.output())}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def start_runner(tmp_path: Path) -> Iterator[Callable[..., Runner]]:
    runners: list[Runner] = []

    def start(**env: str) -> Runner:
        runner = Runner(tmp_path, **env)
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.cleanup()


def assert_stops_cleanly(runner: Runner, pids: dict[str, int]) -> None:
    started = time.monotonic()
    assert runner.stop(signal.SIGINT) == 0, runner.output()
    assert "rekey run: stopped" in runner.output()
    assert time.monotonic() - started < STOP_TIMEOUT
    leftovers = live_processes_in_groups(set(pids.values()))
    assert leftovers == [], f"processes outlived rekey run: {leftovers}"
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


class TestRunOnRedis:
    def test_run_on_redis_url_serves_runs_tasks_and_stops_on_sigint(self, start_runner):
        need("redis")
        import redis

        broker = f"{REDIS_BASE_URL}/{DEVSERVER_REDIS_DB}"
        redis.Redis.from_url(broker).flushdb()
        runner = start_runner(REDIS_URL=broker)

        seconds = runner.wait_ready()
        print(f"rekey run on Redis at REDIS_URL: /readyz 200 after {seconds:.1f} s")
        out = runner.output()
        assert f"rekey run: broker: {redacted(broker)} (Redis at REDIS_URL answered PING)" in out
        assert f"rekey run: database: sqlite:///{runner.instance / 'rekey.sqlite3'}" in out
        assert f"rekey run: web: http://localhost:{runner.port}" in out
        assert f"rekey run: pages: http://localhost:{runner.port}/t/<tenant>/" in out
        assert f"rekey run: sign-in page: http://localhost:{runner.port}/t/<tenant>/signin" in out
        pids = runner.child_pids()
        assert set(pids) == {"web", "worker", "beat"}

        runner.wait_for_line(r"^worker \| .*ready\.$")
        runner.wait_task_ran(publish_relay(broker))
        assert_stops_cleanly(runner, pids)

    @pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")
    def test_run_starts_its_own_redis_server_when_redis_url_is_silent(self, start_runner):
        runner = start_runner(REDIS_URL=closed_redis_url())

        seconds = runner.wait_ready()
        print(f"rekey run with its own redis-server: /readyz 200 after {seconds:.1f} s")
        announced = r"^rekey run: broker: (redis://127\.0\.0\.1:\d+/0) \(started "
        broker = runner.wait_for_line(announced).group(1)
        assert broker != f"{REDIS_BASE_URL}/0"
        pids = runner.child_pids()
        assert set(pids) == {"redis", "web", "worker", "beat"}
        assert (runner.instance / "redis").is_dir()

        runner.wait_for_line(r"^worker \| .*ready\.$")
        runner.wait_task_ran(publish_relay(broker))
        assert_stops_cleanly(runner, pids)


class TestRunEmbedded:
    def embedded(self, start_runner: Callable[..., Runner]) -> Runner:
        return start_runner(REDIS_URL=closed_redis_url(), PATH=path_without("redis-server"))

    def test_run_without_redis_uses_the_embedded_broker_end_to_end(self, start_runner):
        runner = self.embedded(start_runner)

        seconds = runner.wait_ready()
        print(f"rekey run on the embedded broker: /readyz 200 after {seconds:.1f} s")
        broker = f"sqla+sqlite:///{runner.instance / 'broker.sqlite3'}"
        assert f"rekey run: broker: {broker} (embedded:" in runner.output()
        pids = runner.child_pids()
        assert set(pids) == {"web", "worker", "beat"}

        # The worker consumes what another process published, and what beat scheduled.
        runner.wait_for_line(r"^worker \| .*ready\.$")
        ours = publish_relay(broker)
        runner.wait_task_ran(ours)
        runner.wait_for_line(r"^beat +\| Scheduler: Sending due task relay-outbox", TASK_TIMEOUT)
        not_ours = rf"(?!{re.escape(ours)}\])"
        another = rf"^worker \| Task rekey\.outbox\.relay\[{not_ours}[^\]]+\] succeeded"
        runner.wait_for_line(another, TASK_TIMEOUT)
        assert_stops_cleanly(runner, pids)

    def test_a_child_dying_stops_the_rest_and_fails(self, start_runner):
        runner = self.embedded(start_runner)
        runner.wait_ready()
        runner.wait_for_line(r"^worker \| .*ready\.$")
        pids = runner.child_pids()

        os.kill(pids["worker"], signal.SIGKILL)  # its pool processes are orphaned: they must go too

        assert runner.process.wait(timeout=STOP_TIMEOUT) == 1
        assert re.search(rf"worker \(pid {pids['worker']}\) exited unexpectedly", runner.output())
        assert live_processes_in_groups(set(pids.values())) == []

    def test_run_refuses_a_port_in_use(self, start_runner):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            runner = start_runner(REKEY_PORT=str(taken.getsockname()[1]),
                                  REDIS_URL=closed_redis_url(), PATH=path_without("redis-server"))
            assert runner.process.wait(timeout=STOP_TIMEOUT) == 2
        assert "it is in use" in runner.output()
        assert "started" not in runner.output()


class TestBrokerChoice:
    def test_rekey_broker_url_wins_without_probing(self, tmp_path):
        settings = Settings(broker_url="redis://:s3cret@broker.invalid:6379/3",
                            redis_url=closed_redis_url())

        broker = choose_broker(settings, tmp_path, Supervisor(), {"PATH": ""})

        assert (broker.url, broker.why) == (settings.broker_url, "REKEY_BROKER_URL")

    def test_no_redis_and_no_redis_server_means_embedded(self, tmp_path):
        settings = Settings(broker_url="", redis_url=closed_redis_url())

        broker = choose_broker(settings, tmp_path, Supervisor(), {"PATH": str(tmp_path)})

        assert broker.url == f"sqla+sqlite:///{tmp_path.resolve() / 'broker.sqlite3'}"

    def test_redacted_hides_only_the_password(self):
        assert redacted("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
        assert redacted("postgresql+psycopg://rekey:pw@db/rekey") == "postgresql+psycopg://rekey:***@db/rekey"
        assert redacted("sqlite:////tmp/x.sqlite3") == "sqlite:////tmp/x.sqlite3"
