"""A real privacyIDEA server for the directory tests, started once per session by scripts/privacyidea-test-server.

Use from a conftest: `from tests.directory_servers import *  # noqa: F403` (tests/conftest.py does).
The first run creates privacyIDEA's own virtualenv (cached in ~/.cache/rekey, or $REKEY_PI_VENV; a few minutes);
each session then sets up a fresh server on SQLite in a temp dir (~45 s here), which starts in ~10 s.
Set REKEY_PI_DIR to a directory to reuse one set-up server across sessions while iterating.
Without the server the tests skip with the reason; under REKEY_REQUIRE_SERVICES=1 they fail.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from integrations.fakes.server import Answer, FakeServer, RecordedRequest
from tests.services import REQUIRE

__all__ = ["ForwardingProxy", "PrivacyIDEAServer", "privacyidea_server"]

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "privacyidea-test-server"
INSTALL_TIMEOUT = float(os.environ.get("REKEY_PI_INSTALL_TIMEOUT", "1200"))
START_TIMEOUT = 120.0
# RFC 4226 test key ("12345678901234567890") and its first HOTP values, counter 0..5.
HOTP_KEY_HEX = "3132333435363738393031323334353637383930"
HOTP_VALUES = ("755224", "287082", "359152", "969429", "338314", "254676")


class PrivacyIDEAServer:
    """The running server: its URL, admin token and realm, admin helpers for tests, and stop/start."""

    def __init__(self, data_dir: Path, log_path: Path):
        self.dir = data_dir
        self.log_path = log_path
        self.url = ""
        self.token = ""
        self.realm = ""
        self.resolver = "rekeyusers"
        self.port = 0
        self._process: subprocess.Popen[str] | None = None
        self._log: Any = None

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the script (installing and setting up on the first call), read its lines, wait until it answers."""
        args = [sys.executable, str(SCRIPT), "--dir", str(self.dir)]
        if self.port:
            args += ["--port", str(self.port)]
        log = self._log = self.log_path.open("a")
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True,
                                         start_new_session=True)
        values: dict[str, str] = {}
        ready = threading.Event()
        threading.Thread(target=self._read_lines, args=(values, ready, log), daemon=True).start()
        ready.wait(INSTALL_TIMEOUT)
        if "PRIVACYIDEA_DIR" not in values:
            self.stop()
            raise RuntimeError(f"privacyidea-test-server gave no URL (see {self.log_path}): {self._tail()}")
        self.url, self.token, self.realm = (values["PRIVACYIDEA_URL"], values["PRIVACYIDEA_TOKEN"],
                                            values["PRIVACYIDEA_REALM"])
        self.port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"privacyIDEA exited with {self._process.returncode}: {self._tail()}")
            try:
                if requests.get(f"{self.url}/realm/", headers=self.headers, timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"privacyIDEA did not answer within {START_TIMEOUT:.0f} s: {self._tail()}")

    def _read_lines(self, values: dict[str, str], ready: threading.Event, log: Any) -> None:
        """Collect the script's PRIVACYIDEA_* lines, then keep draining the server's stdout into the log."""
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                key, _, value = line.strip().partition("=")
                if key.startswith("PRIVACYIDEA_") and not ready.is_set():
                    values[key] = value
                    if key == "PRIVACYIDEA_DIR":
                        ready.set()
                elif key != "PRIVACYIDEA_TOKEN":
                    log.write(line)
                    log.flush()
        except (OSError, ValueError):
            pass  # stop() closed the pipe or the log under us
        finally:
            ready.set()

    def stop(self) -> None:
        """Stop the server process (the port closes: calls now fail to connect)."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._listening():
            time.sleep(0.1)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:]
        except OSError:
            return ""

    # --- admin helpers for tests (straight to the REST API, not through the adapter under test) -------------------

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": self.token}

    def admin(self, method: str, path: str, **data: str) -> Any:
        """One admin API call; the `result.value`, asserting it succeeded."""
        kwargs: dict[str, Any] = {"params": data} if method == "GET" else {"data": data}
        answer = requests.request(method, self.url + path, headers=self.headers, timeout=30, **kwargs)
        body = answer.json()
        assert answer.status_code == 200 and body["result"]["status"], body.get("result")
        return body["result"]["value"]

    def create_user(self, *, email: str | None = None, mobile: str = "", phone: str = "",
                    givenname: str = "Test", surname: str = "User") -> str:
        """A new user of the realm's resolver; its username."""
        username = "u" + secrets.token_hex(5)
        self.admin("POST", "/user/", resolver=self.resolver, user=username,
                   email=email or f"{username}@example.com", mobile=mobile, phone=phone,
                   givenname=givenname, surname=surname, password=secrets.token_urlsafe(12))
        return username

    def enrol_hotp(self, username: str, serial: str) -> None:
        self.admin("POST", "/token/init", type="hotp", otpkey=HOTP_KEY_HEX, user=username, realm=self.realm,
                   serial=serial)

    def enrol_totp(self, username: str, serial: str, key_hex: str) -> None:
        self.admin("POST", "/token/init", type="totp", otpkey=key_hex, user=username, realm=self.realm,
                   serial=serial)

    def serials(self, username: str) -> set[str]:
        value = self.admin("GET", "/token/", user=username, realm=self.realm, pagesize="100")
        return {token["serial"] for token in value["tokens"]}

    def validate(self, username: str, password: str) -> bool:
        """What privacyIDEA answers the application that asks it: /validate/check (no admin token)."""
        answer = requests.post(f"{self.url}/validate/check", timeout=30,
                               data={"user": username, "realm": self.realm, "pass": password})
        return bool(answer.json()["result"].get("value"))


class ForwardingProxy(FakeServer):
    """A reverse proxy in front of the real server, as a load balancer would be: it forwards every request as is,
    answers 502 when the server is down, and calls `before(n, request)` before forwarding the n-th request (1-based),
    which is how a test stops the real server in the middle of one adapter call (between two of its requests)."""

    def __init__(self, upstream: str, before: Any = None):
        super().__init__()
        self.upstream = upstream.rstrip("/")
        self.before = before
        self.forwarded = 0

    def handle(self, request: RecordedRequest) -> Answer:
        if self.before is not None:
            self.before(len(self.requests), request)
        query = [(k, v) for k, values in request.query.items() for v in values]
        headers = {k: v for k, v in request.headers.items() if k in ("authorization", "content-type", "accept")}
        try:
            answer = requests.request(request.method, self.upstream + request.path, params=query, data=request.body,
                                      headers=headers, timeout=30, allow_redirects=False)
        except requests.RequestException:
            return Answer(502, b"<html><body>502 Bad Gateway</body></html>", {"Content-Type": "text/html"})
        self.forwarded += 1
        return Answer(answer.status_code, answer.content,
                      {"Content-Type": answer.headers.get("Content-Type", "application/json")})


@pytest.fixture(scope="session")
def privacyidea_server(tmp_path_factory: Any) -> Iterator[PrivacyIDEAServer]:
    """A real privacyIDEA 3.14 on 127.0.0.1, once per session (skips when it cannot be installed or started)."""
    reuse = os.environ.get("REKEY_PI_DIR")
    data_dir = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="rekey-privacyidea-"))
    server = PrivacyIDEAServer(data_dir, tmp_path_factory.mktemp("privacyidea") / "server.log")
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        message = f"privacyIDEA could not be installed or started: {exc}"
        if REQUIRE:
            pytest.fail(f"REKEY_REQUIRE_SERVICES=1 but {message}")
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()
        if not reuse:
            shutil.rmtree(data_dir, ignore_errors=True)
