"""The Celery app, bound to the Flask app: every task runs in an app context and its database
work is committed once by the task wrapper (services only flush).

Reliability defaults (shared/reference/WEBHOOKS-AND-CELERY.md §4): late acks and reject on
worker loss (a killed worker's task runs again, so every task is idempotent); prefetch 1; a
time limit far below the broker's visibility timeout; transient errors retried with
exponential backoff and full jitter (or the peer's Retry-After); then a dead-letter row.
"""

from __future__ import annotations

import random
from typing import Any

import requests
import structlog
from celery import Celery, Task
from flask import Flask
from sqlalchemy.exc import OperationalError

from app.config import Settings
from integrations.base import TransientDeliveryError
from integrations.directory import TransientDirectoryError

log = structlog.get_logger(__name__)


class TransientError(Exception):
    """A failure that may pass: retried with exponential backoff and jitter."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# Worth another try: the network, a dropped database connection, a peer's 5xx/429/timeout.
TRANSIENT = (TransientError, TransientDeliveryError, requests.ConnectionError, requests.Timeout,
             OperationalError, ConnectionError, TimeoutError, TransientDirectoryError)

VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 300
RETRY_BACKOFF_MAX = 600


def broker_url(settings: Settings) -> str:
    return settings.broker_url or settings.redis_url


def transport_options(url: str) -> dict[str, Any]:
    """Broker transport options. kombu's SQLAlchemy transport (the embedded broker of `rekey run`)
    hands its options to `create_engine`, so it gets only what an engine accepts."""
    if url.startswith("sqla+"):
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": VISIBILITY_TIMEOUT}


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = transport_options(broker_url(settings))
    return {
        "broker_url": broker_url(settings),
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_TIME_LIMIT,
        "task_soft_time_limit": TASK_TIME_LIMIT - 30,
        "worker_hijack_root_logger": False,
        "worker_soft_shutdown_timeout": 10,
        "beat_schedule": {
            "relay-outbox": {"task": "rekey.outbox.relay", "schedule": 10.0},
            "expire-cases": {"task": "rekey.recovery.expire_cases", "schedule": 60.0},
            "run-scheduled-resets": {"task": "rekey.recovery.run_scheduled", "schedule": 60.0},
            "requeue-stalled": {"task": "rekey.recovery.requeue_stalled", "schedule": 300.0},
            "expire-sealed-secrets": {"task": "rekey.recovery.expire_sealed_secrets", "schedule": 600.0},
            "purge-deliveries": {"task": "rekey.intake.purge_deliveries", "schedule": 3600.0},
            "purge-signins": {"task": "rekey.accounts.purge_signins", "schedule": 3600.0},
            "audit-checkpoint": {"task": "rekey.audit.checkpoint", "schedule": 300.0},
            "poll-directory-enrolments": {"task": "rekey.recovery.poll_enrolments", "schedule": 60.0},
            "sync-directories": {"task": "rekey.directory.sync", "schedule": 3600.0},
        },
        "timezone": "UTC",
    }


def retry_countdown(retries: int, *, base: float, retry_after: float | None = None) -> float:
    """The peer's Retry-After if it gave one, else exponential backoff with full jitter."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), RETRY_BACKOFF_MAX)
    return random.uniform(0, min(RETRY_BACKOFF_MAX, base * (2 ** retries)))  # noqa: S311


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Create the Celery app for this Flask app (Flask's documented pattern)."""

    class FlaskTask(Task):  # type: ignore[misc]
        abstract = True
        acks_late = True
        reject_on_worker_lost = True
        max_retries = settings.task_max_retries

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from app.extensions import db

            with app.app_context():
                try:
                    result = self.run(*args, **kwargs)
                    db.session.commit()
                    return result
                except TRANSIENT as exc:
                    db.session.rollback()
                    if self.request.called_directly:
                        raise
                    countdown = retry_countdown(self.request.retries, base=settings.task_retry_base_seconds,
                                                retry_after=getattr(exc, "retry_after", None))
                    log.warning("task_retry", task=self.name, error=type(exc).__name__,
                                retries=self.request.retries, countdown=round(countdown, 2))
                    # Past max_retries this re-raises `exc`: the task fails and is dead-lettered.
                    raise self.retry(exc=exc, countdown=countdown) from exc
                except BaseException:
                    db.session.rollback()
                    raise
                finally:
                    db.session.remove()

        def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
            from app.extensions import db
            from app.jobs.services import record_dead_letter

            with app.app_context():
                try:
                    record_dead_letter(self.name, dict(kwargs or {}), task_id, exc, self.request.retries)
                    db.session.commit()
                finally:
                    db.session.remove()

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_config(settings))
    celery.set_default()
    app.extensions["celery"] = celery
    _refuse_beat_without_signing_key(settings)
    import tasks.accounts  # noqa: F401  (registers the shared tasks)
    import tasks.audit  # noqa: F401
    import tasks.outbox  # noqa: F401
    import tasks.recovery  # noqa: F401

    return celery


def _refuse_beat_without_signing_key(settings: Settings) -> None:
    """Production's beat schedules the signed audit checkpoints: it refuses to start when the
    checkpoint writer could not sign them (the web process needs no key and never checks)."""
    from celery.signals import beat_init

    def check(**_: Any) -> None:
        from app.audit.checkpoints import load_signing_key

        if settings.is_production:
            load_signing_key(settings)  # raises SigningKeyError, naming REKEY_AUDIT_SIGNING_KEY

    beat_init.connect(check, weak=False)
