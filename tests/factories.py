"""Factories: every test builds its own tenant, so tests never see each other's rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
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
        self.app = app

    def tenant(self, **settings: Any) -> Tenant:
        with self.app.app_context():
            tenant = create_tenant(slug=f"t-{uuid.uuid4().hex[:12]}", settings=settings)
            db.session.commit()
            db.session.refresh(tenant)
            db.session.expunge(tenant)
            return tenant

    def agent(self, tenant: Tenant, role: str = "support_agent") -> AgentLogin:
        with self.app.app_context():
            agent, token = create_agent(db.session.get(Tenant, tenant.id),
                                        email=f"{role}-{uuid.uuid4().hex[:8]}@staff.test", name=role, role=role)
            db.session.commit()
            db.session.refresh(agent)
            db.session.expunge(agent)
            return AgentLogin(agent, token)

    def user(self, tenant: Tenant, *, email: str | None = None, password: str | None = PASSWORD,
             phones: list[tuple[str, datetime | None]] | None = None,
             federated: list[tuple[str, str, datetime | None]] | None = None,
             privileged: bool = False, email_added_at: datetime | None = None) -> User:
        with self.app.app_context():
            user = create_user(
                db.session.get(Tenant, tenant.id),
                email=email or f"user-{uuid.uuid4().hex[:8]}@example.com",
                actor=Actor.system(tenant.id), password=password,
                phones=[PhoneSpec(n, at) for n, at in (phones or [])],
                federated=[FederatedSpec(i, s, at) for i, s, at in (federated or [])],
                privileged=privileged, email_added_at=email_added_at,
            )
            db.session.commit()
            db.session.refresh(user)
            db.session.expunge(user)
            return user
