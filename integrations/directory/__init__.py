"""The Directory seam: every effect Rekey has on a user goes through one of these, one per tenant.

The built-in directory keeps users in Rekey's own tables; an external one (privacyIDEA, Keycloak, ...) drives the MFA
server a company already has. Nothing here is vendor-specific: an adapter maps its backend onto these calls, makes each
call idempotent (a factor already gone is success; a `reference` names an issued secret so a retry replaces it rather
than adding a second one), and maps the backend's failures onto the two errors below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


class DirectoryError(Exception):
    """A backend call failed. `transient` failures are retried with backoff; the others dead-letter."""

    transient = False


class TransientDirectoryError(DirectoryError):
    """Timeouts, connection refused, 5xx, 429: worth retrying."""

    transient = True


class PermanentDirectoryError(DirectoryError):
    """Bad credentials, unknown user or realm, a request the backend refuses: retrying changes nothing."""


@dataclass(frozen=True)
class DirectoryUser:
    external_id: str  # the backend's own stable id (privacyIDEA: the username in its realm)
    email: str
    display_name: str = ""
    suspended: bool = False


@dataclass(frozen=True)
class Factor:
    reference: str  # the backend's id for it (a token serial, a credential id)
    kind: str  # totp | hotp | webauthn | sms | email | tan | paper | registration | ...
    label: str = ""
    active: bool = True
    created_at: datetime | None = None


@dataclass(frozen=True)
class ContactChannel:
    kind: str  # phone | email
    value: str
    added_at: datetime | None = None  # None: the backend keeps no date (Rekey records when it first saw it)


@dataclass(frozen=True)
class SigninRecord:
    at: datetime
    outcome: str  # success | failure
    ip: str | None = None  # None: the backend's log carries no client address


@dataclass(frozen=True)
class UserDescription:
    user: DirectoryUser
    factors: tuple[Factor, ...] = ()
    backup_codes_remaining: int | None = None  # None: unknown to the backend
    channels: tuple[ContactChannel, ...] = ()
    federated: tuple[tuple[str, str], ...] = ()  # (issuer, subject)
    signins: tuple[SigninRecord, ...] | None = None  # None: the backend has no sign-in history to give
    facts: dict[str, str] = field(default_factory=dict)  # backend notes shown to agents (no secrets)


@dataclass(frozen=True)
class ResetResult:
    removed: tuple[str, ...]  # references of the factors removed by this call (empty on a repeat)
    # Optional, non-secret counts for the audit event (the built-in directory's factors, codes,
    # sessions and devices; an adapter may leave it empty).
    details: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class IssuedSecret:
    reference: str  # the backend's id for it (a tan token serial, a registration token serial)
    secrets: tuple[str, ...]  # the codes, or the one temporary password: sealed at once, never logged
    expires_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)  # optional, non-secret facts for the audit event


@runtime_checkable
class Directory(Protocol):
    kind: str  # builtin | privacyidea | keycloak | ...

    def find_user(self, *, email: str | None = None, external_id: str | None = None) -> DirectoryUser | None: ...

    def describe(self, external_id: str) -> UserDescription: ...

    def reset_factors(self, external_id: str) -> ResetResult:
        """Remove every second factor and backup code of the user (listing them first: the result names them)."""
        ...

    def issue_backup_codes(self, external_id: str, *, reference: str, count: int) -> IssuedSecret:
        """Issue one-time backup codes under `reference`; called again with it, replaces them (never two sets)."""
        ...

    def set_temporary_password(self, external_id: str, *, reference: str) -> IssuedSecret:
        """A single-use temporary password (or the backend's equivalent) under `reference`, as above."""
        ...

    def suspend(self, external_id: str) -> None: ...

    def reactivate(self, external_id: str) -> None: ...

    def revoke_sessions(self, external_id: str) -> bool:
        """End the user's sessions; False when the backend has no sessions to revoke (documented per adapter)."""
        ...

    def enrolled_since(self, external_id: str, since: datetime) -> tuple[Factor, ...]:
        """Active factors enrolled at or after `since`: how Rekey learns that a user enrolled again (polled)."""
        ...
