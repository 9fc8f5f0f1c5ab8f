"""The runbook's main recovery paths over HTTP, every task run by a real Celery worker on
PostgreSQL and Redis (the same paths tests/unit/recovery/test_actions.py runs in process)."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator

import pytest

from integrations.fakes import CallbackReceiver, FakeJira, FakeZendesk
from tests.recovery_paths import (
    path_admin_codes_by_phone,
    path_backup_codes,
    path_cooldown_cancel,
    path_force_reset,
    path_force_reset_security_key,
    path_privileged,
    path_report_not_me,
    path_suspected_attack,
    path_temporary_password,
)
from tests.recovery_steps import assert_no_secrets

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def zendesk() -> Iterator[FakeZendesk]:
    with FakeZendesk() as fake:
        yield fake


@pytest.fixture
def jira() -> Iterator[FakeJira]:
    with FakeJira() as fake:
        yield fake


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_secret_left_outside_the_dev_channel(world, worker):
    """After each path: no code or password it handed out is in the audit, the outbox, a dead
    letter, a fake vendor's received bodies or the worker's log."""
    yield
    assert_no_secrets(world, logs=worker.log())


def test_backup_codes_remain_no_reset_and_one_zendesk_comment(world, zendesk):
    path_backup_codes(world, kind="zendesk", fake=zendesk)


def test_force_reset_to_enrolment_and_one_jira_comment(world, jira):
    path_force_reset(world, kind="jira", fake=jira)


def test_force_reset_by_the_worker_removes_keys_then_a_new_key_closes_the_case(world):
    path_force_reset_security_key(world)


def test_admin_codes_over_the_verified_phone_never_elsewhere(world, worker, receiver):
    path_admin_codes_by_phone(world, fake=receiver)
    log = worker.log()
    assert "rekey.recovery.execute_action" in log and "succeeded" in log  # the scan reads a real log
    assert_no_secrets(world, fakes=(receiver,), logs=log)


def test_temporary_password_change_then_enrol(world, worker):
    path_temporary_password(world)
    assert_no_secrets(world, logs=worker.log())


def test_suspected_attack_then_real_user_recovers(world):
    path_suspected_attack(world)


def test_privileged_reset_waits_for_a_second_senior_admin(world):
    path_privileged(world)


def test_cooldown_cancel_link_stops_the_reset(world):
    path_cooldown_cancel(world)


def test_this_wasnt_me_link_suspends(world):
    path_report_not_me(world)
