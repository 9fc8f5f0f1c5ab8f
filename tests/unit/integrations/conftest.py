"""Fixtures for the integration adapters: the local vendor fakes (see tests/fakes_fixtures.py)."""

from tests.fakes_fixtures import *  # noqa: F403
