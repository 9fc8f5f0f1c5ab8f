"""Unbound extensions, bound to the app in `create_app` (Flask's application-factory pattern)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, cast

from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON, CursorResult, DateTime, MetaData, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names so Alembic migrations are the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only clock the service trusts)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, whatever the database keeps.

    SQLite drops the offset; without this, comparing a stored time with `utcnow()` raises.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


db = SQLAlchemy(model_class=Base)


def rows_changed(stmt: Any) -> int:
    """Run an UPDATE or DELETE in the current session; how many rows it changed (the answer a
    compare-and-set or an atomic single-use claim is decided by)."""
    result = db.session.execute(stmt.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount or 0
api = Api()
