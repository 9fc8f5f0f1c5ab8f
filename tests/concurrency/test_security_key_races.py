"""Races on security keys and the two-step sign-in, against PostgreSQL with real threads released
together (see test_races.py): two removals that would each leave "one more", one assertion sent
many times at once, and a key registration racing the reset task."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyotp
import pytest
from sqlalchemy import select

from app.extensions import db
from tests.authenticator import SoftKey
from tests.concurrency.test_races import (
    TENANT_HEADER,
    active_factors,
    answer,
    chain_ok,
    enrol_totp,
    events,
    queued_reset,
    race,
    run_task,
)
from tests.factories import PASSWORD
from tests.flows import bearer, register_key, session_token

pytestmark = pytest.mark.postgres


def test_two_removals_at_once_never_remove_the_last_factor(pg, app, client, factory):
    tenant = factory.tenant()
    for _ in range(4):
        user = factory.user(tenant)
        token = session_token(app, user)
        ids = [register_key(client, token, SoftKey()).get_json()["id"] for _ in range(2)]

        answers = race(app, 2, lambda i, c, ids=ids, token=token: answer(
            c.delete(f"/v1/auth/security-keys/{ids[i]}", headers=bearer(token))))

        assert sorted(status for status, _ in answers) == [204, 422], answers
        assert active_factors(app, user) == 1
        removed = [e for e in events(app, tenant.id, "mfa.factor_removed") if e.target_user_id == user.id]
        assert len(removed) == 1
    chain_ok(app, tenant.id)


def test_one_assertion_sent_eight_times_at_once_signs_in_once(pg, app, client, factory):
    from app.accounts.models import WebAuthnCredential

    tenant = factory.tenant()
    user = factory.user(tenant)
    key = SoftKey()
    register_key(client, session_token(app, user), key)
    headers = {TENANT_HEADER: tenant.slug}
    pending = client.post("/v1/auth/signin/password", json={"email": user.email, "password": PASSWORD},
                          headers=headers).get_json()["pending_token"]
    options = client.post("/v1/auth/signin/webauthn/options", json={"pending_token": pending},
                          headers=headers).get_json()["options"]
    body = {"pending_token": pending, "credential": key.get(options)}

    answers = race(app, 8, lambda i, c: answer(c.post("/v1/auth/signin/webauthn/verify", json=body,
                                                      headers=headers)))

    statuses = Counter(status for status, _ in answers)
    assert statuses[200] == 1 and set(statuses) <= {200, 401, 429}, answers
    assert len(events(app, tenant.id, "auth.signin_succeeded")) == 1
    with app.app_context():
        counts = db.session.scalars(select(WebAuthnCredential.sign_count).where(
            WebAuthnCredential.user_id == user.id)).all()
    assert counts == [1]
    chain_ok(app, tenant.id)


def test_a_key_registration_racing_the_reset_task_neither_deadlocks_nor_half_happens(pg, app, client, factory):
    """The registration locks the case it would recover, then reads its session again; the reset
    locks the case, removes every factor and revokes every session. Whichever is first, the
    other sees it: a registration after the reset enrols nothing through the revoked session."""
    from app.accounts.models import MfaFactor
    from app.recovery.models import CaseAction

    tenant = factory.tenant()
    agent = factory.agent(tenant)
    outcomes: Counter[str] = Counter()
    for round_ in range(8):
        user = factory.settled_user(tenant)
        secret = enrol_totp(app, user)
        case_id, action_id = queued_reset(client, factory, tenant, user, agent)
        r = client.post("/v1/auth/signin", headers={TENANT_HEADER: tenant.slug},
                        json={"email": user.email, "password": PASSWORD,
                              "otp": pyotp.TOTP(secret).at(datetime.now(UTC).timestamp() + 30)})
        assert r.status_code == 200, r.get_json()
        token = r.get_json()["token"]
        options = client.post("/v1/auth/enrol/webauthn", headers=bearer(token)).get_json()["options"]
        credential = SoftKey().create(options)

        def work(i: int, c: Any, action_id: str = action_id, token: str = token, credential: Any = credential,
                 stagger: float = 0.008 * round_) -> Any:
            if i == 0:
                return answer(c.post("/v1/auth/enrol/webauthn/confirm", json={"credential": credential},
                                     headers=bearer(token)))
            time.sleep(stagger)  # staggered by round, so each side wins some rounds
            return run_task(app, "rekey.recovery.execute_action", action_id=action_id)

        results = race(app, 2, work)
        factory.drain_tasks()

        with app.app_context():
            status = db.session.get(CaseAction, uuid.UUID(action_id)).status
            factors = Counter(db.session.scalars(select(MfaFactor.status).where(MfaFactor.user_id == user.id)).all())
        resets = events(app, tenant.id, "mfa.factor_admin_reset", case_id)
        state = client.get(f"/v1/admin/cases/{case_id}", headers=agent.headers).get_json()["state"]
        registered = results[0][0] == 201
        if status == "done":  # the reset won: the session it revoked registers nothing
            assert (len(resets), factors["active"], state, registered) == (1, 0, "awaiting_enrolment", False), (
                round_, results)
            assert results[0] == (401, results[0][1]), results
        else:  # the registration won: the case is recovered and the reset has nothing left to do
            assert (status, len(resets), state, registered) == ("cancelled", 0, "closed", True), (round_, results)
            assert factors["active"] == 2, factors
        outcomes[status] += 1
    chain_ok(app, tenant.id)
    print(f"outcomes over 8 rounds: {dict(outcomes)}")
