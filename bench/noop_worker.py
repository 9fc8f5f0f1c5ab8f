"""A Celery app with Rekey's worker settings (acks late, reject on worker loss, prefetch 1,
JSON) and one task that does nothing: the pipeline benchmark's baseline.

    celery -A bench.noop_worker worker -P prefork -c 2 -Q bench-noop
"""

from __future__ import annotations

import os

from celery import Celery

celery = Celery("bench_noop", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/1"))
celery.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                   task_ignore_result=True, task_serializer="json", accept_content=["json"],
                   task_default_queue="bench-noop", worker_hijack_root_logger=False)


@celery.task(name="bench.noop")
def noop(case_id: str) -> None:
    """Nothing: the broker round trip, ack and prefork dispatch alone."""
