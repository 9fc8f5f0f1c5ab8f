"""`rekey run` links and prints the pages at localhost: WebAuthn cannot use an IP address."""

from __future__ import annotations

import pytest

from app.devserver import display_url


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", "http://localhost:5000"),
    ("0.0.0.0", "http://localhost:5000"),  # noqa: S104
    ("::", "http://localhost:5000"),
    ("localhost", "http://localhost:5000"),
    ("::1", "http://localhost:5000"),
    ("rekey.internal", "http://rekey.internal:5000"),
])
def test_display_url_of_the_development_server(host: str, expected: str) -> None:
    assert display_url(host, 5000) == expected
