from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.services import (
    REDIS_BASE_URL,
    REQUIRE,
    create_pg_database,
    drop_pg_database,
    postgres_available,
    redis_available,
)

# The Redis database of the test suite's shared broker; a developer's own data in db 0 is never
# touched. Two test sessions on one machine (two checkouts) each set their own.
# Under pytest-xdist (`make test`: -n 2) worker gwN uses db REKEY_TEST_REDIS_DB + N, so two workers
# never share a queue (PostgreSQL databases are already one per worker session: uniquely named).
XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
BROKER_REDIS_DB = int(os.environ.get("REKEY_TEST_REDIS_DB", "11")) + XDIST_WORKER
TEST_KEY = "K0wDXEU4b1bSyh3yX2bfO9IrMbJbzxX9wUU6F4E_jps="


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--screenshots", metavar="DIR", default=None,
                     help="save the browser tests' page screenshots in DIR (make screenshots: docs/screenshots)")


def pytest_report_header(config: Any) -> list[str]:
    return [
        f"rekey services: postgres={'yes' if postgres_available() else 'no (SQLite)'}, "
        f"redis={'yes' if redis_available() else 'no (in-memory broker)'}, require={REQUIRE}"
    ]


def pytest_sessionstart(session: Any) -> None:
    if REQUIRE:
        missing = [name for name, ok in (("postgres", postgres_available()), ("redis", redis_available())) if not ok]
        if missing:
            raise pytest.UsageError(f"REKEY_REQUIRE_SERVICES=1 but unreachable: {', '.join(missing)}")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database for this test session: PostgreSQL when present, else SQLite."""
    from app.migrate import upgrade

    if postgres_available():
        url, name = create_pg_database()
        try:
            upgrade(url)
            yield url
        finally:
            drop_pg_database(name)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'rekey-test.sqlite3'}"
            upgrade(url)
            yield url


@pytest.fixture(scope="session")
def broker_url() -> str:
    if redis_available():
        return f"{REDIS_BASE_URL}/{BROKER_REDIS_DB}"
    return "memory://"


@pytest.fixture(scope="session")
def dev_outbox(tmp_path_factory: Any) -> Path:
    """Where the development channel writes what it "sends" during the tests."""
    return tmp_path_factory.mktemp("dev-channel") / "dev-messages.jsonl"


@pytest.fixture(scope="session")
def settings(database_url: str, broker_url: str, dev_outbox: Path) -> Any:
    from app.config import Settings

    return replace(
        Settings(),
        env="test",
        database_url=database_url,
        broker_url=broker_url,
        redis_url=broker_url,
        encryption_keys=TEST_KEY,
        code_pepper="test-pepper",
        secret_key="test-secret",
        log_level="WARNING",
        dev_outbox=str(dev_outbox),
        phone_channel="dev",
        email_channel="dev",
    )


@pytest.fixture(scope="session")
def app(settings: Any) -> Iterator[Any]:
    from app import create_app

    application = create_app(settings, TESTING=True)
    yield application
    from app.extensions import db

    with application.app_context():
        db.engine.dispose()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def factory(app: Any) -> Any:
    from tests.factories import RecoveryFactory

    return RecoveryFactory(app)


@pytest.fixture
def is_postgres(database_url: str) -> bool:
    return database_url.startswith("postgresql")


@pytest.fixture
def pg(database_url: str) -> str:
    """Skip (or fail under REKEY_REQUIRE_SERVICES=1) unless the suite runs on PostgreSQL."""
    from tests.services import need

    need("postgres")
    assert database_url.startswith("postgresql")
    return database_url


class FrozenClock:
    """What `app.accounts.mfa` reads as `time.time()`; `advance` moves it by TOTP steps."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now

    def advance(self, steps: int = 1) -> float:
        self.now += 30 * steps
        return self.now


@pytest.fixture
def totp_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """Freeze the clock TOTP checks use (mid-step, so a code never straddles a boundary)."""
    from app.accounts import mfa

    clock = FrozenClock((int(time.time()) // 30) * 30 + 15.0)
    monkeypatch.setattr(mfa, "time", clock)
    return clock


@pytest.fixture(scope="module")
def world(app: Any) -> Any:
    """One tenant, support agent and user shared by a module's tests that only read them (or
    write rows they count before and after): saves the argon2 work of a user per test."""
    from types import SimpleNamespace

    from tests.factories import Factory

    build = Factory(app)
    tenant = build.tenant()
    return SimpleNamespace(tenant=tenant, agent=build.agent(tenant), user=build.user(tenant))


@pytest.fixture(scope="module")
def cached_password_hashes() -> Iterator[None]:
    """Users a module creates share one argon2 hash per password (each costs ~0.1 s, and hashing
    is not what those tests are about); every verification stays real. Opt in per module with
    `pytestmark = pytest.mark.usefixtures("cached_password_hashes")`."""
    from app.accounts import services

    real, memo = services.hash_password, {}

    def cached(password: str) -> str:
        if password not in memo:
            memo[password] = real(password)
        return memo[password]

    patch = pytest.MonkeyPatch()
    patch.setattr(services, "hash_password", cached)
    yield
    patch.undo()


@pytest.fixture
def tune(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Override settings for one test: `tune(signin_max_failures=3)`."""

    def apply(**changes: Any) -> None:
        current = app.extensions["rekey.settings"]
        monkeypatch.setitem(app.extensions, "rekey.settings", replace(current, **changes))

    return apply


os.environ.setdefault("REKEY_ENV", "test")
