"""gunicorn settings the Procfile loads (`--config python:app.gunicorn_conf`): in Prometheus
multiprocess mode a worker that exits is marked dead, so its live gauges go with it.

Imported by gunicorn's master before any worker starts; the hook imports nothing late (it runs
in a signal handler, where a first import could be re-entered by the next worker's exit)."""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import multiprocess


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)
