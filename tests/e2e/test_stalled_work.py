"""Issue 8, item 17: the stalled-work sweep (`rekey.recovery.requeue_stalled`, beat every five
minutes) with a real worker on PostgreSQL and Redis, texting through a fake of Twilio's API.

- A secret delivery whose message the broker lost is found however many finished actions came
  before it (the sweep read 200 done actions in no order and filtered them in Python).
- A delivery the carrier refuses for good (the user's number replied STOP: Twilio error 21610)
  is not re-queued every five minutes into a new dead letter: it stops, and its dead letter and
  the case say why; `rekey dlq retry` sends it once the number accepts texts again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.extensions import db
from integrations.fakes import FakeTwilio
from tests.e2e.conftest import E2E_ENV
from tests.e2e.test_reliability import rekey
from tests.factories import PHONE
from tests.integration.conftest import CeleryWorker, RedisServer, purge, worker_env
from tests.recovery_steps import BACKUP_CODE, Cast, act, audit, case, cast, open_case, signin, state

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]
EXECUTE, DELIVER, SWEEP = ("rekey.recovery.execute_action", "rekey.recovery.deliver_secret",
                           "rekey.recovery.requeue_stalled")
CODE = re.compile(r"recovery code is (\d{8})")


@pytest.fixture(scope="module")
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as fake:
        yield fake


@pytest.fixture(scope="module")
def _e2e_worker(settings: Any, broker: RedisServer, app: Any, twilio: FakeTwilio,
                tmp_path_factory: Any) -> Iterator[CeleryWorker]:
    """The module's worker, texting phones through the fake Twilio."""
    workdir: Path = tmp_path_factory.mktemp("e2e-twilio-worker")
    env = {**worker_env(settings, broker_url=broker.url, instance_dir=workdir), **E2E_ENV,
           "REKEY_PHONE_CHANNEL": "twilio", "REKEY_TWILIO_BASE_URL": twilio.url,
           "REKEY_TWILIO_ACCOUNT_SID": twilio.account_sid, "REKEY_TWILIO_AUTH_TOKEN": twilio.auth_token,
           "REKEY_TWILIO_FROM": "+15005550006"}
    handle = CeleryWorker(env, workdir, pool="prefork", concurrency=2).start()
    try:
        yield handle
    finally:
        handle.stop()


def texts(twilio: FakeTwilio, key: str) -> list[dict[str, str]]:
    """The texts Twilio accepted under this idempotency key."""
    return [m for m in twilio.messages if m["idempotency_token"] == key]


def attempts(twilio: FakeTwilio, key: str) -> int:
    """Every request to send under this key, accepted or refused."""
    return sum(1 for r in twilio.requests if r.headers.get("i-twilio-idempotency-token") == key)


def verified_by_text(world: Any, c: Cast, twilio: FakeTwilio) -> str:
    """A case verified by a code Rekey texted (through Twilio) to the phone on file."""
    case_id = open_case(world, c)
    channel = case(world, case_id, c.agent)["callable_channels"][0]["id"]
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls", headers=c.agent.headers,
                          json={"channel_id": channel, "method": "sms"})
    assert r.status_code == 202, r.json
    call_id = r.json["id"]
    [sent] = world.settle(lambda: texts(twilio, f"verification-call:{call_id}"), "the code texted")
    code = CODE.search(sent["Body"]).group(1)  # type: ignore[union-attr]
    world.handed_out.append(code)
    r = world.client.post(f"/v1/admin/cases/{case_id}/verification-calls/{call_id}/confirm",
                          json={"code": code}, headers=c.agent.headers)
    assert r.status_code == 200 and state(world, case_id, c.agent) == "verified", r.json
    return case_id


def deliveries_dead(app: Any, action_id: str) -> list[Any]:
    from app.jobs.models import DeadLetter

    with app.app_context():
        rows = [r for r in db.session.scalars(select(DeadLetter).where(DeadLetter.task == DELIVER)).all()
                if r.kwargs.get("action_id") == action_id]
        db.session.expunge_all()
        return rows


def done_long_ago(app: Any, action_id: str) -> None:
    """The action finished ten minutes ago: past the sweep's patience (five)."""
    from app.extensions import utcnow
    from app.recovery.models import CaseAction

    with app.app_context():
        db.session.execute(update(CaseAction).where(CaseAction.id == uuid.UUID(action_id))
                           .values(done_at=utcnow() - timedelta(minutes=10)))
        db.session.commit()


def many_finished_actions(app: Any, tenant: Any, case_id: str, n: int) -> None:
    """`n` older actions, done, with nothing left to deliver (a busy tenant's history)."""
    from app.extensions import utcnow
    from app.recovery.models import CaseAction

    with app.app_context():
        long_ago = utcnow() - timedelta(days=1)
        db.session.add_all(CaseAction(tenant_id=tenant.id, case_id=uuid.UUID(case_id), action="force_mfa_reset",
                                      status="done", requested_by="history", reason="an earlier recovery",
                                      options={}, created_at=long_ago, done_at=long_ago) for _ in range(n))
        db.session.commit()


def test_a_lost_secret_delivery_is_found_past_hundreds_of_finished_actions(world, worker, twilio, broker):
    c = cast(world)
    case_id = verified_by_text(world, c, twilio)
    other = Cast(c.tenant, world.factory.settled_user(c.tenant), c.agent, c.senior, None)
    many_finished_actions(world.app, c.tenant, open_case(world, other), 250)
    world.quiesce()

    # The worker is down while the codes are generated, and the broker then loses the message
    # that would have texted them (a Redis restart without persistence).
    worker.worker.stop()
    r = act(world, case_id, "generate_backup_codes", c.agent, reason="Codes over the verified phone, ticket #1234")
    assert r.status_code == 200, r.json
    action_id = r.json["action"]["id"]
    world.app.extensions["celery"].tasks[EXECUTE](action_id=action_id)  # the task's code, run here
    purge(broker.url)
    worker.worker.start()
    assert state(world, case_id, c.agent) == "awaiting_enrolment" and texts(twilio, f"action:{action_id}") == []
    done_long_ago(world.app, action_id)

    world.run_task(SWEEP, {})

    [sent] = world.settle(lambda: texts(twilio, f"action:{action_id}"), "the codes texted after the sweep")
    world.quiesce()
    assert sent["To"] == PHONE and len(texts(twilio, f"action:{action_id}")) == 1
    codes = BACKUP_CODE.findall(sent["Body"])
    world.handed_out.extend(codes)
    r = signin(world, c, backup_code=codes[0])
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json


def test_a_secret_the_number_refuses_for_good_stops_and_says_why(world, worker, twilio, cli_env):
    c = cast(world)
    case_id = verified_by_text(world, c, twilio)
    world.quiesce()
    twilio.opted_out.add(PHONE)  # the user's number replied STOP after the call
    try:
        r = act(world, case_id, "generate_backup_codes", c.agent, reason="Codes over the verified phone, ticket #1234")
        assert r.status_code == 200, r.json
        action_id = r.json["action"]["id"]
        [dead] = world.settle(lambda: deliveries_dead(world.app, action_id), "the refused delivery dead-lettered")
        world.quiesce()
        assert dead.error_type == "PermanentDeliveryError" and "400" in (dead.error or "")
        [failed] = audit(world, c.tenant, "recovery.secret_delivery_failed", case_id)
        assert failed.details["action_id"] == action_id and failed.details["error"] == "PermanentDeliveryError"
        assert "not sent" in (failed.reason or "")
        assert "recovery.secret_delivery_failed" in [t["action"] for t in case(world, case_id, c.agent)["timeline"]]

        # Beat's sweep, twice, long after: the refused delivery is not tried again.
        done_long_ago(world.app, action_id)
        world.run_task(SWEEP, {})
        world.run_task(SWEEP, {})
        world.quiesce()
        assert len(deliveries_dead(world.app, action_id)) == 1
        assert attempts(twilio, f"action:{action_id}") == 1
    finally:
        twilio.opted_out.discard(PHONE)

    # The user texts START; the operator replays the dead letter: the codes go out, once.
    out = rekey(cli_env, "dlq", "retry", str(dead.id))
    assert out.returncode == 0, out.stderr
    [sent] = world.settle(lambda: texts(twilio, f"action:{action_id}"), "the codes texted after the replay")
    world.quiesce()
    codes = BACKUP_CODE.findall(sent["Body"])
    world.handed_out.extend(codes)
    r = signin(world, c, backup_code=codes[0])
    assert r.status_code == 200 and r.json["status"] == "enrolment_required", r.json
    world.run_task(SWEEP, {})
    world.quiesce()
    assert len(texts(twilio, f"action:{action_id}")) == 1
