"""Secrets at rest: Fernet for what must be read back, argon2id for what must only be checked,
keyed digests for high-entropy bearer tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app

# Passwords: argon2-cffi's defaults (RFC 9106 low-memory profile).
password_hasher = PasswordHasher()
# Backup codes carry >= 80 random bits, so a low work factor is enough (NIST 800-63B allows it
# for look-up secrets) and keeps a sign-in to one cheap hash.
code_hasher = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)

# A hash of a random password: unknown accounts are checked against it so that they cost the
# same time as a wrong password (no account enumeration by timing).
_DUMMY_PASSWORD_HASH = password_hasher.hash(secrets.token_urlsafe(16))


def _fernet() -> MultiFernet:
    keys = current_app.extensions["rekey.settings"].encryption_keys.split(",")
    return MultiFernet([Fernet(key.strip().encode()) for key in keys if key.strip()])


def encrypt(plaintext: str) -> str:
    """Encrypt with the newest key."""
    return _fernet().encrypt(plaintext.encode()).decode()


class UnreadableCiphertext(RuntimeError):
    """No configured key opens this ciphertext (its key was removed from the rotation)."""


def decrypt(ciphertext: str) -> str:
    """Decrypt with any configured key (old keys stay readable during rotation)."""
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise UnreadableCiphertext("ciphertext not readable with the configured keys") from exc


def rotate(ciphertext: str) -> str:
    """Re-encrypt under the newest key."""
    return _fernet().rotate(ciphertext.encode()).decode()


def new_token(prefix: str) -> str:
    """A bearer token with 256 random bits and a prefix that tells a scanner what it is."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_digest(token: str) -> str:
    """What the database keeps of a high-entropy token: an HMAC under the pepper."""
    pepper = current_app.extensions["rekey.settings"].code_pepper.encode()
    return hmac.new(pepper, token.encode(), hashlib.sha256).hexdigest()


def hash_password(password: str) -> str:
    return password_hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant-work check; an absent hash still costs one argon2 verification."""
    try:
        return password_hasher.verify(stored_hash or _DUMMY_PASSWORD_HASH, password) and bool(stored_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def hash_code(code: str) -> str:
    return code_hasher.hash(code)


def verify_code(stored_hash: str, code: str) -> bool:
    try:
        return code_hasher.verify(stored_hash, code)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
