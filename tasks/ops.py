from celery import shared_task

from app.ops import BEAT, set_mark


@shared_task(name="rekey.ops.heartbeat")
def heartbeat() -> bool:
    """Beat schedules this every 30 s: its mark proves beat, the broker and a worker alive."""
    set_mark(BEAT, ok=True)
    return True
