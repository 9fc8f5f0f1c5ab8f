"""Issue 8, item 17: the stalled-work sweep asks for exactly the stalled work, oldest first (the
sweep itself, in process on PostgreSQL; tests/e2e/test_stalled_work.py runs it on a worker)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from app.extensions import db, utcnow
from app.jobs.models import OutboxMessage
from app.recovery.closing import requeue_stalled
from app.recovery.models import CaseAction
from tests.casework import open_case


@pytest.fixture
def made(app) -> Iterator[list[uuid.UUID]]:
    """The actions a test inserts, deleted afterwards: another test's sweep must not find them."""
    ids: list[uuid.UUID] = []
    yield ids
    with app.app_context():
        db.session.execute(delete(CaseAction).where(CaseAction.id.in_(ids)))
        db.session.commit()


def _action(app, made, opened, **values) -> uuid.UUID:
    with app.app_context():
        row = CaseAction(id=uuid.uuid4(), tenant_id=opened.tenant.id, case_id=uuid.UUID(opened.case_id),
                         action="generate_backup_codes", requested_by="agent", reason="r",
                         options=values.pop("options", {}), **values)
        db.session.add(row)
        db.session.commit()
        made.append(row.id)
        return row.id


def _swept(app, limit: int = 200) -> list[str]:
    """What the sweep queued: (task, id) of the outbox rows it wrote."""
    with app.app_context():
        before = set(db.session.scalars(select(OutboxMessage.id)).all())
        requeue_stalled(limit=limit)
        db.session.flush()
        rows = [r for r in db.session.scalars(select(OutboxMessage)).all() if r.id not in before]
        found = [f"{r.task}:{next(iter(r.kwargs.values()))}" for r in rows]
        db.session.rollback()  # leave nothing queued for the other tests
        return found


def test_the_oldest_stalled_delivery_goes_first(app, client, factory, made):
    opened = open_case(factory, client)
    now = utcnow()
    ages = {minutes: _action(app, made, opened, status="done", done_at=now - timedelta(minutes=minutes),
                             delivery_state="pending", options={"sealed": "gAAAA-not-read-here"})
            for minutes in (6, 60 * 24 * 400, 30)}

    first = [s for s in _swept(app, limit=1) if s.startswith("rekey.recovery.deliver_secret")]

    assert first == [f"rekey.recovery.deliver_secret:{ages[60 * 24 * 400]}"]


def test_only_stalled_work_is_queued_again(app, client, factory, made):
    opened = open_case(factory, client)
    now, long_ago = utcnow(), utcnow() - timedelta(hours=5)
    stalled = _action(app, made, opened, status="queued", created_at=long_ago, queued_at=now - timedelta(minutes=6))
    # Requested five hours ago but approved (or out of its cooldown) a minute ago: not stalled.
    just_queued = _action(app, made, opened, status="queued", created_at=long_ago, queued_at=now - timedelta(minutes=1))
    failed = _action(app, made, opened, status="done", done_at=long_ago, delivery_state="failed",
                     options={"sealed": "gAAAA-not-read-here"})
    sent = _action(app, made, opened, status="done", done_at=long_ago, delivery_state="sent")

    swept = _swept(app)

    assert f"rekey.recovery.execute_action:{stalled}" in swept
    for quiet in (just_queued, failed, sent):
        assert not any(s.endswith(str(quiet)) for s in swept), quiet
