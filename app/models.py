"""Imports every model so the metadata (Alembic, tests) sees the whole schema."""

from app.accounts.models import (  # noqa: F401
    BackupCode,
    Channel,
    FederatedIdentity,
    MfaFactor,
    Note,
    PasswordIdentity,
    PendingSignin,
    RememberedDevice,
    SigninAttempt,
    User,
    UserSession,
    WebAuthnChallenge,
    WebAuthnCredential,
)
from app.audit.models import AuditEvent, AuditHead  # noqa: F401
from app.console.models import (  # noqa: F401
    AgentFactor,
    AgentInvitation,
    AgentPassword,
    AgentSession,
    AgentSigninAttempt,
)
from app.federation.models import FederatedSignin, IdentityProvider  # noqa: F401
from app.intake.models import Integration, WebhookDelivery  # noqa: F401
from app.jobs.models import DeadLetter, Effect, OutboxMessage  # noqa: F401
from app.recovery.models import (  # noqa: F401
    CaseAction,
    Evidence,
    RecoveryCase,
    RecoveryLink,
    VerificationCall,
)
from app.tenants.models import Agent, AgentIdentity, AgentToken, Tenant, TenantDirectory  # noqa: F401
