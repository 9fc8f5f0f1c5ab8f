"""Users, sessions, notes and the admin's view of a user."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.accounts import services
from app.accounts.models import Note, UserSession
from app.actor import Actor
from app.crypto import token_digest
from app.errors import NotFound, RuleRefused, Unauthenticated, ValidationFailed
from app.extensions import db
from tests.factories import PHONE
from tests.flows import audit_rows, session_token

pytestmark = pytest.mark.usefixtures("cached_password_hashes")

ADDED = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)


def _agent_actor(login) -> Actor:
    return Actor(
        type="agent",
        id=str(login.agent.id),
        tenant_id=login.agent.tenant_id,
        role=login.agent.role,
        ip="192.0.2.50",
        request_id="req-note",
    )


class TestNormalisation:
    def test_normalize_email_folds_case_and_width(self):
        assert services.normalize_email("  Alice@Example.COM ") == "alice@example.com"
        assert (
            services.normalize_email("\uff41lice@example.com") == "alice@example.com"
        )  # fullwidth a

    @pytest.mark.parametrize(
        "raw", ["alice", "alice@", "al ice@example.com", "al\u0456ce@example.com"]
    )
    def test_normalize_email_refuses_what_is_not_a_plain_address(self, raw):
        with pytest.raises(ValidationFailed):
            services.normalize_email(raw)

    def test_normalize_phone_gives_e164_and_mask_hides_the_middle(self):
        e164 = services.normalize_phone("+1 (415) 555-2671")
        assert e164 == "+14155552671"
        assert services.mask_phone(e164) == "+141******71"

    def test_create_user_refuses_a_second_account_for_the_same_email(self, app, factory):
        tenant = factory.tenant()
        factory.user(tenant, email="dup@example.com")

        with pytest.raises(ValidationFailed):
            factory.user(tenant, email="DUP@example.com")
        assert factory.user(factory.tenant(), email="dup@example.com")  # another tenant may


class TestGetUser:
    def test_get_user_of_another_tenant_is_not_found(self, app, factory):
        user = factory.user(factory.tenant())
        other = factory.tenant()

        with app.app_context(), pytest.raises(NotFound):
            services.get_user(other.id, user.id)

    @pytest.mark.parametrize("raw", ["not-a-uuid", "", "1" * 200, str(uuid.uuid4())],
                             ids=["not-a-uuid", "empty", "overlong", "unknown"])
    def test_get_user_with_a_malformed_or_unknown_id_is_not_found(self, app, world, raw):
        with app.app_context(), pytest.raises(NotFound):
            services.get_user(world.tenant.id, raw)


class TestSessions:
    def test_session_expired_or_revoked_is_not_valid(self, app, factory):
        user = factory.user(factory.tenant())
        expired, revoked = session_token(app, user), session_token(app, user)
        with app.app_context():
            db.session.execute(
                update(UserSession)
                .where(UserSession.digest == token_digest(expired))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            services.revoke_sessions(
                user.id,
                except_id=db.session.scalars(
                    select(UserSession.id).where(UserSession.digest == token_digest(expired))
                ).one(),
            )
            db.session.commit()

            for token in (expired, revoked, "rk_sess_made-up"):
                with pytest.raises(Unauthenticated):
                    services.authenticate_session(token, restricted_ok=True)


class TestDescribeUser:
    def test_describe_user_shows_channels_with_added_at_and_masks_phones(self, app, factory):
        tenant = factory.tenant()
        agent = factory.agent(tenant)
        user = factory.user(
            tenant, phones=[(PHONE, ADDED)], federated=[("https://idp.example.com", "sub-1", ADDED)]
        )

        with app.app_context():
            detail = services.describe_user(_agent_actor(agent), str(user.id))

        phone = next(c for c in detail["channels"] if c["kind"] == "phone")
        assert phone["value"] == "+141******71"
        assert phone["added_at"] == ADDED
        assert PHONE not in repr(detail)
        assert detail["identities"][0]["linked_at"] == ADDED
        assert detail["backup_codes"] == {"remaining": 0, "label": "0 remaining"}
        assert detail["factors"] == []


class TestNotes:
    def test_note_is_stored_and_audited_with_the_agent_request_and_ip(self, app, factory):
        tenant = factory.tenant()
        agent = factory.agent(tenant)
        user = factory.user(tenant)

        with app.app_context():
            note = services.add_note(
                _agent_actor(agent),
                user.id,
                "Caller could not\x07 answer;\r\nrefused per runbook, ticket ZD-4411.",
            )
            db.session.commit()
            body = note.body

        assert body == "Caller could not  answer; \nrefused per runbook, ticket ZD-4411."
        [event] = audit_rows(app, tenant.id, "note.added")
        assert (event.actor_type, event.actor_id) == ("agent", str(agent.agent.id))
        assert (event.request_id, event.source_ip) == ("req-note", "192.0.2.50")
        assert event.target_user_id == user.id
        assert event.reason == body

    @pytest.mark.parametrize(
        "text",
        [
            "user read me 492817 over the phone",
            "code was 492 817",
            "code 49281733",
            "backup code abcde-fghij-klmno-pqrst",
            "backup code ABCDE FGHIJ KLMNO PQRST",
            "backup code abcd2 fghij klmn3 pqrst",
            "compact abcd2fghijklmnopqrs7 typed",
            "called +1 415 555 2671, no answer",
            "new number is +447911123456",
        ],
    )
    def test_note_that_looks_like_a_code_is_refused_and_nothing_written(self, app, world, text):
        tenant, agent, user = world.tenant, world.agent, world.user

        with app.app_context():
            with pytest.raises(RuleRefused):
                services.add_note(_agent_actor(agent), user.id, text)
            db.session.rollback()
            assert db.session.scalars(select(Note).where(Note.user_id == user.id)).all() == []
        assert audit_rows(app, tenant.id, "note.added") == []

    @pytest.mark.parametrize(
        "text",
        [
            "Called the number on file on 2026-05-01 at 14:30; no answer.",
            "Ticket ZD-12345, escalated to the senior admin.",
            "User says the old phone was lost in transit.",
            "Users think these codes expire; explained internationalization of the app.",
            "Called +141******71 (the number on file since 2024).",
        ],
    )
    def test_note_with_ordinary_text_is_accepted(self, app, world, text):
        with app.app_context():
            assert services.add_note(_agent_actor(world.agent), world.user.id, text).body == text
            db.session.rollback()

    def test_note_for_a_user_of_another_tenant_is_not_found(self, app, factory):
        agent = factory.agent(factory.tenant())
        user = factory.user(factory.tenant())

        with app.app_context(), pytest.raises(NotFound):
            services.add_note(_agent_actor(agent), user.id, "hello")
