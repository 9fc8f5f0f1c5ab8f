"""Email addresses: the one normal form every stored address takes, and the mailbox key that
says whether two addresses are one person's. Below every domain (accounts, tenants)."""

from __future__ import annotations

import re
import unicodedata

from app.errors import ValidationFailed

_EMAIL = re.compile(
    r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$")


def normalize_email(raw: str) -> str:
    """NFKC, trimmed, lower-case ASCII. Non-ASCII addresses are refused, so look-alike
    (confusable) spellings can neither open a second account nor match the first."""
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    if not _EMAIL.match(email):
        raise ValidationFailed("Not a valid email address.", details={"field": "email"})
    return email


def mailbox_key(raw: str) -> str:
    """The mailbox an address reaches, to compare two addresses (never to look one up or send):
    NFKC and case-folded, and without a plus-alias, since ana+support@x and ANA@x both deliver to
    Ana. Whoever holds either is the same person for separation of duties."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold()).strip()
    local, at, domain = folded.rpartition("@")
    if not at:
        return folded
    return f"{local.split('+', 1)[0]}@{domain}"


def same_mailbox(a: str | None, b: str | None) -> bool:
    """Whether two addresses reach the same mailbox (False when either is missing)."""
    return bool(a and b) and mailbox_key(a or "") == mailbox_key(b or "")
