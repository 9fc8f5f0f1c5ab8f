"""Fixtures for the directory adapters: the local Keycloak fake (privacyIDEA is real: tests/directory_servers.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from integrations.fakes.keycloak import FakeKeycloak


@pytest.fixture
def fake_keycloak() -> Iterator[FakeKeycloak]:
    with FakeKeycloak() as fake:
        yield fake
