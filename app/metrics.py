"""Prometheus metrics: what ops pages on.

Counters and histograms are written where things happen (HTTP requests, webhook deliveries,
Celery task runs, committed audit events); gauges that describe the system's state (cases by
state, the outbox backlog and its oldest row, dead letters, the beat heartbeat, the last audit
chain verification) are read from the database when `/metrics` is scraped.

Multiprocess mode: when `PROMETHEUS_MULTIPROC_DIR` names an empty, writable folder before the
processes start (`rekey run` prepares one; see README "Metrics" for the Procfile), every gunicorn
and Celery worker process writes its samples there and `/metrics` adds them up. A process that
exits is marked dead (gunicorn's `child_exit` hook in app/gunicorn_conf.py, Celery's
`worker_process_shutdown` signal), so its live gauges disappear while its counts stay.

Labels never carry a user, case, tenant, integration or request id: route templates, task
names, integration kinds, outcomes (error codes), audit action names and case states only.

`/metrics` is not served on the public port unless `REKEY_METRICS_TOKEN` is set, and then only
with `Authorization: Bearer <token>`; `REKEY_METRICS_BIND=host:port` serves it (no token) on a
separate address instead, for a scraper on a private network (`rekey metrics serve`).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_ROUTE_KEY = "rekey.route"
_AUDIT_PENDING = "rekey.metrics_audit_actions"

HTTP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

HTTP_REQUESTS = Histogram(
    "rekey_http_request_duration_seconds", "HTTP request latency by route template, method and status class.",
    ["route", "method", "status_class"], buckets=HTTP_BUCKETS)
WEBHOOK_DELIVERIES = Counter(
    "rekey_webhook_deliveries", "Inbound webhook deliveries by integration kind and outcome "
    "(accepted, repeat, or the error code of the refusal).", ["kind", "outcome"])
TASK_RUNS = Counter("rekey_task_runs", "Celery task runs by task and outcome (success, retry, failure).",
                    ["task", "outcome"])
TASK_DURATION = Histogram("rekey_task_duration_seconds", "Celery task run time by task.", ["task"],
                          buckets=TASK_BUCKETS)
TASK_RETRIES = Counter("rekey_task_retries", "Celery task retries scheduled, by task.", ["task"])
DEAD_LETTERS = Counter("rekey_dead_letters", "Tasks that failed for good and were dead-lettered, by task.",
                       ["task"])
AUDIT_EVENTS = Counter("rekey_audit_events", "Audit events committed, by action.", ["action"])
SIGNIN_FAILURES = Counter("rekey_signin_failures", "Failed sign-ins (committed auth.signin_failed events).")
LOCKOUTS = Counter("rekey_lockouts", "Accounts locked after repeated failures (auth.account_locked events).")
VERIFICATION_CALLS = Counter("rekey_verification_calls", "Verification calls by outcome.", ["outcome"])

# Audit actions that are also verification-call outcomes.
VERIFICATION_OUTCOMES = {
    "recovery.verification_call_placed": "placed",
    "recovery.verification_call_failed": "failed",
    "recovery.verification_call_limited": "limited",
    "recovery.verification_code_rejected": "code_rejected",
    "recovery.verified": "verified",
}


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def prepare_multiprocess_dir(path: str) -> str:
    """Create `path` and empty it of a previous run's sample files (before any process starts)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    return path


def mark_dead(pid: int) -> None:
    """Drop a finished process's live gauges (its counters stay: totals never go back)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# --- what is written where it happens -----------------------------------------------------------


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route=route, method=method, status_class=status_class(status)).observe(seconds)


def count_webhook(kind: str, status: int, body: Any) -> None:
    """One delivery's outcome: accepted (202), repeat (200) or the refusal's error code."""
    if status == 202:
        outcome = "accepted"
    elif status == 200:
        outcome = "repeat"
    else:
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        outcome = code if isinstance(code, str) and code.replace("_", "").isalnum() and len(code) <= 40 \
            else status_class(status)
    WEBHOOK_DELIVERIES.labels(kind=kind, outcome=outcome).inc()


def count_audit_actions(actions: Iterable[str]) -> None:
    for action in actions:
        AUDIT_EVENTS.labels(action=action).inc()
        if action == "auth.signin_failed":
            SIGNIN_FAILURES.inc()
        elif action == "auth.account_locked":
            LOCKOUTS.inc()
        outcome = VERIFICATION_OUTCOMES.get(action)
        if outcome is not None:
            VERIFICATION_CALLS.labels(outcome=outcome).inc()


class RequestTimer:
    """WSGI middleware: times every request (error handlers and commit failures included) and
    labels it with the route template the app matched (stashed in the environ)."""

    def __init__(self, app: Callable[..., Any]):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        started = time.perf_counter()
        seen: dict[str, int] = {}

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            seen["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, recording_start_response)
        finally:
            route = environ.get(_ROUTE_KEY, "unmatched")
            observe_request(route, environ.get("REQUEST_METHOD", "GET"), seen.get("status", 500),
                            time.perf_counter() - started)
            if route == "/v1/webhooks/<integration_id>" and environ.get("REQUEST_METHOD") == "POST":
                count_webhook(environ.get("rekey.integration_kind", "unknown"), seen.get("status", 500),
                              environ.get("rekey.webhook_body"))


# --- what is read from the database at scrape time ----------------------------------------------


class StateCollector(Collector):
    """Gauges from the database, read when scraped (inside the app's context)."""

    def __init__(self, app: Any):
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from app.ops import read_status

        with self.app.app_context():
            status = read_status()
        cases = GaugeMetricFamily("rekey_cases", "Recovery cases by state.", labels=["state"])
        for state, count in sorted(status["cases_by_state"].items()):
            cases.add_metric([state], count)
        yield cases
        yield GaugeMetricFamily("rekey_outbox_backlog", "Outbox rows not yet published to the broker.",
                                value=status["outbox"]["backlog"])
        yield GaugeMetricFamily("rekey_outbox_oldest_age_seconds",
                                "Age of the oldest unpublished outbox row (0 when none).",
                                value=status["outbox"]["oldest_age_seconds"] or 0.0)
        yield GaugeMetricFamily("rekey_dead_letters_open", "Dead letters not yet retried.",
                                value=status["dead_letters"]["open"])
        beat = status["beat"]["last_heartbeat_at"]
        yield GaugeMetricFamily("rekey_beat_heartbeat_timestamp_seconds",
                                "When the beat heartbeat task last ran (Unix time; 0 never).",
                                value=beat.timestamp() if beat else 0.0)
        check = status["audit_verification"]
        yield GaugeMetricFamily("rekey_audit_chain_verification_timestamp_seconds",
                                "When `rekey audit verify` last finished (Unix time; 0 never).",
                                value=check["at"].timestamp() if check else 0.0)
        yield GaugeMetricFamily("rekey_audit_chain_verification_ok",
                                "1 when the last chain verification found every chain intact, 0 when "
                                "one was broken, -1 when none has run.",
                                value=(1 if check["ok"] else 0) if check else -1)


def registry_for(app: Any) -> CollectorRegistry:
    """What `/metrics` shows: every process's samples (multiprocess mode) or this process's."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(StateCollector(app))
    return registry


class _ThisProcess(Collector):
    """The default registry's metrics (ours and the process collector's), single-process mode."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def render(app: Any) -> bytes:
    return generate_latest(registry_for(app))


# --- wiring ---------------------------------------------------------------------------------------


def _install_audit_counting(session_class: Any) -> None:
    from sqlalchemy import event

    from app.audit.models import AuditEvent

    def after_flush(session: Any, context: Any) -> None:
        actions = [obj.action for obj in session.new if isinstance(obj, AuditEvent)]
        if actions:
            session.info.setdefault(_AUDIT_PENDING, []).extend(actions)

    def after_commit(session: Any) -> None:
        count_audit_actions(session.info.pop(_AUDIT_PENDING, ()))

    def after_rollback(session: Any) -> None:
        session.info.pop(_AUDIT_PENDING, None)

    if not _HOOKS:
        _HOOKS.update(after_flush=after_flush, after_commit=after_commit, after_rollback=after_rollback)
        for name, fn in _HOOKS.items():
            event.listen(session_class, name, fn)


_HOOKS: dict[str, Any] = {}


def _install_task_signals() -> None:
    from celery import signals

    started: dict[str, float] = {}

    def prerun(task_id: str | None = None, **_: Any) -> None:
        if task_id:
            started[task_id] = time.perf_counter()

    def postrun(task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any) -> None:
        began = started.pop(task_id or "", None)
        name = getattr(task, "name", "unknown")
        if began is not None:
            TASK_DURATION.labels(task=name).observe(time.perf_counter() - began)
        outcome = {"SUCCESS": "success", "RETRY": "retry", "FAILURE": "failure"}.get(state or "", "other")
        TASK_RUNS.labels(task=name, outcome=outcome).inc()

    def retried(sender: Any = None, **_: Any) -> None:
        TASK_RETRIES.labels(task=getattr(sender, "name", "unknown")).inc()

    def failed(sender: Any = None, **_: Any) -> None:
        # FlaskTask.on_failure writes the dead letter for every failure that ends a task.
        DEAD_LETTERS.labels(task=getattr(sender, "name", "unknown")).inc()

    def process_shutdown(pid: int | None = None, **_: Any) -> None:
        mark_dead(pid or os.getpid())

    signals.task_prerun.connect(prerun, weak=False, dispatch_uid="rekey.metrics.prerun")
    signals.task_postrun.connect(postrun, weak=False, dispatch_uid="rekey.metrics.postrun")
    signals.task_retry.connect(retried, weak=False, dispatch_uid="rekey.metrics.retry")
    signals.task_failure.connect(failed, weak=False, dispatch_uid="rekey.metrics.failure")
    signals.worker_process_shutdown.connect(process_shutdown, weak=False, dispatch_uid="rekey.metrics.shutdown")


def metrics_allowed(settings: Any, authorization: str) -> bool:
    """The public app serves /metrics only with a configured token, presented as a bearer token."""
    token = getattr(settings, "metrics_token", "")
    if not token:
        return False
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def init_app(app: Any) -> None:
    """Time every request, count webhook deliveries, task runs and committed audit events, and
    serve `/metrics` behind REKEY_METRICS_TOKEN."""
    from flask import Response, g, request
    from flask_sqlalchemy.session import Session as FlaskSession

    from app.errors import error_response

    _install_audit_counting(FlaskSession)
    _install_task_signals()
    app.wsgi_app = RequestTimer(app.wsgi_app)

    @app.before_request
    def _route() -> None:
        if request.url_rule is not None:
            request.environ[_ROUTE_KEY] = request.url_rule.rule

    @app.after_request
    def _webhook(response: Any) -> Any:
        if request.environ.get(_ROUTE_KEY) == "/v1/webhooks/<integration_id>" and response.status_code >= 400:
            request.environ["rekey.webhook_body"] = response.get_json(silent=True)
        kind = g.get("integration_kind")
        if kind:
            request.environ["rekey.integration_kind"] = kind
        return response

    def metrics_view() -> Any:
        settings = app.extensions["rekey.settings"]
        if not getattr(settings, "metrics_token", ""):
            return error_response(404, "not_found", "Not found.")
        if not metrics_allowed(settings, request.headers.get("Authorization", "")):
            return error_response(401, "unauthenticated", "A bearer token is required.")
        return Response(render(app), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                        headers={"Cache-Control": "no-store"})

    app.add_url_rule("/metrics", "rekey_metrics", metrics_view, methods=["GET"])


def serve(app: Any, address: str) -> int:
    """`rekey metrics serve`: /metrics alone, no token, on `address` (host:port), until a signal."""
    import signal

    from werkzeug.serving import make_server
    from werkzeug.wrappers import Request, Response

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        print(f"rekey: REKEY_METRICS_BIND must be host:port, got {address!r}", flush=True)  # noqa: T201
        return 2

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path != "/metrics":
            answer = Response("not found\n", status=404, mimetype="text/plain")
        else:
            answer = Response(render(app), mimetype=CONTENT_TYPE_LATEST.split(";")[0])
        return answer(environ, start_response)

    server = make_server(host.strip("[]"), int(port), wsgi, threaded=True)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"rekey metrics: serving http://{address}/metrics", flush=True)  # noqa: T201
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0
