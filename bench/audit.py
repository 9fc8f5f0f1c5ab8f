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
import resource
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


def COMMANDS(slug: str) -> list[tuple[str, list[str]]]:  # noqa: N802
    return [("verify", ["audit", "verify", "--tenant", slug]),
            ("export_jsonl", ["audit", "export", "--tenant", slug]),
            ("export_csv", ["audit", "export", "--tenant", slug, "--format", "csv"])]


SAMPLE = 50_000


def _baseline(sample: list[dict[str, Any]]) -> tuple[float, float]:
    """Events per second of the floor, canonical encoding + SHA-256 of plain rows in-process: by
    the wall clock and by this process's CPU time."""
    from app.audit.chain import encode_canonical

    encode, sha256, fromhex = encode_canonical, hashlib.sha256, bytes.fromhex
    prev_hash = "0" * 64
    start, cpu = time.perf_counter(), time.process_time()
    for row in sample:
        prev_hash = sha256(fromhex(prev_hash) + encode(row).encode()).hexdigest()
    return len(sample) / (time.perf_counter() - start), len(sample) / (time.process_time() - cpu)


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


def _peak_rss_kb(pid: int) -> int:
    """VmHWM of the process: its own peak since exec (ru_maxrss would also count the RSS this
    bench process had when it forked the child)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _timed(args: list[str], env: dict[str, str], source: str | None = None) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds, peak RSS (MB) and exit code of one `rekey` process, output to
    /dev/null (`source`: run the `rekey` of another source tree, e.g. an earlier commit's)."""
    command = [REKEY, *args]
    if source:
        env = {**env, "PYTHONPATH": source}
        command = [sys.executable, "-m", "app.cli", *args]
    peak = 0
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink, tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=sink, stderr=errors, env=env)  # noqa: S603
        while process.poll() is None:
            peak = max(peak, _peak_rss_kb(process.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        if process.returncode != 0:
            errors.seek(0)
            print(errors.read().decode(errors="replace"), file=sys.stderr)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - _timed.cpu_so_far  # type: ignore[attr-defined]
    _timed.cpu_so_far = usage.ru_utime + usage.ru_stime  # type: ignore[attr-defined]
    return elapsed, cpu, peak / 1024, process.returncode


_timed.cpu_so_far = 0.0  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the chain (default 1,000,000)")
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the results as JSON")
    parser.add_argument("--compare-with", metavar="SOURCE_TREE", default=None,
                        help="also time the commands of another source tree on the same chain (before/after), "
                             "e.g. `git archive <commit> | tar -x -C /tmp/before`")
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
                                       "baseline_events_per_s": round(baseline), "load_average": os.getloadavg()[0]}
            runs = [(label, command, None) for label, command in COMMANDS(slug)]
            if args.compare_with:
                runs += [(f"{label}_before", command, args.compare_with) for label, command in COMMANDS(slug)]
            for label, command, source in runs:
                # The machine's load drifts: the floor is measured again just before and just
                # after each command, on the same plain rows, and the command compared with both.
                before = _baseline(sample)
                seconds, cpu, rss, code = _timed(command, env, source)
                after = _baseline(sample)
                if code != 0:
                    print(f"{label} exited {code}", file=sys.stderr)
                    return 1
                floor, floor_cpu = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                rate, rate_cpu = args.events / seconds, args.events / cpu
                results[label] = {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                                  "events_per_s": round(rate), "baseline_events_per_s": round(floor),
                                  "ratio": round(rate / floor, 2), "events_per_cpu_s": round(rate_cpu),
                                  "baseline_events_per_cpu_s": round(floor_cpu),
                                  "cpu_ratio": round(rate_cpu / floor_cpu, 2), "peak_rss_mb": round(rss)}
    finally:
        drop_pg_database(name)
    if args.as_json:
        print(json.dumps(results, sort_keys=True))
        return 0
    print(f"audit chain of {args.events:,} events (built in {results['build_seconds']} s); baseline "
          f"encode + SHA-256 of plain rows in-process: {results['baseline_events_per_s']:,} events/s")
    print(f"{'command':<42}{'wall s':>8}{'events/s':>10}{'floor/s':>9}{'x floor':>8}"
          f"{'CPU s':>8}{'per CPU s':>10}{'floor':>8}{'x floor':>8}{'peak RSS':>10}")
    shown_as = [("verify", "rekey audit verify"), ("export_jsonl", "rekey audit export (JSON lines)"),
                ("export_csv", "rekey audit export --format csv")]
    if args.compare_with:
        shown_as += [(f"{label}_before", f"{shown} [before]") for label, shown in shown_as]
    for label, shown in shown_as:
        r = results[label]
        print(f"{shown:<42}{r['seconds']:>8}{r['events_per_s']:>10,}{r['baseline_events_per_s']:>9,}"
              f"{r['ratio']:>8}{r['cpu_seconds']:>8}{r['events_per_cpu_s']:>10,}"
              f"{r['baseline_events_per_cpu_s']:>8,}{r['cpu_ratio']:>8}{r['peak_rss_mb']:>7} MB")
    worst = min(results[k]["ratio"] for k in ("verify", "export_jsonl", "export_csv"))
    worst_cpu = min(results[k]["cpu_ratio"] for k in ("verify", "export_jsonl", "export_csv"))
    print(f"target: every ratio at least 0.5 -> wall clock {'met' if worst >= 0.5 else 'MISSED'} (lowest {worst}), "
          f"CPU time {'met' if worst_cpu >= 0.5 else 'MISSED'} (lowest {worst_cpu})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
