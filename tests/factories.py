"""Factories: every test builds its own tenant, so tests never see each other's rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.accounts.models import User
from app.accounts.services import FederatedSpec, PhoneSpec, create_user
from app.actor import Actor
from app.extensions import db
from app.tenants.models import Agent, Tenant
from app.tenants.services import create_agent, create_tenant

PASSWORD = "correct horse battery staple"
PHONE = "+14155552671"


@dataclass
class AgentLogin:
    agent: Agent
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Factory:
    def __init__(self, app: Any):
        from app.extensions import utcnow

        self.app = app
        self.started_at = utcnow()
        self._drained: set[uuid.UUID] = set()
        # Every credential this factory handed out (agent tokens, signing secrets), for the
        # tests that check no secret leaks into audit rows, task arguments, tickets or logs.
        self.secrets: list[str] = []

    def tenant(self, name: str | None = None, **settings: Any) -> Tenant:
        with self.app.app_context():
            tenant = create_tenant(slug=f"t-{uuid.uuid4().hex[:12]}", name=name, settings=settings)
            db.session.commit()
            db.session.refresh(tenant)
            db.session.expunge(tenant)
            return tenant

    def agent(self, tenant: Tenant, role: str = "support_agent", *, email: str | None = None,
              **links: Any) -> AgentLogin:
        """An agent and its token; `links` are `external_id` and `federated` [(issuer, subject)]."""
        with self.app.app_context():
            agent, token = create_agent(db.session.get(Tenant, tenant.id),
                                        email=email or f"{role}-{uuid.uuid4().hex[:8]}@staff.test", name=role,
                                        role=role, **links)
            db.session.commit()
            db.session.refresh(agent)
            db.session.expunge(agent)
            self.secrets.append(token)
            return AgentLogin(agent, token)

    def user(self, tenant: Tenant, *, email: str | None = None, password: str | None = PASSWORD,
             phones: list[tuple[str, datetime | None]] | None = None,
             federated: list[tuple[str, str, datetime | None]] | None = None,
             privileged: bool = False, email_added_at: datetime | None = None,
             external_id: str | None = None, display_name: str = "") -> User:
        with self.app.app_context():
            user = create_user(
                db.session.get(Tenant, tenant.id),
                email=email or f"user-{uuid.uuid4().hex[:8]}@example.com",
                actor=Actor.system(tenant.id), password=password,
                phones=[PhoneSpec(n, at) for n, at in (phones or [])],
                federated=[FederatedSpec(i, s, at) for i, s, at in (federated or [])],
                privileged=privileged, email_added_at=email_added_at, external_id=external_id,
                display_name=display_name,
            )
            db.session.commit()
            db.session.refresh(user)
            db.session.expunge(user)
            return user


LONG_AGO = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


class RecoveryFactory(Factory):
    """Builders for recovery tests: integrations, long-standing users, signed requests."""

    def integration(self, tenant: Tenant, kind: str = "standard", **kw: Any) -> tuple[Any, str]:
        from app.intake.services import create_integration

        with self.app.app_context():
            integration, secret = create_integration(db.session.get(Tenant, tenant.id), kind=kind,
                                                     name=f"{kind}-{uuid.uuid4().hex[:6]}", **kw)
            db.session.commit()
            db.session.refresh(integration)
            db.session.expunge(integration)
            self.secrets.append(secret)
            return integration, secret

    def settled_user(self, tenant: Tenant, **kw: Any) -> User:
        """A user whose email and phone have been on file for a long time (no risk flags)."""
        kw.setdefault("phones", [(PHONE, LONG_AGO)])
        kw.setdefault("email_added_at", LONG_AGO)
        return self.user(tenant, **kw)

    def request_recovery(self, client: Any, integration: Any, secret: str, email: str, *,
                         text: str = "I lost my phone and cannot sign in.",
                         msg_id: str | None = None) -> Any:
        from tests.signing import body_of, standard_headers

        body = body_of({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                        "data": {"user_email": email, "ticket_id": f"T-{uuid.uuid4().hex[:6]}",
                                 "requester_email": email, "subject": "Lost phone", "text": text}})
        return client.post(f"/v1/webhooks/{integration.id}", data=body,
                           headers=standard_headers(secret, body, msg_id=msg_id))

    def run_screen(self, case_id: str) -> str:
        """What the screen task does, run in-process (the worker tests run the real thing)."""
        from app.recovery.cases import screen_case

        with self.app.app_context():
            case = screen_case(uuid.UUID(case_id))
            db.session.commit()
            return case.state if case else "missing"

    def forget_tasks(self) -> None:
        """Never run the tasks queued so far (as if the broker lost them)."""
        from sqlalchemy import select

        from app.jobs.models import OutboxMessage

        with self.app.app_context():
            self._drained.update(db.session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.created_at >= self.started_at)).all())

    def drain_tasks(self, *, rounds: int = 10) -> list[str]:
        """Run, in this process, every task the outbox queued since this factory was made, until
        none is left: the same task code the worker runs, without a broker (the worker tests
        run the real thing)."""
        from sqlalchemy import select

        from app.jobs.models import OutboxMessage

        ran: list[str] = []
        celery = self.app.extensions["celery"]
        for _ in range(rounds):
            with self.app.app_context():
                rows = db.session.execute(
                    select(OutboxMessage.id, OutboxMessage.task, OutboxMessage.kwargs)
                    .where(OutboxMessage.created_at >= self.started_at).order_by(OutboxMessage.created_at)
                ).all()
            todo = [r for r in rows if r.id not in self._drained]
            if not todo:
                return ran
            for row in todo:
                self._drained.add(row.id)
                celery.tasks[row.task](**row.kwargs)
                ran.append(row.task)
        raise AssertionError(f"tasks kept queueing more tasks: {ran[-20:]}")
