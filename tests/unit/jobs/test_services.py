"""The outbox relay sweep (what beat runs every 10 s): it publishes the rows the after-commit
publisher missed, and leaves fresh rows to that publisher."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

from app.extensions import db
from app.jobs.models import OutboxMessage


def _row(app, age: timedelta) -> uuid.UUID:
    with app.app_context():
        row = OutboxMessage(id=uuid.uuid4(), task="rekey.recovery.screen_case",
                            kwargs={"case_id": str(uuid.uuid4())}, created_at=datetime.now(UTC) - age,
                            publish_attempts=1, last_error="OperationalError")
        db.session.add(row)
        db.session.commit()
        return row.id


def _get(app, row_id: uuid.UUID) -> OutboxMessage:
    with app.app_context():
        row = db.session.get(OutboxMessage, row_id)
        db.session.expunge(row)
        return row


def _sweep(app) -> int:
    """relay_pending in a thread, bounded: a sweep that blocks on its own row locks fails here."""
    from app.jobs.services import relay_pending

    result: list[int] = []

    def run() -> None:
        with app.app_context():
            result.append(relay_pending())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(15)
    assert result, "the relay sweep did not finish within 15 s"
    return result[0]


def test_sweep_publishes_a_row_the_publisher_missed(app):
    missed = _row(app, timedelta(minutes=1))

    assert _sweep(app) >= 1

    row = _get(app, missed)
    assert row.published_at is not None and row.publish_attempts == 2


def test_sweep_leaves_a_fresh_row_to_the_after_commit_publisher(app):
    fresh = _row(app, timedelta(seconds=0))

    _sweep(app)

    row = _get(app, fresh)
    assert row.published_at is None and row.publish_attempts == 1
