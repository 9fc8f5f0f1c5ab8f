"""A software security key for the tests: a real ES256 key pair (from `cryptography`) that answers
WebAuthn options with the objects a browser hands back from `navigator.credentials.create()` and
`.get()` (`PublicKeyCredential.toJSON()`): clientDataJSON, a CBOR attestation object (`none`
format) with the COSE public key, and assertions signed over authenticatorData and the hash of
clientDataJSON. Nothing is faked on the server's side: py_webauthn checks these as it would a
hardware key's.

The knobs are the attacks: answer for another origin or relying party, sign a challenge other
than the one in the options, or present a clone (the same private key, its counter left behind).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
from copy import copy
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

UP, UV, AT = 0x01, 0x04, 0x40
# The AAGUID a YubiKey 5 NFC reports: a model, not a person.
YUBIKEY_5_AAGUID = bytes.fromhex("cb69481e8ff7403993ec0a2729a154a8")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SoftKey:
    """One credential on a software authenticator."""

    def __init__(self, *, origin: str = "http://localhost:5000", aaguid: bytes = YUBIKEY_5_AAGUID,
                 user_verified: bool = True, transports: tuple[str, ...] = ("usb", "nfc")) -> None:
        self.origin = origin
        self.aaguid = aaguid
        self.user_verified = user_verified
        self.transports = list(transports)
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = secrets.token_bytes(32)
        self.sign_count = 0
        self.user_handle: bytes | None = None

    @property
    def id(self) -> str:
        return b64url(self.credential_id)

    def clone(self) -> SoftKey:
        """The same private key and credential id, its counter frozen where it stands now (an
        attacker's copy of the key, extracted once)."""
        return copy(self)

    def _cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})

    def _flags(self) -> int:
        return UP | (UV if self.user_verified else 0)

    def _client_data(self, kind: str, challenge: str, origin: str | None) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin or self.origin,
                           "crossOrigin": False}).encode()

    def create(self, options: dict[str, Any], *, origin: str | None = None, rp_id: str | None = None,
               challenge: str | None = None, kind: str = "webauthn.create") -> dict[str, Any]:
        """Answer registration options (`PublicKeyCredentialCreationOptionsJSON`)."""
        rp_hash = hashlib.sha256((rp_id or options["rp"]["id"]).encode()).digest()
        self.user_handle = unb64url(options["user"]["id"])
        attested = self.aaguid + struct.pack(">H", len(self.credential_id)) + self.credential_id
        auth_data = (rp_hash + bytes([self._flags() | AT]) + struct.pack(">I", self.sign_count)
                     + attested + self._cose_public_key())
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = self._client_data(kind, challenge or options["challenge"], origin)
        return {"id": self.id, "rawId": self.id, "type": "public-key", "authenticatorAttachment": "cross-platform",
                "clientExtensionResults": {},
                "response": {"clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation),
                             "transports": self.transports}}

    def get(self, options: dict[str, Any], *, origin: str | None = None, rp_id: str | None = None,
            challenge: str | None = None, kind: str = "webauthn.get") -> dict[str, Any]:
        """Answer request options (`PublicKeyCredentialRequestOptionsJSON`); the counter grows."""
        allowed = [c["id"] for c in options.get("allowCredentials", [])]
        assert not allowed or self.id in allowed, "the options do not name this key"
        self.sign_count += 1
        rp_hash = hashlib.sha256((rp_id or options["rpId"]).encode()).digest()
        auth_data = rp_hash + bytes([self._flags()]) + struct.pack(">I", self.sign_count)
        client_data = self._client_data(kind, challenge or options["challenge"], origin)
        signature = self.private_key.sign(auth_data + hashlib.sha256(client_data).digest(),
                                          ec.ECDSA(hashes.SHA256()))
        return {"id": self.id, "rawId": self.id, "type": "public-key", "authenticatorAttachment": "cross-platform",
                "clientExtensionResults": {},
                "response": {"clientDataJSON": b64url(client_data), "authenticatorData": b64url(auth_data),
                             "signature": b64url(signature),
                             "userHandle": b64url(self.user_handle) if self.user_handle else None}}
