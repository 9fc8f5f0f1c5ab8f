"""DATABASE_URL as hosting platforms hand it out (postgres://, postgresql://) works with the psycopg 3
driver Rekey installs; any other unusable URL is one line naming the variable, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.config import ConfigError, Settings, database_url_from

REKEY = str(Path(sys.executable).parent / "rekey")


@pytest.mark.parametrize(("given", "expected"), [
    ("postgres://rekey:s3cret@db.example.com:5432/rekey", "postgresql+psycopg://rekey:s3cret@db.example.com:5432/rekey"),
    ("postgresql://rekey:s3cret@db.example.com/rekey?sslmode=require",
     "postgresql+psycopg://rekey:s3cret@db.example.com/rekey?sslmode=require"),
    ("POSTGRES://u@h/d", "postgresql+psycopg://u@h/d"),
    ("postgresql+psycopg://u:p%40ss@h/d", "postgresql+psycopg://u:p%40ss@h/d"),
    ("sqlite:////var/lib/rekey/rekey.sqlite3", "sqlite:////var/lib/rekey/rekey.sqlite3"),
    ("sqlite://", "sqlite://"),
])
def test_host_urls_map_to_the_installed_driver(given, expected):
    assert database_url_from(given) == expected
    assert replace(Settings(), database_url=given).database_url == expected


@pytest.mark.parametrize(("given", "says"), [
    ("mysql://u:hunter2@h/d", "names the driver 'mysql'"),
    ("postgresql+psycopg2://u:hunter2@h/d", "names the driver 'postgresql+psycopg2'"),
    ("postgres://u:hunter2@h:port/d", "is not a usable database URL"),
    ("db.example.com/rekey", "is not a database URL"),
    ("", "is not a database URL"),
])
def test_an_unusable_url_is_a_config_error_naming_the_variable_not_the_password(given, says):
    with pytest.raises(ConfigError) as raised:
        database_url_from(given)
    message = str(raised.value)
    assert message.startswith("DATABASE_URL ") and says in message
    assert "\n" not in message and "hunter2" not in message


def test_a_postgres_url_from_a_host_opens_the_real_database(pg):
    """The URL a PaaS hands out, with the driver name taken off, connects through psycopg 3."""
    host_form = "postgres://" + pg.split("://", 1)[1]
    engine = create_engine(replace(Settings(), database_url=host_form).database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
        assert engine.dialect.driver == "psycopg"
    finally:
        engine.dispose()


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REKEY_") and k != "DATABASE_URL"}
    return {**env, "DATABASE_URL": url, "REKEY_ENV": "development"}


def test_rekey_db_upgrade_on_a_postgres_url_migrates(pg):
    """`rekey db upgrade` (the Procfile's release step) with `postgres://...` works, no psycopg2."""
    from tests.services import create_pg_database, drop_pg_database

    url, name = create_pg_database()
    try:
        host_form = "postgres://" + url.split("://", 1)[1]
        done = subprocess.run([REKEY, "db", "upgrade"], env=_env(host_form), capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert "psycopg2" not in done.stderr
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("select count(*) from alembic_version")).scalar() == 1
        finally:
            engine.dispose()
    finally:
        drop_pg_database(name)


@pytest.mark.parametrize("url", ["mysql://u:hunter2@h/d", "nonsense"])
def test_rekey_with_an_unusable_url_says_one_line_naming_the_variable(url):
    done = subprocess.run([REKEY, "db", "upgrade"], env=_env(url), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rekey: DATABASE_URL "), done.stderr
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_the_worker_with_an_unusable_url_says_one_line_naming_the_variable():
    """`celery -A tasks.worker` (and gunicorn's `app:create_app()`) load the app from the environment."""
    done = subprocess.run([sys.executable, "-c", "import tasks.worker"], env=_env("mysql://u:hunter2@h/d"),
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rekey: DATABASE_URL names the driver 'mysql'"), done.stderr
