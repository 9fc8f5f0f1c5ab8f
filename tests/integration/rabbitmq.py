"""A PRIVATE RabbitMQ node for the broker tests: `rabbitmq-server` with its own node name, AMQP
port, distribution port, data folder and log folder, so it can be stopped and started (a broker
restart) without touching the shared node on :5672. Its data folder survives a restart (quorum
queues are durable). No plugins. `rabbitmq-server` drops to the `rabbitmq` user when started as
root, so its folder lives outside pytest's private tmp folder and belongs to that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import ManagedProcess, free_port

READY = "completed with"  # "Starting broker... completed with 0 plugins."
BOOT_TIMEOUT = 120.0


def rabbitmq_missing() -> str | None:
    if shutil.which("rabbitmq-server") is None:
        return "rabbitmq-server is not on PATH (apt-get install rabbitmq-server)"
    return None


class RabbitMQServer:
    def __init__(self) -> None:
        self.node = f"rekey-test-{uuid.uuid4().hex[:8]}@localhost"
        self.port, self.dist_port = free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.workdir = Path(tempfile.mkdtemp(prefix="rekey-rabbitmq-"))
        for sub in ("mnesia", "log"):
            (self.workdir / sub).mkdir()
        (self.workdir / "enabled_plugins").write_text("[].\n")
        self._chown()
        env = {**os.environ,
               "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
               "RABBITMQ_NODE_PORT": str(self.port), "RABBITMQ_DIST_PORT": str(self.dist_port),
               "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
               "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
               "RABBITMQ_PID_FILE": str(self.workdir / "pid"),
               "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq"),
               "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.workdir / "advanced.config"),
               "RABBITMQ_LOGS": "-"}
        # The output log stays with the test's own files (root's); the node writes only its folder.
        self.process = ManagedProcess("rabbitmq-server", ["rabbitmq-server"], env,
                                      Path(tempfile.gettempdir()) / f"{self.workdir.name}.log", READY)

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        with contextlib.suppress(KeyError):
            user = pwd.getpwnam("rabbitmq")
            for path in (self.workdir, *self.workdir.rglob("*")):
                os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(self.workdir, 0o755)  # noqa: S103  (the node's user must enter it)

    def start(self) -> None:
        self.process.start(timeout=BOOT_TIMEOUT)

    def stop(self) -> None:
        """Stop the node and wait until its Erlang VM (named in the pid file) has exited and the
        AMQP port refuses connections: a broker that is really down."""
        import signal
        import socket
        import time

        pid_file = self.workdir / "pid"
        vm = int(pid_file.read_text().strip() or 0) if pid_file.exists() else 0
        self.process.stop(timeout=60)
        deadline = time.monotonic() + 60
        while vm and time.monotonic() < deadline:
            try:
                os.kill(vm, signal.SIGTERM if time.monotonic() < deadline - 30 else signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.5)
        raise RuntimeError(f"RabbitMQ node {self.node} still answers on port {self.port}")

    @property
    def running(self) -> bool:
        return self.process.alive

    def ctl(self, *args: str) -> str:
        done = subprocess.run(["rabbitmqctl", "-n", self.node, *args], capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stdout

    def queue_types(self) -> dict[str, str]:
        """Each queue's type (quorum, classic), as the node reports it."""
        rows = self.ctl("list_queues", "name", "type", "--no-table-headers", "--quiet").splitlines()
        return dict(row.split("\t")[:2] for row in rows if "\t" in row)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.process.log_path.unlink()


def need_rabbitmq() -> None:
    from tests.services import REQUIRE

    missing = rabbitmq_missing()
    if missing is None:
        return
    if REQUIRE:
        pytest.fail(f"REKEY_REQUIRE_SERVICES=1 but {missing}")
    pytest.skip(missing)
