from celery import shared_task

from app.jobs.services import relay_pending


@shared_task(name="rekey.outbox.relay", acks_late=False, max_retries=0, autoretry_for=())
def relay() -> int:
    """Beat sweep: publish outbox rows whose after-commit publish did not happen."""
    return relay_pending()
