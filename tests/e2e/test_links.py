"""Issue 8, item 9: someone with a copy of the database cannot build a working "this wasn't me"
or cancel link. With a real worker on PostgreSQL and Redis: the worker sends the notices; the
thief reads every row of the case's tenant (and everything that names the case or its links)
and tries each value as a link's secret, and the MAC the old code derived from SECRET_KEY; not
one is accepted. The link the user received still works.

The thief looks twice: while the notices are being sent (the development channel held, so each
notice task waits inside its transaction with the link's token sealed in the database), and
after they went out."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.e2e.test_reliability import dev_channel_held
from tests.integration.conftest import wait_for
from tests.recovery_paths import RESET_REASON
from tests.recovery_steps import act, audit, cast, links_in, notices, state, user_row, verified_case

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.redis]


def _dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [] if value is None else [str(value)]


def database_copy(database_url: str, *needles: str) -> tuple[list[uuid.UUID], set[str]]:
    """What a thief with a backup learns about these ids: the link ids, and every value of every
    row, in every table, that mentions any of them (as text, each JSON value separately)."""
    values: set[str] = set()
    with psycopg.connect(_dsn(database_url), autocommit=True) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()]
        for table in tables:
            for (row,) in conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t').fetchall():  # noqa: S608
                if any(needle in row for needle in needles):
                    values.update(_strings(json.loads(row)))
        links = [i for (i,) in conn.execute("SELECT id FROM recovery_links WHERE tenant_id::text = %s",
                                            (needles[0],)).fetchall()]
    return links, values


def forged_tokens(links: list[uuid.UUID], values: set[str], secret_key: str) -> set[str]:
    """Every link the copy could build: a link's id with any value found, or with the HMAC of its
    id under the SECRET_KEY-derived key the old code used."""
    key = hashlib.sha256(b"rekey-links:" + secret_key.encode()).digest()
    tokens = set()
    for link_id in links:
        tokens.add(f"{link_id.hex}.{hmac.new(key, str(link_id).encode(), hashlib.sha256).hexdigest()}")
        for value in values:
            if value.isascii() and "/" not in value and 0 < len(value) < 400:
                tokens.add(f"{link_id.hex}.{value}")
                tokens.add(value)  # a value that is a whole token
    return tokens


def assert_none_works(world: Any, c: Any, tokens: set[str]) -> None:
    for token in sorted(tokens):
        for purpose in ("report", "cancel"):
            r = world.client.post(f"/v1/recovery/{purpose}/{token}")
            assert r.status_code == 404, (purpose, token, r.status_code)
    assert user_row(world, c.user)["status"] == "active"
    assert audit(world, c.tenant, "recovery.reported_not_me") == []
    assert audit(world, c.tenant, "user.suspended") == []


def test_nothing_in_the_database_builds_a_working_link(world, worker, database_url, settings):
    c = cast(world, tenant_settings={"reset_cooldown_hours": 4})  # notices with a cancel link too
    case_id = verified_case(world, c)
    world.quiesce()
    with dev_channel_held(settings.dev_outbox):
        r = act(world, case_id, "force_mfa_reset", c.agent, reason=RESET_REASON)
        assert r.status_code == 200 and r.json["action"]["status"] == "scheduled", r.json
        # Both notice tasks wait inside `send`: their links exist, the tokens not yet delivered.
        links, values = wait_for(lambda: (found := database_copy(database_url, str(c.tenant.id), case_id))[0]
                                 and found, 15, what="the notices' links")
        assert_none_works(world, c, forged_tokens(links, values, settings.secret_key))

    sent = world.settle(lambda: len(notices(world, case_id, "reset.scheduled")) == 2
                        and notices(world, case_id, "reset.scheduled"), "both scheduled-reset notices")
    world.quiesce()
    links, values = database_copy(database_url, str(c.tenant.id), case_id)
    assert len(links) == 4  # each notice has its own report and cancel links
    with psycopg.connect(_dsn(database_url), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM recovery_links WHERE tenant_id = %s AND token_sealed IS NOT NULL",
                            (c.tenant.id,)).fetchone() == (0,)  # delivered: no longer sealed
    tokens = forged_tokens(links, values, settings.secret_key)
    assert len(tokens) > 100
    assert_none_works(world, c, tokens)

    # The user's own link, from the notice they received, does work.
    [cancel] = links_in(sent[0], "cancel")
    assert world.client.post(cancel).status_code == 202
    assert state(world, case_id, c.senior) == "suspected_attack"
    assert user_row(world, c.user)["status"] == "suspended"
