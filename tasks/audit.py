import uuid

from celery import shared_task

from app.audit.forwarding import forward_event


@shared_task(name="rekey.audit.forward")
def forward(event_id: str) -> bool:
    """Forward one audit event to the configured SIEM sink, once."""
    return forward_event(uuid.UUID(event_id))
