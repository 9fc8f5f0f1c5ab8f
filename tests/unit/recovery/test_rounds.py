"""Issue 8, items 1-4, 6, 7, 15, 16 and 18: each attack on the round rule, the two-person rule,
the cooldown and the case's loose ends, played over HTTP with the queued tasks run in this
process. tests/e2e/test_rounds.py plays the same paths against a real worker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from tests import round_paths
from tests.recovery_steps import World, assert_no_secrets, in_process


@pytest.fixture
def world(client: Any, factory: Any, caplog: Any) -> Iterator[World]:
    """The test's world; afterwards no secret it handed out is anywhere but the dev channel."""
    caplog.set_level(logging.DEBUG)
    world = in_process(client, factory)
    yield world
    if world.handed_out:
        assert_no_secrets(world, logs=caplog.text)


def test_secret_refused_without_a_phone_verified_in_the_current_round(world):
    """Item 1: after the alarm, a temporary password must not go to the attacker's phone."""
    round_paths.path_secret_not_to_the_compromised_round_phone(world)


def test_compromised_phone_refused_until_a_senior_admin_trusts_it(world):
    """Item 2: the phone the attacker verified is not callable again until trusted."""
    round_paths.path_compromised_phone_needs_a_senior_admins_trust(world)


def test_video_call_of_an_earlier_round_reads_out_no_codes(world):
    """Item 3: the agent fooled on video reads out no codes in the next round."""
    round_paths.path_fooled_video_agent_reads_no_codes_out(world)


def test_refusal_after_reset_closes_the_enrolment_window(world):
    """Item 4: a refused case leaves nobody a password-only way to enrol a factor."""
    round_paths.path_refusal_after_reset_closes_enrolment(world)


def test_privileged_user_needs_two_people_for_evidence_and_every_secret(world):
    """Item 6: two people for the evidence, a second senior admin for codes and passwords."""
    round_paths.path_privileged_needs_two_people_for_everything(world)


def test_cooldown_schedules_admin_codes_and_temporary_password(world):
    """Item 7: the cooldown and its cancel link hold every destructive action."""
    round_paths.path_cooldown_holds_every_secret(world)


def test_secret_discarded_when_the_case_is_suspected_before_delivery(world):
    """Item 15: no temporary password goes out after the alarm."""
    round_paths.path_secret_discarded_after_the_alarm(world)


def test_undelivered_secret_expires_and_is_erased(world):
    """Item 15: a sealed secret never delivered is erased after 24 hours."""
    round_paths.path_undelivered_secret_expires(world)


def test_second_automatic_refusal_notifies_senior_admins_again(world):
    """Item 16: the senior admins hear of every round's automatic refusal."""
    round_paths.path_second_automatic_refusal_tells_senior_admins_again(world)


def test_case_recovered_again_gets_its_follow_up_and_closes(world):
    """Item 16: the follow-up and the closing fire once per round, not once per case."""
    round_paths.path_recovered_again_gets_a_follow_up_and_closes(world)


def test_escalated_case_expires_after_the_tenant_ttl(world):
    """Item 18: nobody picks up an escalated case: it expires and senior admins hear."""
    round_paths.path_escalated_case_expires_and_senior_admins_hear(world)


def test_suspended_user_whose_case_expired_is_reactivated_by_a_new_case(world):
    """Item 18: reactivation follows DESIGN.md whatever case carries it."""
    round_paths.path_suspended_user_whose_case_expired_recovers(world)
