"""`rekey run`: the web process, a Celery worker and Celery beat for development, in the
foreground, on whatever broker this machine offers. Ctrl-C stops them all.

Broker, first that works: REKEY_BROKER_URL; Redis at REDIS_URL if it answers PING; a private
`redis-server` from PATH (no persistence, stopped with us); else an embedded broker, kombu's
SQLAlchemy transport on a SQLite file under the instance folder.

Each child gets its own process group, so a signal reaches a child's own children too (the
worker's pool processes) and nothing outlives the runner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO
from urllib.parse import urlsplit, urlunsplit

from app.config import INSTANCE_DIR, Settings

STOP_TIMEOUT = 20.0  # the worker's warm shutdown finishes running tasks first
REDIS_START_TIMEOUT = 10.0
READY_TIMEOUT = 60.0
_PREFIX = "rekey run:"


def say(message: str) -> None:
    print(f"{_PREFIX} {message}", flush=True)


def redacted(url: str) -> str:
    """`url` with any password replaced by ***, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server at `url` answers PING within `timeout` seconds."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def sqla_broker_url(instance_dir: Path) -> str:
    return f"sqla+sqlite:///{(instance_dir / 'broker.sqlite3').resolve()}"


# --- processes -------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec hook asking Linux to SIGTERM the child if the runner itself is SIGKILLed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    infra: bool  # infrastructure (our redis-server) stops after the processes that use it
    buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Supervisor:
    """Starts children in their own process groups, prefixes their output, stops them all."""

    out: IO[str] = field(default_factory=lambda: sys.stdout)
    children: list[Child] = field(default_factory=list)
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    force: bool = False

    def start(self, name: str, argv: list[str], env: dict[str, str], *,
              infra: bool = False) -> Child:
        process = subprocess.Popen(  # noqa: S603  (argv is built here, never from input)
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent(),
        )
        child = Child(name, process, infra)
        self.children.append(child)
        assert process.stdout is not None
        os.set_blocking(process.stdout.fileno(), False)
        self.selector.register(process.stdout, selectors.EVENT_READ, child)
        return child

    def pump(self, timeout: float) -> None:
        """Copy whatever the children printed, one prefixed line at a time, for up to `timeout`."""
        if not self.selector.get_map():
            time.sleep(timeout)
            return
        for key, _ in self.selector.select(timeout):
            child: Child = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(key.fileobj)
                self._emit(child, child.buffer, final=True)
                continue
            child.buffer += chunk
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                self._emit(child, line)

    def _emit(self, child: Child, line: bytes, final: bool = False) -> None:
        if final and not line:
            return
        self.out.write(f"{child.name:<6} | {line.decode('utf-8', 'replace').rstrip()}\n")
        self.out.flush()

    def exited(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        """Signal every child's group, wait up to `timeout`, then kill what is left."""
        for tier in (False, True):  # the apps first, then the broker they were using
            group = [c for c in self.children if c.infra is tier]
            for child in group:
                _signal_group(child, sig)
            deadline = time.monotonic() + timeout
            while any(c.process.poll() is None for c in group):
                if self.force or time.monotonic() > deadline:
                    for child in group:
                        if child.process.poll() is None:
                            say(f"{child.name} (pid {child.pid}) did not stop in time; killing it")
                    break
                self.pump(0.1)
            for child in group:
                # Kill stragglers in the group even when its leader exited cleanly (a pool
                # process whose parent died) so nothing is left behind.
                _signal_group(child, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=5)
        self.pump(0)
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
        for child in self.children:
            if child.process.stdout:
                child.process.stdout.close()


def _signal_group(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, sig)  # start_new_session made the child its group's leader


# --- broker ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    url: str
    why: str


def start_redis_server(executable: str, instance_dir: Path, supervisor: Supervisor,
                       env: dict[str, str]) -> Broker | None:
    """A private redis-server on a free loopback port, keeping nothing on disk."""
    data_dir = instance_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child = supervisor.start("redis", [
        executable, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(data_dir), "--daemonize", "no", "--loglevel", "warning",
    ], env, infra=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_START_TIMEOUT
    while time.monotonic() < deadline and child.process.poll() is None:
        if redis_answers(url, timeout=0.5):
            return Broker(url, f"started {executable}, pid={child.pid}, keeps nothing on disk, "
                               "stops with rekey run")
        supervisor.pump(0.2)
    supervisor.stop()
    supervisor.children.remove(child)
    say(f"{executable} did not answer on port {port}; falling back to the embedded broker")
    return None


def choose_broker(settings: Settings, instance_dir: Path, supervisor: Supervisor,
                  env: dict[str, str]) -> Broker:
    """REKEY_BROKER_URL, else Redis at REDIS_URL, else our own redis-server, else embedded."""
    if settings.broker_url:
        return Broker(settings.broker_url, "REKEY_BROKER_URL")
    if redis_answers(settings.redis_url):
        return Broker(settings.redis_url, "Redis at REDIS_URL answered PING")
    executable = shutil.which("redis-server", path=env.get("PATH"))
    if executable:
        say(f"no Redis at {redacted(settings.redis_url)}; starting {executable}")
        started = start_redis_server(executable, instance_dir, supervisor, env)
        if started:
            return started
    return Broker(sqla_broker_url(instance_dir),
                  "embedded: kombu's SQLAlchemy transport on SQLite, for development only; "
                  "no Redis found")


# --- the children --------------------------------------------------------------------------


def child_commands(settings: Settings, instance_dir: Path) -> dict[str, list[str]]:
    python = sys.executable
    celery = [python, "-m", "celery", "-A", "tasks.worker"]
    return {
        "web": [python, "-m", "flask", "--app", "app:create_app()", "run",
                "--host", settings.host, "--port", str(settings.port),
                "--no-reload", "--no-debugger", "--with-threads"],
        "worker": [*celery, "worker", "--loglevel=INFO", "--pool=prefork", "--concurrency=2",
                   "--without-gossip", "--without-mingle",
                   "--hostname", f"rekey-dev-{os.getpid()}@%h"],
        "beat": [*celery, "beat", "--loglevel=INFO",
                 "--schedule", str(instance_dir / "celerybeat-schedule")],
    }


def display_url(host: str, port: int) -> str:
    """The URL a browser on this machine opens. A loopback or any-address bind is shown (and
    becomes REKEY_PUBLIC_URL) as `localhost`: WebAuthn's relying-party id must be a host name."""
    shown = "localhost" if host in ("0.0.0.0", "", "::", "127.0.0.1", "::1", "localhost") else host  # noqa: S104
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _answers_http(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)  # noqa: S104
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- the runner ------------------------------------------------------------------------------


def run(settings: Settings | None = None) -> int:
    """Migrate, pick a broker, run web + worker + beat until a signal or a child's death."""
    settings = settings or Settings()
    received: list[int] = []
    supervisor = Supervisor()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:
            supervisor.force = True  # a second Ctrl-C: stop waiting, kill
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    instance_dir = INSTANCE_DIR.resolve()
    instance_dir.mkdir(parents=True, exist_ok=True)
    url = display_url(settings.host, settings.port)
    if not port_is_free(settings.host, settings.port):
        say(f"cannot listen on {settings.host}:{settings.port}: it is in use. "
            "Set REKEY_PORT (and REKEY_HOST) to a free address.")
        return 2

    from app.migrate import upgrade

    upgrade(settings.database_url)
    say(f"database: {redacted(settings.database_url)} (migrated to head)")
    if received:
        return 0

    env = dict(os.environ)
    broker = choose_broker(settings, instance_dir, supervisor, env)
    say(f"broker: {redacted(broker.url)} ({broker.why})")
    env.update({
        "REKEY_BROKER_URL": broker.url,
        "DATABASE_URL": settings.database_url,
        "REKEY_INSTANCE_DIR": str(instance_dir),
        "PYTHONUNBUFFERED": "1",
    })
    # People reach the pages at localhost, not 127.0.0.1: WebAuthn cannot use an IP address.
    env.setdefault("REKEY_PUBLIC_URL", url)
    public = env["REKEY_PUBLIC_URL"].rstrip("/")
    try:
        if not received:
            for name, argv in child_commands(settings, instance_dir).items():
                supervisor.start(name, argv, env)
            started = ", ".join(f"{c.name} pid={c.pid}" for c in supervisor.children)
            say(f"web: {url} (health: {url}/healthz, {url}/readyz; API: {url}/openapi.json)")
            say(f"pages: {public}/t/<tenant>/ (the links in notices open {public}/t/<tenant>/links/...)")
            say(f"sign-in page: {public}/t/<tenant>/signin (then enrolment at /t/<tenant>/enrol, account "
                f"security at /t/<tenant>/account; <tenant> is the tenant's slug)")
            say(f"agent console: {public}/console/ (agents sign in with the invitation `rekey agent create` "
                "or `rekey agent invite` prints)")
            say(f"started {started}; Ctrl-C stops them all")
        return _supervise(supervisor, settings, url, received)
    finally:
        supervisor.stop(signal.SIGINT if received[:1] == [signal.SIGINT] else signal.SIGTERM)
        if received:
            say("stopped")


def _supervise(supervisor: Supervisor, settings: Settings, url: str, received: list[int]) -> int:
    ready = False
    ready_deadline = time.monotonic() + READY_TIMEOUT
    while not received:
        supervisor.pump(0.2)
        dead = supervisor.exited()
        if dead is not None:
            say(f"{dead.name} (pid {dead.pid}) exited unexpectedly with code "
                f"{dead.process.returncode}; stopping the others")
            return 1
        if not ready and _answers_http(settings.host, settings.port):
            ready = True
            say(f"ready: {url}")
        elif not ready and time.monotonic() > ready_deadline:
            ready = True  # say it once, keep running: the web log above tells why
            say(f"web is not answering on {url} after {READY_TIMEOUT:.0f} s")
    say(f"got {signal.Signals(received[0]).name}; stopping web, worker and beat")
    return 0
