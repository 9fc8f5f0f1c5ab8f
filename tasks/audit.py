import uuid

from celery import shared_task

from app.audit.forwarding import forward_event


@shared_task(name="rekey.audit.forward")
def forward(event_id: str) -> bool:
    """Forward one audit event to the configured SIEM sink, once."""
    return forward_event(uuid.UUID(event_id))


@shared_task(name="rekey.audit.forward_checkpoint")
def forward_checkpoint(record: dict) -> bool:  # type: ignore[type-arg]
    """Send one signed checkpoint to the SIEM sink, once."""
    from app.audit.forwarding import forward_checkpoint as send_checkpoint

    return send_checkpoint(record)


@shared_task(name="rekey.audit.checkpoint")
def checkpoint() -> int:
    """Beat (every 5 minutes): sign a checkpoint for every tenant whose chain moved. A tenant
    whose checkpoint file does not verify is logged as an error and left as it is."""
    import structlog
    from flask import current_app

    from app.audit.checkpoints import write_checkpoints

    result = write_checkpoints(current_app.extensions["rekey.settings"])
    for problem in result.refused:
        structlog.get_logger(__name__).error("audit_checkpoint_refused", problem=problem)
    return len(result.written)
