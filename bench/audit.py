"""Audit verify and export over one tenant's long chain, as whole processes, against the floor:
canonical encoding + SHA-256 of the same events as plain rows in-process (issue 12, item 1).

    make bench                                  # runs this too (1,000,000 events)
    .venv/bin/python bench/audit.py             # 1,000,000 events (about 3 minutes to build)
    .venv/bin/python bench/audit.py --events 2000   # smoke test

It builds the chain in a fresh PostgreSQL database (the tenant's first event through the
service, the rest hashed here with the service's own canonical form and COPYed in), then times
`rekey audit verify`, `rekey audit export` (JSON lines) and `rekey audit export --format csv`
as separate processes writing to /dev/null, each with its peak RSS (from wait4). The baseline
is the hashing loop alone over the same events held as plain dicts (`floor`), timed over the
whole build and again over the first 50,000 events just before and after each command (the
command's ratio uses the mean of those two, so a load that drifts during the run does not skew
it). Figures are events per second and the ratio to the baseline (target: at least 0.5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REKEY = str(Path(sys.executable).with_name("rekey"))
COLUMNS = ("id", "tenant_id", "seq", "occurred_at", "actor_type", "actor_id", "action", "target_user_id",
           "case_id", "reason", "details", "request_id", "source_ip", "prev_hash", "hash")
CHUNK = 20_000


SAMPLE = 50_000


def _baseline(sample: list[dict[str, Any]]) -> float:
    """Events per second of the floor: canonical encoding + SHA-256 of plain rows, in-process."""
    from app.audit.chain import encode_canonical

    encode, sha256, fromhex = encode_canonical, hashlib.sha256, bytes.fromhex
    prev_hash = "0" * 64
    start = time.perf_counter()
    for row in sample:
        prev_hash = sha256(fromhex(prev_hash) + encode(row).encode()).hexdigest()
    return len(sample) / (time.perf_counter() - start)


def _build(url: str, events: int, sample: list[dict[str, Any]]) -> tuple[str, float]:
    """The tenant (seq 1, written by the service) and events 2..N; returns (slug, baseline events/s
    over the whole build); keeps the first SAMPLE events as plain rows in `sample`."""
    import psycopg
    from sqlalchemy.engine import make_url

    from app import create_app
    from app.audit.chain import encode_canonical, iso_time
    from app.config import Settings
    from app.extensions import db
    from app.tenants.services import create_tenant

    slug = f"bench-{uuid.uuid4().hex[:8]}"
    app = create_app(Settings(database_url=url, env="development"))
    with app.app_context():
        tenant = create_tenant(slug=slug, name=None, settings={})
        db.session.commit()
        tenant_id = tenant.id
        prev_hash, occurred = db.session.execute(
            db.text("SELECT hash, occurred_at FROM audit_events WHERE tenant_id = :t AND seq = 1"),
            {"t": tenant_id}).one()
        db.session.remove()
        db.engine.dispose()

    u = make_url(url)
    hashing = 0.0
    times: list[datetime] = []
    chained = prev_hash
    encode, sha256, fromhex = encode_canonical, hashlib.sha256, bytes.fromhex
    users = [str(uuid.uuid4()) for _ in range(50)]
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database) as conn:
        seq = 1
        while seq < events:
            rows = []
            for _ in range(min(CHUNK, events - seq)):
                seq += 1
                occurred = occurred + timedelta(microseconds=1000 + seq % 7)
                rows.append({  # exactly the canonical fields (chain.CANONICAL_FIELDS), as plain values
                    "id": str(uuid.uuid4()), "tenant_id": str(tenant_id), "seq": seq,
                    "occurred_at": iso_time(occurred), "actor_type": "agent", "actor_id": f"agent-{seq % 9}",
                    "action": "mfa.factor_admin_reset" if seq % 3 else "note.added",
                    "target_user_id": users[seq % len(users)], "case_id": None if seq % 2 else str(uuid.uuid4()),
                    "reason": f"ticket {seq}: user lost their phone, identity checked by call-back",
                    "details": {"factor": "totp", "round": seq % 4, "channels": ["email", "sms"]},
                    "request_id": f"req-{seq:012d}", "source_ip": "192.0.2.5",
                })
                times.append(occurred)
            hashes = []
            start = time.perf_counter()  # the baseline: encode + SHA-256 of plain rows, in-process
            for row in rows:
                prev_hash = sha256(fromhex(prev_hash) + encode(row).encode()).hexdigest()
                hashes.append(prev_hash)
            hashing += time.perf_counter() - start
            sample.extend(rows[: max(0, SAMPLE - len(sample))])
            with conn.cursor().copy(f"COPY audit_events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row, at, digest in zip(rows, times, hashes, strict=True):
                    copy.write_row([row["id"], row["tenant_id"], row["seq"], at, row["actor_type"], row["actor_id"],
                                    row["action"], row["target_user_id"], row["case_id"], row["reason"],
                                    json.dumps(row["details"]), row["request_id"], row["source_ip"], chained,
                                    digest])
                    chained = digest
            times.clear()
        conn.execute("UPDATE audit_heads SET seq = %s, hash = %s WHERE tenant_id = %s", (seq, prev_hash, tenant_id))
        conn.execute("ANALYZE audit_events")
        conn.commit()
    return slug, (events - 1) / hashing


def _timed(args: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) and exit code of one `rekey` process, output to /dev/null."""
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        process = subprocess.Popen([REKEY, *args], stdout=sink, stderr=subprocess.PIPE, env=env)  # noqa: S603
        _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        print(process.stderr.read().decode() if process.stderr else "", file=sys.stderr)
    return elapsed, usage.ru_maxrss / 1024, process.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the chain (default 1,000,000)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    from tests.services import create_pg_database, drop_pg_database, postgres_available

    if not postgres_available():
        print("the audit bench needs PostgreSQL (as the tests find it)", file=sys.stderr)
        return 2
    from app.migrate import upgrade

    url, name = create_pg_database()
    try:
        upgrade(url)
        began = time.perf_counter()
        sample: list[dict[str, Any]] = []
        slug, baseline = _build(url, args.events, sample)
        built = time.perf_counter() - began
        with tempfile.TemporaryDirectory() as instance:
            env = {**os.environ, "DATABASE_URL": url, "REKEY_ENV": "development", "REKEY_INSTANCE_DIR": instance,
                   "REKEY_LOG_LEVEL": "WARNING"}
            results: dict[str, Any] = {"events": args.events, "build_seconds": round(built, 1),
                                       "baseline_events_per_s": round(baseline)}
            for label, command in (("verify", ["audit", "verify", "--tenant", slug]),
                                   ("export_jsonl", ["audit", "export", "--tenant", slug]),
                                   ("export_csv", ["audit", "export", "--tenant", slug, "--format", "csv"])):
                # The machine's load drifts: the floor is measured again just before and just
                # after each command, on the same plain rows, and the command compared with both.
                before = _baseline(sample)
                seconds, rss, code = _timed(command, env)
                after = _baseline(sample)
                if code != 0:
                    print(f"{label} exited {code}", file=sys.stderr)
                    return 1
                rate = args.events / seconds
                floor = (before + after) / 2
                results[label] = {"seconds": round(seconds, 2), "events_per_s": round(rate),
                                  "baseline_events_per_s": round(floor), "ratio": round(rate / floor, 2),
                                  "peak_rss_mb": round(rss)}
    finally:
        drop_pg_database(name)
    if args.as_json:
        print(json.dumps(results, sort_keys=True))
        return 0
    print(f"audit chain of {args.events:,} events (built in {results['build_seconds']} s); baseline "
          f"encode + SHA-256 of plain rows in-process: {results['baseline_events_per_s']:,} events/s")
    print(f"{'command':<34}{'seconds':>9}{'events/s':>11}{'floor/s':>10}{'x floor':>9}{'peak RSS':>11}")
    for label, shown in (("verify", "rekey audit verify"), ("export_jsonl", "rekey audit export (JSON lines)"),
                         ("export_csv", "rekey audit export --format csv")):
        r = results[label]
        print(f"{shown:<34}{r['seconds']:>9}{r['events_per_s']:>11,}{r['baseline_events_per_s']:>10,}"
              f"{r['ratio']:>9}{r['peak_rss_mb']:>8} MB")
    worst = min(results[k]["ratio"] for k in ("verify", "export_jsonl", "export_csv"))
    print(f"target: every ratio at least 0.5 -> {'met' if worst >= 0.5 else 'MISSED'} (lowest {worst})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
