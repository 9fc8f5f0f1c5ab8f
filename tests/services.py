"""Finding the real PostgreSQL and Redis the suite runs against.

Without them the suite runs on SQLite and an in-memory broker and the tests that need a server
skip with a reason; with REKEY_REQUIRE_SERVICES=1 (CI) a missing server fails instead.
"""

from __future__ import annotations

import os
import uuid
from functools import cache

import pytest

PG_ADMIN_URL = os.environ.get("REKEY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("REKEY_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRE = os.environ.get("REKEY_REQUIRE_SERVICES") == "1"


@cache
def postgres_available() -> bool:
    try:
        import psycopg
        from sqlalchemy.engine import make_url

        url = make_url(PG_ADMIN_URL)
        with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username,
                             password=url.password, dbname=url.database, connect_timeout=2):
            return True
    except Exception:
        return False


@cache
def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_BASE_URL, socket_connect_timeout=1).ping())
    except Exception:
        return False


def need(service: str) -> None:
    """Skip (or, under REKEY_REQUIRE_SERVICES=1, fail) when the server is absent."""
    available = {"postgres": postgres_available, "redis": redis_available}[service]()
    if available:
        return
    message = f"{service} is not reachable ({PG_ADMIN_URL if service == 'postgres' else REDIS_BASE_URL})"
    if REQUIRE:
        pytest.fail(f"REKEY_REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


def create_pg_database() -> tuple[str, str]:
    """A fresh, uniquely named database; returns (its URL, its name)."""
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    name = f"rekey_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(host=admin.host, port=admin.port or 5432, user=admin.username,
                         password=admin.password, dbname=admin.database, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin.set(database=name).render_as_string(hide_password=False), name


def drop_pg_database(name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    admin = make_url(PG_ADMIN_URL)
    with psycopg.connect(host=admin.host, port=admin.port or 5432, user=admin.username,
                         password=admin.password, dbname=admin.database, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
