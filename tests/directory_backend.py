"""A `memory` directory kind for the tests of the seam's external path (issue 11, items 3-4).

Not a fake of any vendor: a small directory whose state lives in Redis, so the test process and
the real Celery worker (a separate process, which imports this module through
REKEY_DIRECTORY_MODULES) see the same users, factors and secrets. The tenant's directory URL is
the Redis URL and its realm the key namespace. A test can make the next calls of a method fail
transiently or permanently, or kill the worker process right after the effect happened (before
Rekey wrote its audit event), and read the log of calls made.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from integrations.directory import (
    ContactChannel,
    DirectoryUser,
    Factor,
    IssuedSecret,
    PermanentDirectoryError,
    ResetResult,
    TransientDirectoryError,
    UserDescription,
)
from integrations.directory.registry import DirectoryConfig, register

KIND = "memory"


def _now() -> datetime:
    return datetime.now(UTC)


class MemoryStore:
    """The directory's state under one namespace of one Redis database."""

    def __init__(self, url: str, namespace: str):
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.ns = namespace

    def key(self, *parts: str) -> str:
        return ":".join(("rekey-memdir", self.ns, *parts))

    # --- seeding and inspection (the test's side) ---

    def add_user(self, external_id: str, email: str, *, phones: tuple[tuple[str, datetime | None], ...] = (),
                 email_added_at: datetime | None = None, suspended: bool = False) -> None:
        self.r.hset(self.key("user", external_id), mapping={"email": email, "suspended": int(suspended)})
        self.r.set(self.key("email", email), external_id)
        def when(at: datetime | None) -> str | None:
            return at.isoformat() if at else None

        channels = [{"kind": "email", "value": email, "added_at": when(email_added_at)}]
        channels += [{"kind": "phone", "value": p, "added_at": when(at)} for p, at in phones]
        self.r.set(self.key("channels", external_id), json.dumps(channels))

    def set_channels(self, external_id: str, channels: list[dict[str, Any]]) -> None:
        self.r.set(self.key("channels", external_id), json.dumps(channels))

    def add_factor(self, external_id: str, kind: str, *, created_at: datetime | None = None) -> str:
        serial = f"{kind.upper()}{secrets.token_hex(4)}"
        self.r.hset(self.key("factors", external_id), serial,
                    json.dumps({"kind": kind, "created_at": (created_at or _now()).isoformat()}))
        return serial

    def factors(self, external_id: str) -> dict[str, dict[str, Any]]:
        return {k: json.loads(v) for k, v in self.r.hgetall(self.key("factors", external_id)).items()}

    def secret(self, external_id: str, reference: str) -> dict[str, Any] | None:
        raw = self.r.get(self.key("secret", external_id, reference))
        return json.loads(raw) if raw else None

    def suspended(self, external_id: str) -> bool:
        return self.r.hget(self.key("user", external_id), "suspended") == "1"

    def fail(self, method: str, mode: str, times: int = 1) -> None:
        """The next `times` calls of `method` fail: `transient`, `permanent`, `lost` (the effect
        happens, the answer is lost: a transient error) or `crash` (the effect happens, then the
        worker process dies before Rekey records anything)."""
        self.r.set(self.key("fail", method), f"{mode}:{times}")

    def clear_failures(self) -> None:
        for name in self.r.scan_iter(self.key("fail", "*")):
            self.r.delete(name)

    def calls(self) -> list[str]:
        return list(self.r.lrange(self.key("calls"), 0, -1))

    # --- the directory's side ---

    def failure(self, method: str) -> str | None:
        """Log the call; the failure mode armed for it, if any (counted down)."""
        self.r.rpush(self.key("calls"), method)
        raw = self.r.get(self.key("fail", method))
        if not raw:
            return None
        mode, left = raw.split(":")
        if int(left) <= 1:
            self.r.delete(self.key("fail", method))
        else:
            self.r.set(self.key("fail", method), f"{mode}:{int(left) - 1}")
        return mode


@dataclass
class MemoryDirectory:
    store: MemoryStore
    kind: str = KIND

    def _enter(self, method: str) -> str | None:
        mode = self.store.failure(method)
        if mode == "transient":
            raise TransientDirectoryError(f"{method}: the memory directory is briefly unavailable")
        if mode == "permanent":
            raise PermanentDirectoryError(f"{method}: the memory directory refuses (test)")
        return mode

    @staticmethod
    def _after(mode: str | None) -> None:
        if mode == "crash":
            os._exit(137)  # the worker's pool child dies between the remote effect and the audit write
        if mode == "lost":
            # The effect happened but its answer never arrived (a dropped connection).
            raise TransientDirectoryError("the answer was lost after the effect happened")

    def _user(self, external_id: str) -> dict[str, str]:
        row = self.store.r.hgetall(self.store.key("user", external_id))
        if not row:
            raise PermanentDirectoryError(f"no such user {external_id!r}")
        return row

    def find_user(self, *, email: str | None = None, external_id: str | None = None) -> DirectoryUser | None:
        self._enter("find_user")
        ext = external_id or (self.store.r.get(self.store.key("email", email)) if email else None)
        if not ext or not self.store.r.exists(self.store.key("user", ext)):
            return None
        row = self._user(ext)
        return DirectoryUser(external_id=ext, email=row["email"], suspended=row.get("suspended") == "1")

    def describe(self, external_id: str) -> UserDescription:
        self._enter("describe")
        row = self._user(external_id)
        channels = tuple(ContactChannel(kind=c["kind"], value=c["value"],
                                        added_at=datetime.fromisoformat(c["added_at"]) if c["added_at"] else None)
                         for c in json.loads(self.store.r.get(self.store.key("channels", external_id)) or "[]"))
        factors = tuple(Factor(reference=serial, kind=f["kind"], created_at=datetime.fromisoformat(f["created_at"]))
                        for serial, f in sorted(self.store.factors(external_id).items()))
        return UserDescription(user=DirectoryUser(external_id=external_id, email=row["email"],
                                                  suspended=row.get("suspended") == "1"),
                               factors=factors, channels=channels, signins=None)

    def reset_factors(self, external_id: str) -> ResetResult:
        mode = self._enter("reset_factors")
        self._user(external_id)
        removed = tuple(sorted(self.store.factors(external_id)))
        self.store.r.delete(self.store.key("factors", external_id))
        self._after(mode)
        return ResetResult(removed=removed)

    def _issue(self, method: str, external_id: str, reference: str, values: tuple[str, ...]) -> IssuedSecret:
        mode = self._enter(method)
        self._user(external_id)
        self.store.r.set(self.store.key("secret", external_id, reference),
                         json.dumps({"kind": method, "secrets": list(values)}))  # the same reference replaces
        self._after(mode)
        return IssuedSecret(reference=reference, secrets=values)

    def issue_backup_codes(self, external_id: str, *, reference: str, count: int) -> IssuedSecret:
        return self._issue("issue_backup_codes", external_id, reference,
                           tuple(secrets.token_hex(5) for _ in range(count)))

    def set_temporary_password(self, external_id: str, *, reference: str) -> IssuedSecret:
        return self._issue("set_temporary_password", external_id, reference, (secrets.token_urlsafe(15),))

    def suspend(self, external_id: str) -> None:
        self._enter("suspend")
        self._user(external_id)
        self.store.r.hset(self.store.key("user", external_id), "suspended", 1)

    def reactivate(self, external_id: str) -> None:
        self._enter("reactivate")
        self._user(external_id)
        self.store.r.hset(self.store.key("user", external_id), "suspended", 0)

    def revoke_sessions(self, external_id: str) -> bool:
        self._enter("revoke_sessions")
        return False  # like privacyIDEA: no sessions to revoke

    def enrolled_since(self, external_id: str, since: datetime) -> tuple[Factor, ...]:
        self._enter("enrolled_since")
        return tuple(f for f in self.describe(external_id).factors if f.created_at and f.created_at >= since)


def _factory(config: DirectoryConfig) -> MemoryDirectory:
    if config.token != "memory-token":
        raise PermanentDirectoryError("bad service token")
    return MemoryDirectory(MemoryStore(config.url, config.realm))


register(KIND, _factory)
