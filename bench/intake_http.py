"""Intake over HTTP under load, and the pipeline behind it, against the physical limits of
the same machine, in one run (issue 12, item 1, first two bullets).

    .venv/bin/python bench/intake_http.py                  # make bench runs it
    .venv/bin/python bench/intake_http.py --seconds 5      # shorter
    .venv/bin/python bench/intake_http.py --profile        # pyinstrument over 300 in-process deliveries

Intake: gunicorn as the Procfile starts it (sync workers, access log to stdout), 2 workers, on
loopback. Signed Standard Webhooks deliveries, each for a distinct user, pre-signed before the
clock starts, posted by 16 connections (2 processes x 8 threads) for a bounded time: that is the
peak; then the same at half of that rate (paced, open loop). Against, in the same run and the same
gunicorn setup: (a) a bare Flask endpoint doing one INSERT and commit on the same PostgreSQL
database, (b) a bare endpoint answering 202. Ratios are reported, not absolute times.

Pipeline: the cases the intake run left `received` (their screen tasks waiting in Redis) are
screened by the real worker (`celery -A tasks.worker worker`, prefork, 2 processes; acks late,
prefetch 1), timed between 5 % and 95 % done; against as many no-op tasks with the same settings
(bench/noop_worker.py).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
PROCS, THREADS = 2, 8
BROKER = os.environ.get("BENCH_BROKER_URL", f"redis://127.0.0.1:6379/{os.environ.get('REKEY_TEST_REDIS_DB', '1')}")


# --- setup --------------------------------------------------------------------------------------


def setup(users: int) -> dict[str, Any]:
    """A fresh migrated PostgreSQL database: a tenant, a standard integration, `users` settled users."""
    from sqlalchemy import text

    from app import create_app
    from app.actor import Actor
    from app.config import Settings
    from app.extensions import db
    from app.intake.services import create_integration
    from app.migrate import upgrade
    from app.tenants.services import create_tenant
    from tests.services import create_pg_database, drop_pg_database

    url, name = create_pg_database()
    upgrade(url)
    app = create_app(replace(Settings(), database_url=url, broker_url=BROKER, redis_url=BROKER,
                             log_level="WARNING", webhook_rate_per_minute=100_000_000), TESTING=True)
    with app.app_context():
        db.session.execute(text("CREATE TABLE bench_rows (id uuid PRIMARY KEY, integration_id text, body text, "
                                "created_at timestamptz DEFAULT now())"))
        tenant = create_tenant(slug="bench", name="Bench")
        integration, secret = create_integration(tenant, kind="standard", name="bench")
        db.session.commit()
        emails = [f"bench-{i}@example.com" for i in range(users)]
        year_ago = (datetime.now(UTC) - timedelta(days=365)).isoformat()
        # Plain rows (no argon2: these users never sign in): a user and their email channel on file for a year.
        rows = [{"id": uuid.uuid4(), "t": tenant.id, "e": e} for e in emails]
        db.session.execute(text("INSERT INTO users (id, tenant_id, email, display_name, status, privileged, "
                                "created_at) VALUES (:id, :t, :e, '', 'active', false, :at)"),
                           [{**r, "at": year_ago} for r in rows])
        db.session.execute(text("INSERT INTO channels (id, user_id, kind, value, added_at, verified_at) "
                                "VALUES (:c, :id, 'email', :e, :at, :at)"),
                           [{"c": uuid.uuid4(), "id": r["id"], "e": r["e"], "at": year_ago} for r in rows])
        db.session.commit()
        integration_id = str(integration.id)
    with app.app_context():
        db.engine.dispose()
    return {"url": url, "name": name, "drop": lambda: drop_pg_database(name), "integration_id": integration_id,
            "secret": secret, "emails": emails, "app": app}


def signed(secret: str, email: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                       "data": {"user_email": email, "ticket_id": f"T-{uuid.uuid4().hex[:10]}",
                                "requester_email": email, "subject": "Lost phone",
                                "text": "I lost my phone and cannot sign in."}}).encode()
    msg_id, ts = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    return body, {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}",
                  "content-type": "application/json"}


# --- servers ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gunicorn(target: str, env: dict[str, str], log: Path) -> Iterator[int]:
    """gunicorn as the Procfile's `web` line starts it, with 2 workers, on a free loopback port."""
    port = _free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
                                 "--access-logfile", "-", target], cwd=ROOT, env={**os.environ, **env},
                                stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"gunicorn {target} did not start; see {log}")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


# --- load ---------------------------------------------------------------------------------------


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        conn.close()


def _load_process(port: int, path: str, work: list[tuple[bytes, dict[str, str]]], start_at: float,
                  seconds: float, rate: float | None, proc_index: int, out: Any) -> None:
    """One load process: THREADS threads sharing `work`; closed loop, or paced at `rate` overall."""
    lock, cursor = threading.Lock(), [0]
    results: list[tuple[int, float]] = []

    def thread(k: int) -> None:
        slot = proc_index * THREADS + k  # this thread's place among all PROCS x THREADS
        sent = 0
        while True:
            if rate is not None:
                due = start_at + (sent * PROCS * THREADS + slot) / rate
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
            if time.time() >= start_at + seconds:
                return
            with lock:
                if cursor[0] >= len(work):
                    return
                body, headers = work[cursor[0]]
                cursor[0] += 1
            results.append(_post(port, path, body, headers))
            sent += 1

    time.sleep(max(0.0, start_at - time.time()))
    threads = [threading.Thread(target=thread, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)


def run_load(port: int, path: str, work: list[tuple[bytes, dict[str, str]]], seconds: float,
             rate: float | None = None) -> dict[str, float]:
    """Drive the server; returns rps, p50 and p99 (ms) and the share of non-2xx answers."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.5
    share = [work[i::PROCS] for i in range(PROCS)]
    procs = [ctx.Process(target=_load_process, args=(port, path, share[i], start_at, seconds, rate, i, queue))
             for i in range(PROCS)]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in queue.get()]
    for p in procs:
        p.join()
    elapsed = min(seconds, max(time.time() - start_at, 1e-9))
    latencies = sorted(lat for _, lat in results)
    bad = sum(1 for status, _ in results if status >= 300)
    return {"requests": len(results), "rps": len(results) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else 0.0,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0,
            "errors": bad / max(1, len(results))}


def measure(name: str, port: int, path: str, make_work: Any, seconds: float) -> dict[str, Any]:
    run_load(port, path, make_work(50), 1.0)  # warm-up: imports, pools, first connections
    peak = run_load(port, path, make_work(None), seconds)
    half = run_load(port, path, make_work(None), seconds, rate=peak["rps"] / 2)
    print(f"  {name:>22}: peak {peak['rps']:7.0f} rps  p50 {peak['p50_ms']:6.1f} ms  p99 {peak['p99_ms']:7.1f} ms"
          f"  | half {half['rps']:6.0f} rps  p50 {half['p50_ms']:5.1f} ms  p99 {half['p99_ms']:6.1f} ms"
          f"  | errors {peak['errors'] + half['errors']:.1%}", flush=True)
    return {"peak": peak, "half": half}


# --- pipeline -----------------------------------------------------------------------------------


def _progress_run(cmd: list[str], env: dict[str, str], log: Path, done: Any, total: int) -> float:
    """Start a worker on a filled queue; the rate between 5 % and 95 % done (tasks per second)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out)
    try:
        t5 = t95 = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            finished = done()
            now = time.perf_counter()
            if t5 is None and finished >= 0.05 * total:
                t5, n5 = now, finished
            if finished >= 0.95 * total:
                t95, n95 = now, finished
                break
            time.sleep(0.05)
        if t5 is None or t95 is None:
            raise RuntimeError(f"worker did not finish; see {log}")
        return (n95 - n5) / max(t95 - t5, 1e-9)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def pipeline(world: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, float]:
    import psycopg
    import redis

    with psycopg.connect(world["url"].replace("postgresql+psycopg", "postgresql")) as conn:
        received = conn.execute("SELECT count(*) FROM recovery_cases WHERE state = 'received'").fetchone()[0]

    def screened() -> int:
        with psycopg.connect(world["url"].replace("postgresql+psycopg", "postgresql")) as conn:
            left = conn.execute("SELECT count(*) FROM recovery_cases WHERE state = 'received'").fetchone()[0]
        return int(received - left)

    worker = [str(BIN / "celery"), "-A", "tasks.worker", "worker", "-P", "prefork", "-c", "2",
              "--loglevel=WARNING", "--without-mingle", "--without-gossip", "-n", f"bench-{uuid.uuid4().hex[:6]}@%h"]
    rekey_rate = _progress_run(worker, env, log, screened, received)

    from bench.noop_worker import celery as noop_app

    client = redis.Redis.from_url(BROKER)
    client.delete("bench-noop")
    for i in range(received):
        noop_app.send_task("bench.noop", kwargs={"case_id": str(i)}, queue="bench-noop")
    noop_cmd = [str(BIN / "celery"), "-A", "bench.noop_worker", "worker", "-P", "prefork", "-c", "2",
                "-Q", "bench-noop", "--loglevel=WARNING", "--without-mingle", "--without-gossip",
                "-n", f"bench-noop-{uuid.uuid4().hex[:6]}@%h"]
    noop_rate = _progress_run(noop_cmd, {"BENCH_BROKER_URL": BROKER}, log,
                              lambda: received - int(client.llen("bench-noop")), received)
    print(f"  pipeline: {received} cases; screened {rekey_rate:.0f}/s, no-op {noop_rate:.0f}/s, "
          f"ratio {rekey_rate / noop_rate:.2f}", flush=True)
    return {"cases": received, "rekey": rekey_rate, "noop": noop_rate, "ratio": rekey_rate / noop_rate}


# --- profile ------------------------------------------------------------------------------------


def profile(world: dict[str, Any], count: int = 300) -> None:
    """pyinstrument over `count` deliveries through the WSGI app in this process."""
    from pyinstrument import Profiler

    app = world["app"]
    client = app.test_client()
    path = f"/v1/webhooks/{world['integration_id']}"
    work = [signed(world["secret"], e) for e in world["emails"][-count - 20:]]
    for body, headers in work[:20]:
        client.post(path, data=body, headers=headers)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for body, headers in work[20:]:
        assert client.post(path, data=body, headers=headers).status_code == 202
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False, show_all=False))


# --- main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="each load run (peak, then half of peak)")
    parser.add_argument("--users", type=int, default=12000)
    parser.add_argument("--profile", action="store_true", help="profile the intake in process instead")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    world = setup(args.users)
    try:
        if args.profile:
            profile(world)
            return 0
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"rekey-bench-{uuid.uuid4().hex[:6]}.log"
        env = {"DATABASE_URL": world["url"], "REKEY_BROKER_URL": BROKER, "REDIS_URL": BROKER, "REKEY_ENV": "test",
               "REKEY_LOG_LEVEL": "WARNING", "REKEY_WEBHOOK_RATE_PER_MINUTE": "100000000",
               "BENCH_DATABASE_URL": world["url"]}
        redis_client = __import__("redis").Redis.from_url(BROKER)
        redis_client.delete("celery")
        path = f"/v1/webhooks/{world['integration_id']}"
        emails = iter(world["emails"])

        def rekey_work(n: int | None) -> list[tuple[bytes, dict[str, str]]]:
            take = n if n is not None else args.users // 3
            return [signed(world["secret"], next(emails)) for _ in range(take)]

        def bare_work(n: int | None) -> list[tuple[bytes, dict[str, str]]]:
            return [signed(world["secret"], f"x{i}@example.com") for i in range(n or 20000)]

        print(f"intake over HTTP (gunicorn, 2 workers, {PROCS}x{THREADS} connections, {args.seconds:.0f} s runs):",
              flush=True)
        figures: dict[str, Any] = {}
        with gunicorn("app:create_app()", env, log) as port:
            figures["intake"] = measure("rekey intake", port, path, rekey_work, args.seconds)
        with gunicorn("bench.bare_apps:insert_app()", env, log) as port:
            figures["insert"] = measure("(a) INSERT + commit", port, path, bare_work, args.seconds)
        with gunicorn("bench.bare_apps:accept_app()", env, log) as port:
            figures["accept"] = measure("(b) bare 202", port, path, bare_work, args.seconds)
        i, a, b = figures["intake"], figures["insert"], figures["accept"]
        print(f"  intake / (a): {i['peak']['rps'] / a['peak']['rps']:.2f} at peak; "
              f"(a) / (b): {a['peak']['rps'] / b['peak']['rps']:.2f}; "
              f"intake p99 at half of peak {i['half']['p99_ms']:.1f} ms (target < 20 ms)", flush=True)
        figures["pipeline"] = pipeline(world, env, log)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        from app.extensions import db

        with world["app"].app_context():
            db.engine.dispose()
        world["drop"]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
