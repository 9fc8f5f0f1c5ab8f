"""A database error's text, which reaches logs and dead letters, carries no bound values."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError


def test_database_error_text_hides_bound_parameters(app):
    from app.extensions import db

    marker = "sealed-secret-ciphertext-canary"
    with app.app_context():
        with pytest.raises(DBAPIError) as failed:
            db.session.execute(text("SELECT no_such_column FROM tenants WHERE slug = :slug"), {"slug": marker})
        db.session.rollback()
    assert marker not in str(failed.value)
    assert "hidden" in str(failed.value).lower()
