"""Browser tests: Debian's Chromium driven by Playwright for Python, against the app served on a
free port on `localhost` (a host name, not an IP: WebAuthn needs one), on the session's
PostgreSQL, with a real Celery worker where tasks run.

Playwright launches `/usr/bin/chromium` through `executable_path`; `playwright install` (its own
browser download) is never used and cannot reach its servers here. Without Chromium or
Playwright these tests skip with a reason; under REKEY_REQUIRE_SERVICES=1 they fail. Install both
with `make browser` (CI's .ci/run installs Chromium itself).

Fixtures:
- `live_server`: the app (public URL = the server's URL) in a thread; `.url`.
- `browser_worker`: `celery -A tasks.worker worker` on the session broker, whose notices link to
  the live server.
- `browser`: one Chromium for the session; `page`: a fresh context and page per test, which
  records console errors (a CSP violation is one) on `page.console_errors`.
- `add_virtual_authenticator(page)`: Chrome's virtual authenticator through CDP (ctap2,
  internal, resident key, user verification), for the WebAuthn tests.
Pitfall: Playwright's `wait_for_function` needs eval, which our CSP blocks; wait with locators.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CeleryWorker, free_port, module_app, purge, worker_env
from tests.services import REQUIRE, need

CHROMIUM = Path(os.environ.get("REKEY_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own connections (updates, sync, QUIC probes)
# are refused on this closed network and slow every launch.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def need_browser() -> None:
    """Skip (or, under REKEY_REQUIRE_SERVICES=1, fail) without Chromium and Playwright."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium chromium-driver, or `make browser`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install -e '.[browser]', or `make browser`)")
    if not missing:
        return
    message = "browser tests need " + " and ".join(missing)
    if REQUIRE:
        pytest.fail(f"REKEY_REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


@dataclass
class LiveServer:
    url: str


@pytest.fixture(scope="module")
def live_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def app(settings: Any, database_url: str, live_port: int) -> Iterator[Any]:
    """The application under test, its public URL the live server's (notices link there)."""
    need("postgres")
    need("redis")
    assert database_url.startswith("postgresql")
    with module_app(replace(settings, public_url=f"http://localhost:{live_port}")) as application:
        yield application


@pytest.fixture(scope="module")
def live_server(app: Any, live_port: int) -> Iterator[LiveServer]:
    """The app served over HTTP on localhost:<free port>, in a thread."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", live_port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://localhost:{live_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def browser_worker(settings: Any, live_server: LiveServer, tmp_path_factory: Any) -> Iterator[CeleryWorker]:
    """A real worker on the session broker; the notices it sends link to the live server."""
    workdir = tmp_path_factory.mktemp("browser-worker")
    purge(settings.broker_url)  # messages unit tests published with nobody consuming
    env = {**worker_env(settings, instance_dir=workdir), "REKEY_PUBLIC_URL": live_server.url}
    handle = CeleryWorker(env, workdir)
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, launched once for the session."""
    need_browser()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Any, live_server: LiveServer) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page on the live server."""
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1000, "height": 800})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.console_errors = []
    tab.on("console", lambda message: message.type == "error" and tab.console_errors.append(message.text))
    try:
        yield tab
    finally:
        context.close()


@dataclass
class VirtualAuthenticator:
    """Chrome's virtual authenticator on one page (CDP WebAuthn domain)."""

    cdp: Any
    id: str

    def credentials(self) -> list[dict[str, Any]]:
        """The credentials the authenticator holds (id, rpId, resident, sign count)."""
        return list(self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.id})["credentials"])

    def remove(self) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.id})


def add_virtual_authenticator(page: Any, *, user_verified: bool = True) -> VirtualAuthenticator:
    """Add a platform authenticator (ctap2, internal, resident keys, user verification) to the
    page's browser context, as a security key or a phone's fingerprint would be."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": user_verified, "automaticPresenceSimulation": True}})
    return VirtualAuthenticator(cdp, added["authenticatorId"])


@pytest.fixture
def world(client: Any, factory: Any, browser_worker: CeleryWorker, settings: Any) -> Any:
    """The runbook's steps over HTTP (tests/recovery_steps.py), tasks in the real worker."""
    from tests.e2e.conftest import worker_world

    return worker_world(client, factory, settings.broker_url, timeout=30.0)
