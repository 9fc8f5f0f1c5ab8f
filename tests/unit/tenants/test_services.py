"""Tenant settings: every value is checked when the tenant is created, so a typo fails at the
operator's terminal and not in the middle of a recovery (issue 8, items 10 and 19)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from app.errors import ValidationFailed
from app.extensions import db
from app.tenants.models import Tenant
from app.tenants.services import create_tenant


def _create(app, **settings):
    """The created tenant's effective settings (stored, else the defaults)."""
    from app.tenants.models import DEFAULT_TENANT_SETTINGS

    with app.app_context():
        try:
            tenant = create_tenant(slug=f"t-{uuid.uuid4().hex[:12]}", settings=settings)
            db.session.commit()
            return {name: tenant.setting(name) for name in DEFAULT_TENANT_SETTINGS}.__getitem__
        finally:
            db.session.rollback()


def _tenants(app) -> int:
    with app.app_context():
        return len(db.session.scalars(select(Tenant.id)).all())


@pytest.mark.parametrize("zone", ["UTC", "Asia/Singapore", "America/Argentina/Buenos_Aires", "Pacific/Pitcairn"])
def test_an_iana_time_zone_is_accepted(app, zone):
    assert _create(app, time_zone=zone)("time_zone") == zone


def test_time_zone_defaults_to_utc(app):
    assert _create(app)("time_zone") == "UTC"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", " UTC", "utc ", "../../etc/passwd", "/etc/localtime",
                                  "Europe/Paris\x00", "+08:00", "GMT+8 ", 8, None, ["UTC"], "A" * 5000])
def test_a_time_zone_that_is_no_iana_name_is_refused_and_nothing_is_created(app, zone):
    before = _tenants(app)

    with pytest.raises(ValidationFailed) as refused:
        _create(app, time_zone=zone)

    assert refused.value.details["setting"] == "time_zone"
    assert _tenants(app) == before


@pytest.mark.parametrize("name", ["verification_calls_per_case_per_hour", "verification_calls_per_agent_per_hour",
                                  "verification_texts_per_tenant_per_hour"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "3", True, None, 10**9])
def test_a_limit_must_be_a_whole_number_from_one_to_a_million(app, name, value):
    with pytest.raises(ValidationFailed) as refused:
        _create(app, **{name: value})

    assert refused.value.details["setting"] == name


@pytest.mark.parametrize("name, value", [("reset_cooldown_hours", "4"), ("reset_cooldown_hours", -1),
                                         ("privileged_requires_two_evidence_types", "yes"),
                                         ("verification_ttl_hours", [72]), ("strict_two_evidence_types", 1)])
def test_a_setting_of_the_wrong_kind_is_refused(app, name, value):
    with pytest.raises(ValidationFailed) as refused:
        _create(app, **{name: value})

    assert refused.value.details["setting"] == name


def test_settings_of_the_right_kind_are_kept(app):
    setting = _create(app, reset_cooldown_hours=0.5, verification_calls_per_case_per_hour=5,
                      strict_two_evidence_types=True)

    assert (setting("reset_cooldown_hours"), setting("verification_calls_per_case_per_hour"),
            setting("strict_two_evidence_types")) == (0.5, 5, True)
