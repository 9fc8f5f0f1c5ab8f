"""The Celery app, bound to the Flask app: every task runs in an app context and its database
work is committed once by the task wrapper (services only flush)."""

from __future__ import annotations

from typing import Any

import requests
from celery import Celery, Task
from flask import Flask
from sqlalchemy.exc import OperationalError

from app.config import Settings
from integrations.base import TransientDeliveryError

# Errors worth another try: the network, a dropped database connection, a peer's 5xx/429
# (integrations raise TransientError for those). Anything else is a bug or a refusal.
class TransientError(Exception):
    """A failure that may pass: retried with exponential backoff and jitter."""

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


TRANSIENT = (TransientError, TransientDeliveryError, requests.ConnectionError, requests.Timeout, OperationalError,
             ConnectionError, TimeoutError)

# Every retry countdown stays far below the broker's visibility timeout, and so does the task
# time limit: otherwise Redis redelivers a running task to a second worker.
VISIBILITY_TIMEOUT = 3600
TASK_TIME_LIMIT = 300
RETRY_BACKOFF_MAX = 600
MAX_RETRIES = 8


def broker_url(settings: Settings) -> str:
    return settings.broker_url or settings.redis_url


def celery_config(settings: Settings) -> dict[str, Any]:
    transport = {"visibility_timeout": VISIBILITY_TIMEOUT}
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
            "purge-deliveries": {"task": "rekey.intake.purge_deliveries", "schedule": 3600.0},
        },
        "timezone": "UTC",
    }


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    """Create the Celery app for this Flask app (Flask's documented pattern)."""

    class FlaskTask(Task):  # type: ignore[misc]
        abstract = True
        acks_late = True
        reject_on_worker_lost = True
        autoretry_for = TRANSIENT
        retry_backoff = 2
        retry_backoff_max = RETRY_BACKOFF_MAX
        retry_jitter = True
        max_retries = MAX_RETRIES

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from app.extensions import db

            with app.app_context():
                try:
                    result = self.run(*args, **kwargs)
                    db.session.commit()
                    return result
                except BaseException:
                    db.session.rollback()
                    raise
                finally:
                    db.session.remove()

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.config_from_object(celery_config(settings))
    celery.set_default()
    app.extensions["celery"] = celery
    import tasks.outbox  # noqa: F401  (registers the shared tasks)
    import tasks.recovery  # noqa: F401

    return celery
