"""Signed checkpoints of the audit chains, kept outside the database.

The chain proves that rows were not changed one at a time; it cannot prove anything against
whoever may rewrite every row and recompute every hash (the database owner, a restored backup).
A checkpoint closes that gap: every few minutes, per tenant whose chain moved, the checkpoint
writer signs `{tenant, seq, hash, event time, checkpoint time, previous checkpoint's digest}`
with an Ed25519 key the database never sees, and appends it as one JSON line to
`<REKEY_AUDIT_CHECKPOINT_DIR>/<tenant id>.jsonl` (and, when a SIEM sink is configured, sends it
there too: the copy that witnesses the newest lines). The checkpoints of a tenant form their
own chain (`prev_digest`, `number`), so a removed or reordered line is detected as well.

A line is written with one `write` of the whole line and its newline, under an exclusive
`flock`, then fsync'd. A writer killed mid-line leaves bytes after the last newline: that torn
tail never counts, readers ignore it and the next writer cuts it off before appending.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS_DIGEST = "0" * 64
DEV_KEY_NAME = "audit-signing-key.pem"


class SigningKeyError(RuntimeError):
    """No usable signing key: the checkpoint writer refuses to run (never the web process)."""


class CheckpointError(ValueError):
    """A checkpoint file that does not verify; the message names the line and what broke."""

    def __init__(self, message: str, *, number: int | None = None, line: int | None = None):
        super().__init__(message)
        self.number = number
        self.line = line


# --- keys ------------------------------------------------------------------------------------

def _read_key_material(value: str) -> bytes:
    """A key given as PEM text, as a path to a file holding it, or as base64 of the raw bytes."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return text.encode()
    if "\n" not in text and len(text) < 4096:
        path = Path(text)
        if path.is_file():
            return path.read_bytes()
    return text.encode()


def parse_private_key(value: str) -> Ed25519PrivateKey:
    material = _read_key_material(value)
    try:
        if material.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(material, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(material.strip(), validate=True))
    except (ValueError, TypeError) as exc:
        # Never echo the material: it is the secret.
        raise SigningKeyError("REKEY_AUDIT_SIGNING_KEY is neither an Ed25519 private key in PEM, a file "
                              "holding one, nor base64 of its 32 raw bytes") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError("REKEY_AUDIT_SIGNING_KEY is not an Ed25519 key")
    return key


def parse_public_key(value: str) -> Ed25519PublicKey:
    material = _read_key_material(value)
    try:
        if material.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(material)
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(material.strip(), validate=True))
    except (ValueError, TypeError) as exc:
        raise CheckpointError("the public key is neither an Ed25519 public key in PEM nor base64 of "
                              "its 32 raw bytes") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError("the public key is not an Ed25519 key")
    return key


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for the key: the first 16 hex digits of SHA-256 over its raw bytes."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def development_key_path(settings: Any) -> Path:
    from app.config import INSTANCE_DIR

    return Path(getattr(settings, "audit_dev_key_path", "") or INSTANCE_DIR / DEV_KEY_NAME)


def load_signing_key(settings: Any, *, create: bool = True) -> Ed25519PrivateKey:
    """The private key from REKEY_AUDIT_SIGNING_KEY. Outside production, without one, a key is
    generated once under the instance folder (mode 0600); production refuses."""
    if settings.audit_signing_key:
        return parse_private_key(settings.audit_signing_key)
    if settings.is_production:
        raise SigningKeyError("REKEY_ENV=production but REKEY_AUDIT_SIGNING_KEY is not set: the checkpoint "
                              "writer needs the Ed25519 private key (a file path or its PEM text)")
    path = development_key_path(settings)
    if path.is_file():
        return parse_private_key(str(path))
    if not create:
        raise SigningKeyError(f"no signing key: REKEY_AUDIT_SIGNING_KEY is not set and {path} does not exist")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_key_pem(key))
    return key


def verifying_key(settings: Any) -> Ed25519PublicKey | None:
    """The public key a verifier uses: REKEY_AUDIT_PUBLIC_KEY, else the one of the configured (or
    development) private key; None when there is neither (the web process may run without)."""
    if getattr(settings, "audit_public_key", ""):
        return parse_public_key(settings.audit_public_key)
    try:
        return load_signing_key(settings, create=False).public_key()
    except SigningKeyError:
        return None


# --- checkpoints -----------------------------------------------------------------------------

def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Checkpoint:
    tenant_id: str
    number: int
    seq: int
    hash: str
    event_time: str
    checkpoint_time: str
    prev_digest: str
    key_id: str
    digest: str = ""
    signature: str = ""

    def body(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant_id, "number": self.number, "seq": self.seq, "hash": self.hash,
                "event_time": self.event_time, "checkpoint_time": self.checkpoint_time,
                "prev_digest": self.prev_digest, "key_id": self.key_id}

    def as_dict(self) -> dict[str, Any]:
        return {"body": self.body(), "digest": self.digest, "signature": self.signature}

    def line(self) -> bytes:
        return _canonical(self.as_dict()) + b"\n"


def sign(body: dict[str, Any], key: Ed25519PrivateKey) -> Checkpoint:
    raw = _canonical(body)
    return Checkpoint(**body, digest=hashlib.sha256(raw).hexdigest(),
                      signature=base64.b64encode(key.sign(raw)).decode())


def _parse_line(raw: bytes, public_key: Ed25519PublicKey, line_no: int) -> Checkpoint:
    try:
        record = json.loads(raw)
        body = record["body"]
        point = Checkpoint(tenant_id=str(body["tenant_id"]), number=int(body["number"]), seq=int(body["seq"]),
                           hash=str(body["hash"]), event_time=str(body["event_time"]),
                           checkpoint_time=str(body["checkpoint_time"]), prev_digest=str(body["prev_digest"]),
                           key_id=str(body["key_id"]), digest=str(record["digest"]),
                           signature=str(record["signature"]))
        signed = _canonical(body)
        signature = base64.b64decode(point.signature, validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint line {line_no} is not a checkpoint", line=line_no) from exc
    if set(body) != set(point.body()) or _canonical(point.body()) != signed:
        raise CheckpointError(f"checkpoint line {line_no} has fields that are not signed", line=line_no,
                              number=point.number)
    if hashlib.sha256(signed).hexdigest() != point.digest:
        raise CheckpointError(f"checkpoint #{point.number} (line {line_no}): its digest does not match its body",
                              line=line_no, number=point.number)
    try:
        public_key.verify(signature, signed)
    except InvalidSignature as exc:
        raise CheckpointError(f"checkpoint #{point.number} (line {line_no}): the signature does not verify "
                              f"with the public key {key_id(public_key)} (signed as {point.key_id})",
                              line=line_no, number=point.number) from exc
    return point


@dataclass
class CheckpointLog:
    """One tenant's verified checkpoints, oldest first."""

    tenant_id: str
    points: list[Checkpoint] = field(default_factory=list)
    torn_tail: bool = False

    @property
    def newest(self) -> Checkpoint | None:
        return self.points[-1] if self.points else None

    def by_seq(self) -> dict[int, Checkpoint]:
        return {point.seq: point for point in self.points}

    def up_to(self, seq: int) -> CheckpointLog:
        return CheckpointLog(self.tenant_id, [p for p in self.points if p.seq <= seq], self.torn_tail)


def log_path(directory: str | Path, tenant_id: uuid.UUID | str) -> Path:
    return Path(directory) / f"{uuid.UUID(str(tenant_id))}.jsonl"


def _complete_lines(data: bytes) -> tuple[list[bytes], int]:
    """The complete lines and the length they span; bytes after the last newline are a torn tail."""
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines(), end


def parse_log(data: bytes, public_key: Ed25519PublicKey, tenant_id: uuid.UUID | str,
              source: str = "checkpoints") -> CheckpointLog:
    """Verify every complete line: its digest, its signature, its link to the previous line,
    its number and an increasing seq, all for this tenant."""
    tenant = str(uuid.UUID(str(tenant_id)))
    lines, end = _complete_lines(data)
    log = CheckpointLog(tenant, torn_tail=end < len(data))
    previous_digest, previous_seq = GENESIS_DIGEST, 0
    for index, raw in enumerate(lines, start=1):
        point = _parse_line(raw, public_key, index)
        where = f"checkpoint #{point.number} (line {index} of {source})"
        if point.tenant_id != tenant:
            raise CheckpointError(f"{where} belongs to tenant {point.tenant_id}", line=index, number=point.number)
        if point.number != index:
            raise CheckpointError(f"{where}: expected checkpoint #{index} (a checkpoint is missing or repeated)",
                                  line=index, number=point.number)
        if point.prev_digest != previous_digest:
            raise CheckpointError(f"{where} does not link to the checkpoint before it (one was removed, "
                                  f"reordered or replaced)", line=index, number=point.number)
        if point.seq <= previous_seq:
            raise CheckpointError(f"{where}: seq {point.seq} does not follow seq {previous_seq}",
                                  line=index, number=point.number)
        log.points.append(point)
        previous_digest, previous_seq = point.digest, point.seq
    return log


def read_log(directory: str | Path, public_key: Ed25519PublicKey, tenant_id: uuid.UUID | str) -> CheckpointLog:
    path = log_path(directory, tenant_id)
    data = path.read_bytes() if path.is_file() else b""
    return parse_log(data, public_key, tenant_id, source=path.name)


def latest(directory: str | Path, tenant_id: uuid.UUID | str, limit: int) -> list[dict[str, Any]]:
    """The newest `limit` complete lines as stored (newest first), unverified: for publishing."""
    path = log_path(directory, tenant_id)
    if not path.is_file():
        return []
    lines, _ = _complete_lines(path.read_bytes())
    found = []
    for raw in reversed(lines[-limit:] if limit else []):
        try:
            found.append(json.loads(raw))
        except ValueError:
            found.append({"unreadable": raw.decode(errors="replace")})
    return found


# --- the writer ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Head:
    tenant_id: uuid.UUID
    seq: int
    hash: str
    event_time: datetime


def _append(path: Path, head: Head, key: Ed25519PrivateKey, now: datetime) -> Checkpoint | None:
    """Under an exclusive lock: cut a torn tail, then append a checkpoint if the chain moved."""
    public = key.public_key()
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        data = b""
        while chunk := os.pread(descriptor, 1 << 20, len(data)):
            data += chunk
        lines, end = _complete_lines(data)
        if end < len(data):
            os.ftruncate(descriptor, end)  # a writer died mid-line: that line never was
            os.fsync(descriptor)
        # Refuse to extend a log that does not verify: a new line would hide the break.
        log = parse_log(data[:end], public, head.tenant_id, source=path.name)
        newest = log.newest
        if newest is not None and newest.seq >= head.seq:
            if newest.seq > head.seq:
                raise CheckpointError(f"tenant {head.tenant_id}: the chain's head is at seq {head.seq} but "
                                      f"checkpoint #{newest.number} vouches for seq {newest.seq}",
                                      number=newest.number)
            return None
        from app.audit.chain import iso_time

        point = sign({"tenant_id": str(head.tenant_id), "number": len(log.points) + 1, "seq": head.seq,
                      "hash": head.hash, "event_time": iso_time(head.event_time),
                      "checkpoint_time": iso_time(now),
                      "prev_digest": newest.digest if newest else GENESIS_DIGEST, "key_id": key_id(public)},
                     key)
        line = point.line()
        written = os.write(descriptor, line)
        if written != len(line):  # pragma: no cover (a full disk): leave a torn tail, not a short line
            raise OSError(f"short write to {path}")
        os.fsync(descriptor)
        return point
    finally:
        os.close(descriptor)


def current_heads() -> Iterator[Head]:
    """Every tenant's head with the time of its newest event (read in one statement)."""
    from sqlalchemy import and_, select

    from app.audit.models import AuditEvent, AuditHead
    from app.extensions import db

    stmt = (select(AuditHead.tenant_id, AuditHead.seq, AuditHead.hash, AuditEvent.occurred_at)
            .join(AuditEvent, and_(AuditEvent.tenant_id == AuditHead.tenant_id, AuditEvent.seq == AuditHead.seq))
            .where(AuditHead.seq > 0).order_by(AuditHead.tenant_id))
    for tenant_id, seq, digest, occurred_at in db.session.execute(stmt):
        yield Head(tenant_id, seq, digest, occurred_at)


@dataclass
class WriteResult:
    written: list[Checkpoint] = field(default_factory=list)
    # Tenants whose checkpoint file does not verify (or is ahead of the chain): nothing appended.
    refused: list[str] = field(default_factory=list)


def write_checkpoints(settings: Any, *, now: datetime | None = None) -> WriteResult:
    """Sign and append a checkpoint for every tenant whose chain moved since its last one (needs
    an app context; the caller commits, which queues the SIEM copies). A tenant whose file does
    not verify is refused and named; the others still get theirs."""
    from app.audit.forwarding import schedule_checkpoint_forward

    key = load_signing_key(settings)
    directory = Path(settings.audit_checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    moment = now or datetime.now(UTC)
    result = WriteResult()
    for head in list(current_heads()):
        try:
            point = _append(log_path(directory, head.tenant_id), head, key, moment)
        except CheckpointError as exc:
            result.refused.append(f"tenant {head.tenant_id}: {exc}")
            continue
        if point is not None:
            schedule_checkpoint_forward(point.as_dict())
            result.written.append(point)
    return result
