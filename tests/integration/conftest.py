"""A real Celery worker (and beat, when a test needs it) for the integration tests.

The worker is `celery -A tasks.worker worker`, the production entry point, run as a
subprocess whose environment points at this session's database, broker and dev channel with
the test settings of tests/conftest.py. It is started ready (its log says so), and stopped at
the end whatever happened: each process runs in its own process group, so even a SIGKILL of
the parent leaves no pool child behind.

Fixtures:
- `worker`: the worker on the session broker (Redis db 11, or $REKEY_TEST_REDIS_DB), shared by a module; the queue is
  purged when it starts, and a test that killed it gets it restarted.
- `start_worker(broker_url=..., beat=..., pool=..., concurrency=...)`: a private worker (for
  example on a private `redis_server`), stopped when the test ends.
- `redis_server`: a throwaway `redis-server` on a free port, no persistence; `.stop()` and
  `.start()` simulate a broker outage on the same address.
Helpers: `wait_for(predicate, timeout)`, `worker_env(...)`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.services import need

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.1,
             what: str | None = None) -> T:
    """Poll `predicate` until it returns something truthy (returned); AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _celery_command() -> list[str]:
    beside = Path(sys.executable).with_name("celery")  # .venv/bin/celery under .venv/bin/pytest
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "celery"]


def worker_env(settings: Any, *, broker_url: str | None = None, instance_dir: Path) -> dict[str, str]:
    """The environment of a worker process: the test session's settings, as variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REKEY_", "CELERY_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    broker = broker_url or settings.broker_url
    env.update({
        "DATABASE_URL": settings.database_url,
        "REKEY_BROKER_URL": broker,
        "REDIS_URL": broker,
        "REKEY_ENCRYPTION_KEYS": settings.encryption_keys,
        "REKEY_CODE_PEPPER": settings.code_pepper,
        "REKEY_SECRET_KEY": settings.secret_key,
        "REKEY_DEV_OUTBOX": settings.dev_outbox,
        "REKEY_ENV": "test",
        "REKEY_PHONE_CHANNEL": "dev",
        "REKEY_EMAIL_CHANNEL": "dev",
        "REKEY_LOG_LEVEL": "INFO",
        "REKEY_INSTANCE_DIR": str(instance_dir),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    })
    return env


class ManagedProcess:
    """A subprocess in its own process group, logging to a file, ready when `marker` appears."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, marker: str):
        self.name, self.argv, self.env, self.log_path, self.marker = name, argv, env, log_path, marker
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        self._log_offset = self.log_path.stat().st_size
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.marker not in self.log(since_start=True):
            if not self.alive:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was "
                                   f"ready:\n{self.tail()}")
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.tail()}")
            time.sleep(0.05)

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)  # the group: prefork children and all

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it has not exited within `timeout`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        self._signal_group(signal.SIGKILL)  # a pool child that outlived its parent

    def kill(self) -> None:
        """SIGKILL the whole process group, as an OOM kill or a lost machine would."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(5)

    def log(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as handle:
            if since_start:
                handle.seek(self._log_offset)
            return handle.read().decode("utf-8", "replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class CeleryWorker:
    """Handle on a running worker (and its beat, if any): `stop`, `kill`, `restart`, `log`."""

    def __init__(self, env: dict[str, str], workdir: Path, *, pool: str = "solo",
                 concurrency: int | None = None, beat: bool = False):
        self.env, self.workdir = env, workdir
        self.broker_url = env["REKEY_BROKER_URL"]
        self.hostname = f"rekey-test-{uuid.uuid4().hex[:8]}@%h"
        argv = [*_celery_command(), "-A", "tasks.worker", "worker", f"--pool={pool}", "--loglevel=INFO",
                "-n", self.hostname, "--without-gossip", "--without-mingle", "--without-heartbeat"]
        if concurrency:
            argv.append(f"--concurrency={concurrency}")
        self.worker = ManagedProcess("celery worker", argv, env, workdir / "worker.log", " ready.")
        self.beat: ManagedProcess | None = None
        if beat:
            self.beat = ManagedProcess(
                "celery beat",
                [*_celery_command(), "-A", "tasks.worker", "beat", "--loglevel=INFO",
                 "-s", str(workdir / "celerybeat-schedule"), "--pidfile="],
                env, workdir / "beat.log", "beat: Starting")

    @property
    def alive(self) -> bool:
        return self.worker.alive

    def start(self) -> CeleryWorker:
        self.worker.start()
        if self.beat is not None:
            self.beat.start()
        return self

    def stop(self) -> None:
        """Stop beat and the worker (warm, then SIGKILL if need be)."""
        if self.beat is not None:
            self.beat.stop()
        self.worker.stop()

    def kill(self) -> None:
        """SIGKILL the worker (beat, if any, keeps running)."""
        self.worker.kill()

    def restart(self) -> CeleryWorker:
        """Stop the worker if it still runs, then start it again with the same settings."""
        self.worker.stop()
        self.worker.start()
        return self

    def log(self) -> str:
        return self.worker.log() + (self.beat.log() if self.beat else "")

    def tail(self, lines: int = 40) -> str:
        return self.worker.tail(lines)


@contextlib.contextmanager
def module_app(settings: Any) -> Iterator[Any]:
    """An application of its own for a module that needs other settings than the session's
    (another broker, another public URL); the session's Celery app is current again after."""
    from celery import _state

    from app import create_app
    from app.extensions import db

    previous = _state.default_app
    application = create_app(settings, TESTING=True)
    try:
        yield application
    finally:
        if previous is not None:
            previous.set_current()
            previous.set_default()
        with application.app_context():
            db.engine.dispose()


def _need_services() -> None:
    need("redis")
    need("postgres")


def purge(broker_url: str) -> None:
    """Drop every message waiting in the default queue of this broker (Redis)."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        for key in client.scan_iter(match="celery*"):
            if client.type(key) == b"list":
                client.delete(key)
    finally:
        client.close()


@pytest.fixture(scope="module")
def _module_worker(settings: Any, database_url: str, tmp_path_factory: Any) -> Iterator[CeleryWorker]:
    _need_services()
    assert database_url.startswith("postgresql")
    workdir = tmp_path_factory.mktemp("worker")
    purge(settings.broker_url)  # messages from unit tests, published with nobody consuming
    handle = CeleryWorker(worker_env(settings, instance_dir=workdir), workdir)
    try:
        handle.start()
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def worker(_module_worker: CeleryWorker) -> CeleryWorker:
    """The worker on the session broker and database, alive at the start of every test."""
    if not _module_worker.alive:
        _module_worker.restart()
    return _module_worker


@pytest.fixture
def start_worker(settings: Any, tmp_path: Path) -> Iterator[Callable[..., CeleryWorker]]:
    """Start a private worker (optionally with beat); every one is stopped when the test ends."""
    started: list[CeleryWorker] = []

    def start(*, broker_url: str | None = None, beat: bool = False, pool: str = "solo",
              concurrency: int | None = None) -> CeleryWorker:
        _need_services()
        workdir = tmp_path / f"worker-{len(started)}"
        workdir.mkdir()
        handle = CeleryWorker(worker_env(settings, broker_url=broker_url, instance_dir=workdir), workdir,
                              pool=pool, concurrency=concurrency, beat=beat)
        started.append(handle)
        return handle.start()

    try:
        yield start
    finally:
        for handle in started:
            handle.stop()


class RedisServer:
    """A private redis-server (no persistence) on a fixed free port; stop/start keep the port."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not on PATH")
        self.process = ManagedProcess(
            "redis-server",
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--maxmemory-policy", "noeviction"],
            dict(os.environ), workdir / "redis.log", "Ready to accept connections")

    def start(self) -> None:
        self.process.start(timeout=10)

    def stop(self) -> None:
        self.process.stop(timeout=5)

    @property
    def running(self) -> bool:
        return self.process.alive


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
