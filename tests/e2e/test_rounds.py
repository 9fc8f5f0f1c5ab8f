"""Issue 8's round, two-person, cooldown and loose-end paths over HTTP, every task run by a
real Celery worker on PostgreSQL and Redis (tests/unit/recovery/test_rounds.py runs the same
paths in process)."""

from __future__ import annotations

import pytest

from tests import round_paths
from tests.recovery_steps import assert_no_secrets

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture(autouse=True)
def _no_secret_left_outside_the_dev_channel(world, worker):
    yield
    if world.handed_out:
        assert_no_secrets(world, logs=worker.log())


def test_secret_refused_without_a_phone_verified_in_the_current_round(world):
    """Item 1, with the worker delivering."""
    round_paths.path_secret_not_to_the_compromised_round_phone(world)


def test_compromised_phone_refused_until_a_senior_admin_trusts_it(world):
    """Item 2, with the worker carrying out the reset and the password."""
    round_paths.path_compromised_phone_needs_a_senior_admins_trust(world)


def test_refusal_after_reset_closes_the_enrolment_window(world):
    """Item 4, with the worker carrying out the reset."""
    round_paths.path_refusal_after_reset_closes_enrolment(world)


def test_privileged_user_needs_two_people_for_evidence_and_every_secret(world):
    """Item 6: approved codes and password carried out and texted by the worker."""
    round_paths.path_privileged_needs_two_people_for_everything(world)


def test_cooldown_schedules_admin_codes_and_temporary_password(world):
    """Item 7: beat's run_scheduled on the worker."""
    round_paths.path_cooldown_holds_every_secret(world)


def test_secret_discarded_when_the_case_is_suspected_before_delivery(world):
    """Item 15: the worker's delivery task finds the alarm and sends nothing."""
    round_paths.path_secret_discarded_after_the_alarm(world)


def test_undelivered_secret_expires_and_is_erased(world):
    """Item 15: beat's sweep on the worker erases a secret whose delivery was lost."""
    round_paths.path_undelivered_secret_expires(world)


def test_second_automatic_refusal_notifies_senior_admins_again(world):
    """Item 16: notify_senior_admins once per round, on the worker."""
    round_paths.path_second_automatic_refusal_tells_senior_admins_again(world)


def test_case_recovered_again_gets_its_follow_up_and_closes(world):
    """Item 16: follow-up, ticket comment and closing once per round, on the worker."""
    round_paths.path_recovered_again_gets_a_follow_up_and_closes(world)


def test_escalated_case_expires_after_the_tenant_ttl(world):
    """Item 18: beat's expiry on the worker, and the notice to the senior admins."""
    round_paths.path_escalated_case_expires_and_senior_admins_hear(world)


def test_suspended_user_whose_case_expired_is_reactivated_by_a_new_case(world):
    """Item 18: reactivation by the worker's execution of the new case's password."""
    round_paths.path_suspended_user_whose_case_expired_recovers(world)
