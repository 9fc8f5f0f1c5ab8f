"""Rekey's benchmarks: each figure is a ratio against a baseline measured in the same run, on
the same machine and database, so the numbers travel between machines better than seconds do.

    make bench                     # PostgreSQL if reachable (as the tests find it), else SQLite
    .venv/bin/python bench/run.py --rounds 200

What each ratio shows:
- backup-code check / one argon2 verification: the lookup prefix makes a check cost one hash
  (about 1x), not ten (a naive scan of the user's ten codes would be about 10x).
- audit append / plain row insert: what the per-tenant chain lock and SHA-256 cost per event.
- webhook intake / GET /healthz: verify + dedupe + case + outbox + audit, against the framework's
  own floor, both through the same WSGI client.
- sign-in step 1 / one argon2 password verification: sign-in costs about one password hash
  (throttle queries and the audit row are small beside it).
- security-key step 2 / GET /healthz: the two-step sign-in's key step (request options with a
  new challenge, then the assertion checked by py_webauthn, the counter, a session, the audit
  row) over HTTP; no argon2 in it, so its cost is database round-trips.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _median_seconds(fn: Callable[[], Any], rounds: int) -> float:
    fn()  # warm-up (imports, connection pool, caches)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _median_prepared(prepare: Callable[[], Any], fn: Callable[[Any], Any], rounds: int) -> float:
    """Like `_median_seconds`, timing only `fn(prepare())`."""
    fn(prepare())
    samples = []
    for _ in range(rounds):
        ready = prepare()
        start = time.perf_counter()
        fn(ready)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _database() -> tuple[str, Callable[[], None]]:
    from app.migrate import upgrade
    from tests.services import create_pg_database, drop_pg_database, postgres_available

    if postgres_available():
        url, name = create_pg_database()
        upgrade(url)
        return url, lambda: drop_pg_database(name)
    tmp = tempfile.mkdtemp()
    url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
    upgrade(url)
    return url, lambda: None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()

    from app import create_app
    from app.config import Settings

    url, cleanup = _database()
    settings = replace(Settings(), env="bench", database_url=url, broker_url="memory://", redis_url="memory://",
                       encryption_keys="K0wDXEU4b1bSyh3yX2bfO9IrMbJbzxX9wUU6F4E_jps=", code_pepper="bench",
                       secret_key="bench", log_level="ERROR", webhook_rate_per_minute=10**9,  # noqa: S106
                       dev_outbox=str(Path(tempfile.mkdtemp()) / "dev.jsonl"))
    app = create_app(settings)
    try:
        rows = _run(app, args.rounds)
    finally:
        from app.extensions import db

        with app.app_context():
            db.engine.dispose()
        cleanup()
    backend = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(f"Rekey benchmarks: {args.rounds} rounds each, median per operation, database {backend}")
    print(f"{'operation':<44} {'median':>10} {'baseline':<34} {'median':>10} {'ratio':>7}")
    for name, value, base_name, base in rows:
        print(f"{name:<44} {value * 1000:>8.3f}ms {base_name:<34} {base * 1000:>8.3f}ms {value / base:>6.2f}x")
    return 0


def _run(app: Any, rounds: int) -> list[tuple[str, float, str, float]]:
    from app.accounts.mfa import consume_backup_code, issue_backup_codes
    from app.accounts.models import BackupCode, Note
    from app.accounts.signin import sign_in
    from app.actor import Actor
    from app.audit.models import AuditAction
    from app.audit.services import record_event
    from app.crypto import hash_password, verify_code, verify_password
    from app.extensions import db
    from app.tenants.models import Tenant
    from tests.factories import PASSWORD, RecoveryFactory
    from tests.signing import body_of, standard_headers

    factory = RecoveryFactory(app)
    tenant = factory.tenant()
    user = factory.settled_user(tenant)
    agent = factory.agent(tenant)
    integration, secret = factory.integration(tenant)
    rows = []

    with app.app_context():
        system = Actor.system(tenant.id)
        db_user = db.session.get(type(user), user.id)
        codes = issue_backup_codes(system, db_user)
        db.session.commit()
        one_hash = db.session.query(BackupCode.hash).filter(BackupCode.user_id == user.id).first()[0]
        wrong = "aaaaa-" + codes[0][6:]  # same shape, never valid

        check = _median_seconds(lambda: consume_backup_code(db_user, codes[0][:4] + wrong[4:]), rounds)
        verify_one = _median_seconds(lambda: verify_code(one_hash, wrong), rounds)
        rows.append(("backup-code check (wrong code)", check, "one argon2 verification", verify_one))

        def append_event() -> None:
            record_event(system, AuditAction.NOTE_ADDED, target_user_id=user.id, details={"bench": True})
            db.session.commit()

        def plain_insert() -> None:
            db.session.add(Note(tenant_id=tenant.id, user_id=user.id, author_id=agent.agent.id, body="bench"))
            db.session.commit()

        rows.append(("audit append (chain lock + hash) + commit", _median_seconds(append_event, rounds),
                     "plain row insert + commit", _median_seconds(plain_insert, rounds)))

        password_hash = hash_password(PASSWORD)
        db_tenant = db.session.get(Tenant, tenant.id)

        def signin_password() -> None:
            # The user holds backup codes, so a right password answers mfa_required.
            result = sign_in(db_tenant, Actor(type="anonymous", id=None, tenant_id=tenant.id, ip="10.9.0.1"),
                             email=user.email, password=PASSWORD)
            assert result.status == "mfa_required"
            db.session.commit()

        rows.append(("sign-in step 1 (password -> mfa_required)", _median_seconds(signin_password, min(rounds, 50)),
                     "one argon2 password verification",
                     _median_seconds(lambda: verify_password(password_hash, PASSWORD), min(rounds, 50))))

    client = app.test_client()

    def intake() -> None:
        body = body_of({"type": "recovery.requested", "timestamp": datetime.now(UTC).isoformat(),
                        "data": {"user_email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
                                 "ticket_id": "T-1", "subject": "Lost phone", "text": "I lost my phone."}})
        answer = client.post(f"/v1/webhooks/{integration.id}", data=body, headers=standard_headers(secret, body))
        assert answer.status_code == 202, answer.get_data(as_text=True)

    health = _median_seconds(lambda: client.get("/healthz"), rounds)
    rows.append(("webhook intake, signed, new case", _median_seconds(intake, rounds), "GET /healthz, same client",
                 health))
    rows.append(("security-key step 2 (options + verify)", _key_step(app, client, factory, min(rounds, 50)),
                 "GET /healthz, same client", health))
    return rows


def _key_step(app: Any, client: Any, factory: Any, rounds: int) -> float:
    from tests.authenticator import SoftKey
    from tests.factories import PASSWORD
    from tests.flows import register_key, session_token

    tenant = factory.tenant()
    user = factory.user(tenant)
    key = SoftKey()
    assert register_key(client, session_token(app, user), key).status_code == 201
    headers = {"X-Rekey-Tenant": tenant.slug}

    def pending() -> str:  # the password step (argon2) is not what is timed
        answer = client.post("/v1/auth/signin/password", json={"email": user.email, "password": PASSWORD},
                             headers=headers)
        return str(answer.get_json()["pending_token"])

    def key_step(token: str) -> None:
        options = client.post("/v1/auth/signin/webauthn/options", json={"pending_token": token},
                              headers=headers).get_json()["options"]
        answer = client.post("/v1/auth/signin/webauthn/verify", headers=headers,
                             json={"pending_token": token, "credential": key.get(options)})
        assert answer.status_code == 200, answer.get_data(as_text=True)

    return _median_prepared(pending, key_step, rounds)



if __name__ == "__main__":
    raise SystemExit(main())
