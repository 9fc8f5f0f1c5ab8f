"""Accounts tasks: ids in (or none), one service call each."""

from __future__ import annotations

from celery import shared_task

from app.accounts.signin import purge_expired


@shared_task(name="rekey.accounts.purge_signins")
def purge_signins() -> int:
    """Beat: forget expired pending sign-ins and WebAuthn challenges."""
    return purge_expired()
