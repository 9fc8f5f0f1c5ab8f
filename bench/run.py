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
- verification-call limits / one primary-key SELECT: the advisory lock and the three indexed
  window queries (tenant at 199 of its 200 an hour) cost a few round-trips.
- stalled-work sweep with 10000 finished actions / the same sweep with none: about 1x, since
  each query reads exactly the stalled work through its index, whatever the history.
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
    rows.extend(_limits_and_sweep(app, factory, client, tenant, integration, secret, rounds))
    return rows


def _limits_and_sweep(app: Any, factory: Any, client: Any, tenant: Any, integration: Any, secret: str,
                      rounds: int) -> list[tuple[str, float, str, float]]:
    """The hourly verification-call limits with the tenant one call below its 200, and the
    stalled-work sweep over a long history of finished actions."""
    from datetime import timedelta

    from app.actor import Actor
    from app.extensions import db, utcnow
    from app.recovery.closing import requeue_stalled
    from app.recovery.limits import check_verification_limits
    from app.recovery.models import CaseAction, RecoveryCase, VerificationCall

    user = factory.settled_user(tenant, password=None)
    case_id = factory.request_recovery(client, integration, secret, user.email).get_json()["case_id"]
    agent = factory.agent(tenant)
    rows = []
    with app.app_context():
        case = db.session.get(RecoveryCase, uuid.UUID(case_id))
        other = db.session.scalars(db.select(RecoveryCase.id).where(RecoveryCase.tenant_id == tenant.id,
                                                                    RecoveryCase.id != case.id)).first()
        now, phone = utcnow(), _phone(user.id)
        db.session.add_all(VerificationCall(tenant_id=tenant.id, case_id=other, channel_id=phone, method="sms",
                                            code_digest="0" * 64, placed_by="someone-else",
                                            created_at=now - timedelta(minutes=i % 50), expires_at=now)
                           for i in range(199))
        db.session.commit()
        actor = Actor(type="agent", id=str(agent.agent.id), tenant_id=tenant.id, role="support_agent")

        def limits() -> None:
            check_verification_limits(actor, case)  # passes: 199 of 200, the case and agent at 0
            db.session.rollback()

        def one_lookup() -> None:
            db.session.get(RecoveryCase, case.id, populate_existing=True)
            db.session.rollback()

        rows.append(("verification-call limits (lock + 3 windows)", _median_seconds(limits, rounds),
                     "one primary-key SELECT", _median_seconds(one_lookup, rounds)))

        def sweep() -> None:
            requeue_stalled()
            db.session.rollback()

        empty = _median_seconds(sweep, min(rounds, 50))
        long_ago = now - timedelta(days=30)
        for _ in range(10):
            db.session.add_all(CaseAction(tenant_id=tenant.id, case_id=case.id, action="force_mfa_reset",
                                          status="done", requested_by="history", reason="bench", options={},
                                          created_at=long_ago, queued_at=long_ago, done_at=long_ago,
                                          delivery_state="sent") for _ in range(1000))
            db.session.commit()
        rows.append(("stalled-work sweep, 10000 finished actions", _median_seconds(sweep, min(rounds, 50)),
                     "the same sweep, no history", empty))
    return rows


def _phone(user_id: uuid.UUID) -> uuid.UUID:
    from app.accounts.models import Channel
    from app.extensions import db

    return db.session.scalars(db.select(Channel.id).where(Channel.user_id == user_id, Channel.kind == "phone")).one()


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
