"""Tenant slugs: the slug names the tenant in page addresses (`/t/<slug>/`), so it is exactly
2-63 lower-case letters, digits or dashes, nothing around it."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import NotFound, ValidationFailed
from app.extensions import db
from app.tenants.services import create_tenant, get_tenant_by_slug


@pytest.mark.parametrize("slug", ["acme\n", "acme\r\n", "Acme", "a", "-acme", "acme corp", "x" * 64, "acme\x00"])
def test_slug_outside_the_grammar_is_refused(app: Any, slug: str) -> None:
    with app.app_context():
        with pytest.raises(ValidationFailed):
            create_tenant(slug=slug)
        db.session.rollback()


@pytest.mark.parametrize("slug", ["", "acme\n", "x" * 3000, "acme\x00", "../acme"])
def test_lookup_of_a_slug_outside_the_grammar_is_not_found_without_a_query(app: Any, slug: str) -> None:
    with app.app_context():
        with pytest.raises(NotFound):
            get_tenant_by_slug(slug)
        db.session.rollback()
