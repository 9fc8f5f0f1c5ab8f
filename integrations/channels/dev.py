"""The development channel: writes what it would send to a JSON-lines file that `rekey
messages` and the tests read. Development and tests only: the file holds the codes."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from integrations.base import SentMessage
from integrations.channels import key_digest, mask_email, mask_phone

log = logging.getLogger(__name__)

OUTBOX_ENV = "REKEY_DEV_OUTBOX"
DEFAULT_OUTBOX = "instance/dev-messages.jsonl"


def default_outbox_path() -> Path:
    """REKEY_DEV_OUTBOX, else instance/dev-messages.jsonl."""
    return Path(os.environ.get(OUTBOX_ENV) or DEFAULT_OUTBOX)


@dataclass(frozen=True)
class DevChannelConfig:
    path: str | os.PathLike[str] | None = None  # None: default_outbox_path()


class DevChannel:
    """A `MessageChannel` that stores each message once per idempotency key."""

    kind = "dev"

    def __init__(self, config: DevChannelConfig | None = None):
        config = config or DevChannelConfig()
        self.path = Path(config.path) if config.path is not None else default_outbox_path()

    def send_sms(self, to_e164: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Store a text message."""
        return self._store("sms", to_e164, None, body, idempotency_key)

    def place_call(self, to_e164: str, spoken_text: str, *, idempotency_key: str) -> SentMessage:
        """Store the text a voice call would read aloud."""
        return self._store("voice", to_e164, None, spoken_text, idempotency_key)

    def send_email(self, to: str, subject: str, body: str, *, idempotency_key: str) -> SentMessage:
        """Store an email."""
        return self._store("email", to, subject, body, idempotency_key)

    def _store(
        self, channel: str, to: str, subject: str | None, body: str, idempotency_key: str
    ) -> SentMessage:
        provider_id = f"dev_{key_digest(channel + ':' + idempotency_key, 24)}"
        with _locked(self.path) as handle:
            # Scan under the lock: two workers retrying the same task must store one message.
            handle.seek(0)
            if any(rec.get("id") == provider_id for rec in _records(handle)):
                log.debug("dev %s already stored id=%s", channel, provider_id)
                return SentMessage(provider_id=provider_id, channel=channel)
            record = {
                "id": provider_id,
                "channel": channel,
                "to": to,
                "subject": subject,
                "body": body,
                "idempotency_key": idempotency_key,
                "sent_at": datetime.now(UTC).isoformat(),
            }
            handle.seek(0, os.SEEK_END)
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
        masked = mask_email(to) if channel == "email" else mask_phone(to)
        log.info("dev %s stored id=%s to=%s", channel, provider_id, masked)
        return SentMessage(provider_id=provider_id, channel=channel)


def read_messages(
    path: str | os.PathLike[str] | None = None, to: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The stored messages, oldest first; `to` filters by destination, `limit` keeps the newest."""
    file = Path(path) if path is not None else default_outbox_path()
    if not file.exists():
        return []
    with open(file, encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        try:
            records = [r for r in _records(handle) if to is None or r.get("to") == to]
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return records[-limit:] if limit else records


def _records(handle: IO[str]) -> Iterator[dict[str, Any]]:
    for line in handle:
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except ValueError:
            continue  # a line torn by a crash mid-write must not hide the others


@contextmanager
def _locked(path: Path) -> Iterator[IO[str]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the file holds verification and backup codes.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
