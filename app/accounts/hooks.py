"""What accounts tells the recovery layer above it, without importing it.

Accounts sits below recovery: a user's enrolment closes their recovery case (runbook step 4)
and a backup-code sign-in during a case opens only re-enrolment, but accounts must not reach up
to find the case. Recovery registers a `RecoveryPort` when the app is built; with none
registered (a bare accounts test), there is no case to tell.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Protocol

from flask import current_app

if TYPE_CHECKING:
    from app.accounts.models import User
    from app.actor import Actor

_KEY = "rekey.recovery_port"


class RecoveryPort(Protocol):
    def lock_case_for_enrolment(self, user: User) -> uuid.UUID | None:
        """Lock the user's case that an enrolment now would complete; its id, or None.
        Called before the factor rows are locked: the case comes first in every lock order."""

    def factor_enrolled(self, case_id: uuid.UUID, user: User, actor: Actor) -> None:
        """The user enrolled a factor while the (locked) case awaited it: close the loop."""

    def in_recovery(self, user: User) -> bool:
        """Whether the user has an open recovery case."""


class _NoRecovery:
    def lock_case_for_enrolment(self, user: User) -> uuid.UUID | None:
        return None

    def factor_enrolled(self, case_id: uuid.UUID, user: User, actor: Actor) -> None:
        return None

    def in_recovery(self, user: User) -> bool:
        return False


def register(app: object, port: RecoveryPort) -> None:
    """Install the recovery layer's port on the app (called by `create_app`)."""
    app.extensions[_KEY] = port  # type: ignore[attr-defined]


def recovery() -> RecoveryPort:
    """The registered port, or one that knows of no case."""
    port: RecoveryPort = current_app.extensions.get(_KEY) or _NoRecovery()
    return port
