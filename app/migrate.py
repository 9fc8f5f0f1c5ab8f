"""Running Alembic from the application (`rekey db upgrade`, the Procfile's release step)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to `revision` (creating SQLite's folder if needed)."""
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


# --- the application role (issue 13) ----------------------------------------------------------
# Migrations run as the database owner (DATABASE_MIGRATION_URL); the web and worker processes
# connect as a role (DATABASE_URL) that may read and write the application's tables but, on the
# audit table, only INSERT and SELECT: no UPDATE, DELETE or TRUNCATE, with the triggers or without.

APPEND_ONLY_TABLES = ("audit_events",)
READ_ONLY_TABLES = ("alembic_version",)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def grant_statements(role: str, database: str) -> list[str]:
    """The privileges of the application role, as SQL an operator can also run by hand."""
    who = quote_ident(role)
    statements = [
        f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {who}",
        f"GRANT USAGE ON SCHEMA public TO {who}",
        f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {who}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {who}",
    ]
    for table in APPEND_ONLY_TABLES:
        statements.append(f"REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON {quote_ident(table)} FROM {who}")
    for table in READ_ONLY_TABLES:
        statements.append(f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {quote_ident(table)} FROM {who}")
    return statements


def app_role_name(app_url: str, configured: str = "") -> str:
    """The application role: REKEY_DATABASE_APP_ROLE, else DATABASE_URL's user (they must agree:
    the app logs in with that URL)."""
    from sqlalchemy.engine import make_url

    user = make_url(app_url).username or ""
    if configured and user and configured != user:
        raise ValueError(f"REKEY_DATABASE_APP_ROLE is {configured!r} but DATABASE_URL logs in as {user!r}")
    role = configured or user
    if not role:
        raise ValueError("DATABASE_URL names no user: the application role needs one")
    return role


def needs_app_role(app_url: str, migration_url: str) -> bool:
    """Two URLs on PostgreSQL with different users: production's split. One URL: development."""
    from sqlalchemy.engine import make_url

    if not migration_url or not app_url.startswith("postgres"):
        return False
    return make_url(app_url).username != make_url(migration_url).username


def ensure_app_role(app_url: str, migration_url: str, *, role: str, create: bool) -> list[str]:
    """As the owner: create the role if it is missing (password from DATABASE_URL), then grant.
    With `create=False` nothing runs: the statements come back for the operator (the password
    left as a placeholder)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    app = make_url(app_url)
    database = app.database or make_url(migration_url).database or ""
    grants = grant_statements(role, database)
    if not create:
        return [f"CREATE ROLE {quote_ident(role)} LOGIN PASSWORD '<the password in DATABASE_URL>'", *grants]
    engine = create_engine(migration_url, hide_parameters=True)
    try:
        with engine.begin() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).first()
            password = f" PASSWORD {_quote_literal(app.password)}" if app.password else ""
            verb = "ALTER" if exists else "CREATE"
            # Straight to the driver, without parameters: nothing in the text is a placeholder.
            driver = conn.connection.driver_connection
            assert driver is not None
            driver.execute(f"{verb} ROLE {quote_ident(role)} LOGIN{password}")
            for statement in grants:
                driver.execute(statement)
    finally:
        engine.dispose()
    return [f"{'ALTER' if exists else 'CREATE'} ROLE {quote_ident(role)} LOGIN PASSWORD '***'", *grants]
