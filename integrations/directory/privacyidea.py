"""privacyIDEA (3.x REST API) behind the Directory seam.

Users come from one realm (the external id is the username there); factors are its tokens. Auth is a service
account's long-lived admin token (`pi-manage api createtoken`), sent as `Authorization: <jwt>` without `Bearer`.
What maps to what (docs/PRIVACYIDEA.md says which runbook rules the backend holds):

- reset: list the user's token serials, delete each (`DELETE /token/<serial>`; a 404 is a token already gone);
- backup codes: a `tan` token with serial = reference, initialised with codes generated here (re-issuing under the
  same reference deletes that token first, so there is never a second set);
- temporary password: a single-use `registration` token with serial = reference, valid for 24 hours;
- suspend: disable every active token one serial at a time (disabling by user fails when there are several), each
  marked with the token info `rekey_suspended` first, so reactivate enables only what Rekey disabled;
- sessions: privacyIDEA keeps none (`revoke_sessions` answers False);
- sign-ins: its authentication log (`/authenticationlog/`), which carries the client's address; where the server
  has no such log or the token may not read it, `signins` is None (no data, not "nothing unusual").
"""
from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from integrations.base import PermanentDeliveryError, TransientDeliveryError
from integrations.directory import (
    ContactChannel,
    DirectoryUser,
    Factor,
    IssuedSecret,
    PermanentDirectoryError,
    ResetResult,
    SigninRecord,
    TransientDirectoryError,
    UserDescription,
)
from integrations.http import RETRYABLE_4XX, OutboundExchange, OutboundPolicy, exchange

log = logging.getLogger(__name__)

SUSPENDED_INFO = "rekey_suspended"
TEMPORARY_PASSWORD_HOURS = 24
# Lowercase letters and digits without the look-alikes (0/o, 1/l/i): typed by hand from a text message.
CODE_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
CODE_LENGTH = 14  # ~69 bits: DESIGN wants backup codes of at least 64 bits
# Tokens Rekey issues or that hold no second factor a user enrolled: not "enrolled again".
NOT_ENROLMENT = frozenset({"tan", "paper", "registration", "pw", "spass"})
PAGE_SIZE = 100
# Authentication-log events still in flight (a challenge sent, an enrolment started): neither outcome yet.
PENDING_EVENTS = frozenset({"CHALLENGE_TRIGGERED", "CHALLENGE_CONTINUED", "CHALLENGE_ANSWERED_OUT_OF_BAND",
                            "ENROLLMENT_TRIGGERED"})
SIGNIN_PAGE = 50


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("+0000", "-0000")):
        text = text[:-5] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_code() -> str:
    """One backup code (TAN): 14 characters of a 31-letter alphabet, ~69 bits."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


@dataclass
class PrivacyIDEADirectory:
    """One tenant's privacyIDEA: base URL, realm, and the service account's admin token (decrypted by the caller)."""

    url: str
    realm: str
    token: str = field(repr=False)
    policy: OutboundPolicy = field(default_factory=OutboundPolicy.from_env)
    kind: str = field(default="privacyidea", init=False)

    # --- HTTP ---------------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                 data: Mapping[str, str] | None = None, gone_ok: bool = False) -> Any:
        """The `result.value` of one call; None for a 404 when `gone_ok`. Errors mapped to the seam's two kinds."""
        where = f"privacyIDEA {method} {path.split('?')[0]}"
        try:
            answer = exchange(method, self.url.rstrip("/") + path, policy=self.policy,
                              headers={"Authorization": self.token, "Accept": "application/json"},
                              params=params, data=data)
        except TransientDeliveryError as exc:
            raise TransientDirectoryError(f"{where}: {exc}") from exc
        except PermanentDeliveryError as exc:  # the SSRF guard refused the URL
            raise PermanentDirectoryError(f"{where}: {exc}") from exc
        if answer.status == 404 and gone_ok:
            return None
        return self._value(answer, where)

    @staticmethod
    def _value(answer: OutboundExchange, where: str) -> Any:
        body = answer.json()
        result = body.get("result") if isinstance(body, dict) else None
        error = result.get("error") if isinstance(result, dict) else None
        detail = ""
        if isinstance(error, dict):  # code and message only: privacyIDEA never echoes a secret there
            detail = f" (privacyIDEA error {error.get('code')}: {str(error.get('message', ''))[:200]})"
        status = answer.status
        if status >= 500 or status in RETRYABLE_4XX:
            raise TransientDirectoryError(f"{where}: HTTP {status}{detail}")
        if status in (401, 403):
            raise PermanentDirectoryError(f"{where}: HTTP {status}, the service token was refused{detail}")
        if not 200 <= status < 300:
            raise PermanentDirectoryError(f"{where}: HTTP {status}{detail}")
        if not isinstance(result, dict) or result.get("status") is not True:
            raise PermanentDirectoryError(f"{where}: not a privacyIDEA answer{detail}")
        return result.get("value")

    @staticmethod
    def _serial_path(serial: str) -> str:
        return quote(serial, safe="")

    # --- reading ------------------------------------------------------------------------------------------------

    def _users(self, **filters: str) -> list[dict[str, Any]]:
        value = self._request("GET", "/user/", params={"realm": self.realm, **filters})
        return [u for u in value or [] if isinstance(u, dict)]

    def _user_record(self, external_id: str) -> dict[str, Any]:
        exact = [u for u in self._users(username=external_id) if u.get("username") == external_id]
        if not exact:
            raise PermanentDirectoryError(f"privacyIDEA: no user {external_id!r} in realm {self.realm!r}")
        return exact[0]

    def _tokens(self, external_id: str) -> list[dict[str, Any]]:
        tokens: list[dict[str, Any]] = []
        page = 1
        while True:
            value = self._request("GET", "/token/", params={
                "user": external_id, "realm": self.realm, "pagesize": str(PAGE_SIZE), "page": str(page)})
            if not isinstance(value, dict):
                raise PermanentDirectoryError("privacyIDEA GET /token/: not a token list")
            tokens.extend(t for t in value.get("tokens") or [] if isinstance(t, dict))
            if not value.get("next"):
                return tokens
            page = int(value["next"])

    def _token(self, serial: str) -> dict[str, Any] | None:
        value = self._request("GET", "/token/", params={"serial": serial})
        found = [t for t in (value or {}).get("tokens") or [] if t.get("serial") == serial]
        return found[0] if found else None

    def _directory_user(self, record: Mapping[str, Any], tokens: list[dict[str, Any]]) -> DirectoryUser:
        name = " ".join(str(record.get(k) or "").strip() for k in ("givenname", "surname")).strip()
        return DirectoryUser(
            external_id=str(record.get("username")), email=str(record.get("email") or ""), display_name=name,
            suspended=any(SUSPENDED_INFO in (t.get("info") or {}) for t in tokens),
        )

    def find_user(self, *, email: str | None = None, external_id: str | None = None) -> DirectoryUser | None:
        """The realm user with this username, or with exactly this email (case-insensitive); None if none."""
        if external_id:
            if "*" in external_id:
                return None  # privacyIDEA reads * as a wildcard: never a lookup by pattern
            matches = [u for u in self._users(username=external_id) if u.get("username") == external_id]
        elif email:
            if "*" in email:
                return None
            wanted = email.strip().lower()
            matches = [u for u in self._users(email=email.strip())
                       if str(u.get("email") or "").strip().lower() == wanted]
        else:
            return None
        if not matches:
            return None
        if len(matches) > 1:
            raise PermanentDirectoryError(f"privacyIDEA: {len(matches)} users in realm {self.realm!r} match")
        record = matches[0]
        return self._directory_user(record, self._tokens(str(record["username"])))

    def describe(self, external_id: str) -> UserDescription:
        """Tokens, remaining TANs, email and phones (resolver `mobile` / `phone`), and the authentication log."""
        record = self._user_record(external_id)
        tokens = self._tokens(external_id)
        factors = tuple(self._factor(t) for t in tokens)
        tans = [t for t in tokens if t.get("tokentype") == "tan" and t.get("active")]
        remaining = sum(int((t.get("info") or {}).get("tan.count") or 0) for t in tans) if tans else 0
        channels: list[ContactChannel] = []
        if record.get("email"):
            channels.append(ContactChannel("email", str(record["email"]).strip()))
        for attribute in ("mobile", "phone"):
            value = str(record.get(attribute) or "").strip()
            if value and all(c.value != value for c in channels):
                channels.append(ContactChannel("phone", value))
        signins, note = self._signins(external_id)
        facts = {"realm": self.realm, "resolver": str(record.get("resolver") or ""), "tokens": str(len(tokens))}
        if note:
            facts["sign-in history"] = note
        return UserDescription(
            user=self._directory_user(record, tokens), factors=factors, backup_codes_remaining=remaining,
            channels=tuple(channels), signins=signins, facts=facts,
        )

    @staticmethod
    def _factor(token: Mapping[str, Any]) -> Factor:
        info = token.get("info") or {}
        return Factor(
            reference=str(token.get("serial")), kind=str(token.get("tokentype") or "unknown"),
            label=str(token.get("description") or ""),
            active=bool(token.get("active")) and not token.get("revoked") and not token.get("locked"),
            created_at=_parse_time(info.get("creation_date")),
        )

    def _signins(self, external_id: str) -> tuple[tuple[SigninRecord, ...] | None, str]:
        try:
            value = self._request("GET", "/authenticationlog/", params={
                "realms": self.realm, "usernames": external_id, "page_size": str(SIGNIN_PAGE),
                "sort_column": "timestamp", "sort_order": "desc"})
        except PermanentDirectoryError as exc:
            # An older server without the log, or a token whose policy may not read it: no data, said so.
            log.info("privacyIDEA authentication log unavailable: %s", exc)
            return None, "unavailable: the service token cannot read privacyIDEA's authentication log"
        records = []
        for entry in (value or {}).get("auth_logs") or []:
            outcome = _outcome(str(entry.get("event_type") or ""))
            at = _parse_time(entry.get("timestamp"))
            if outcome is None or at is None:
                continue
            records.append(SigninRecord(at=at, outcome=outcome, ip=entry.get("source_ip") or None))
        return tuple(records), ""

    # --- effects ------------------------------------------------------------------------------------------------

    def _delete_token(self, serial: str) -> bool:
        """True when this call deleted it; False when it was already gone (404)."""
        return self._request("DELETE", f"/token/{self._serial_path(serial)}", gone_ok=True) is not None

    def reset_factors(self, external_id: str) -> ResetResult:
        """Delete every token of the user, one serial at a time; the serials this call removed."""
        self._user_record(external_id)  # an unknown user is a permanent failure, not "nothing to remove"
        removed = [str(t["serial"]) for t in self._tokens(external_id) if self._delete_token(str(t["serial"]))]
        return ResetResult(removed=tuple(removed))

    def issue_backup_codes(self, external_id: str, *, reference: str, count: int) -> IssuedSecret:
        """A `tan` token with serial = reference holding `count` fresh codes (replacing any earlier set)."""
        if count < 1:
            raise PermanentDirectoryError("privacyIDEA: at least one backup code")
        self._replace_token(external_id, reference)
        codes = tuple(new_code() for _ in range(count))
        self._request("POST", "/token/init", data={
            "type": "tan", "serial": reference, "user": external_id, "realm": self.realm,
            "tans": " ".join(codes), "description": "Rekey backup codes"})
        return IssuedSecret(reference=reference, secrets=codes)

    def set_temporary_password(self, external_id: str, *, reference: str) -> IssuedSecret:
        """A `registration` token with serial = reference: one use, valid 24 hours (privacyIDEA holds both)."""
        self._replace_token(external_id, reference)
        detail_value = self._init_with_detail({
            "type": "registration", "serial": reference, "user": external_id, "realm": self.realm,
            "description": "Rekey temporary password"})
        code = detail_value.get("registrationcode")
        if not isinstance(code, str) or not code:
            self._delete_token(reference)
            raise PermanentDirectoryError("privacyIDEA: the registration token came without a code")
        expires = (datetime.now(UTC) + timedelta(hours=TEMPORARY_PASSWORD_HOURS)).replace(second=0, microsecond=0)
        self._request("POST", "/token/set", data={
            "serial": reference, "validity_period_end": expires.strftime("%Y-%m-%dT%H:%M+0000")})
        return IssuedSecret(reference=reference, secrets=(code,), expires_at=expires)

    def _init_with_detail(self, data: Mapping[str, str]) -> dict[str, Any]:
        # /token/init returns the registration code in `detail`, beside `result`.
        where = "privacyIDEA POST /token/init"
        try:
            answer = exchange("POST", self.url.rstrip("/") + "/token/init", policy=self.policy,
                              headers={"Authorization": self.token, "Accept": "application/json"}, data=data)
        except TransientDeliveryError as exc:
            raise TransientDirectoryError(f"{where}: {exc}") from exc
        except PermanentDeliveryError as exc:
            raise PermanentDirectoryError(f"{where}: {exc}") from exc
        self._value(answer, where)
        body = answer.json()
        detail = body.get("detail") if isinstance(body, dict) else None
        return detail if isinstance(detail, dict) else {}

    def _replace_token(self, external_id: str, reference: str) -> None:
        """Delete the token named `reference` if there is one, refusing to touch another user's token."""
        existing = self._token(reference)
        if existing is None:
            return
        if existing.get("username") != external_id or existing.get("user_realm") != self.realm:
            raise PermanentDirectoryError(f"privacyIDEA: token {reference!r} belongs to someone else")
        self._delete_token(reference)

    def suspend(self, external_id: str) -> None:
        """Mark, then disable, every active token (one serial at a time); a token already gone is skipped."""
        self._user_record(external_id)
        for token in self._tokens(external_id):
            if not token.get("active"):
                continue  # disabled before (by someone else, or by an earlier try of this call after its mark)
            serial = str(token["serial"])
            if self._request("POST", f"/token/info/{self._serial_path(serial)}/{SUSPENDED_INFO}",
                             data={"value": "1"}, gone_ok=True) is None:
                continue
            self._request("POST", "/token/disable", data={"serial": serial}, gone_ok=True)

    def reactivate(self, external_id: str) -> None:
        """Enable the tokens suspend disabled (those marked), then drop the mark; others stay as they are."""
        self._user_record(external_id)
        for token in self._tokens(external_id):
            if SUSPENDED_INFO not in (token.get("info") or {}):
                continue
            serial = str(token["serial"])
            self._request("POST", "/token/enable", data={"serial": serial}, gone_ok=True)
            self._request("DELETE", f"/token/info/{self._serial_path(serial)}/{SUSPENDED_INFO}", gone_ok=True)

    def revoke_sessions(self, external_id: str) -> bool:
        """privacyIDEA authenticates single requests and keeps no sessions: nothing to revoke."""
        return False

    def enrolled_since(self, external_id: str, since: datetime) -> tuple[Factor, ...]:
        """Active, fully enrolled tokens created at or after `since` (not the TAN/registration tokens Rekey issues)."""
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        since = since.replace(microsecond=0)  # privacyIDEA keeps creation dates to the second
        found = []
        for token in self._tokens(external_id):
            factor = self._factor(token)
            if (factor.kind in NOT_ENROLMENT or not factor.active or factor.created_at is None
                    or token.get("rollout_state") not in (None, "", "enrolled")):
                continue
            if factor.created_at >= since:
                found.append(factor)
        return tuple(found)


def _outcome(event_type: str) -> str | None:
    """privacyIDEA's authentication-log event type as success / failure; None for one still pending."""
    if event_type == "LOGIN_SUCCESS":
        return "success"
    if event_type in PENDING_EVENTS or not event_type:
        return None
    return "failure"


def from_config(config: Any, policy: OutboundPolicy | None = None) -> PrivacyIDEADirectory:
    """The registry's factory: a tenant's directory configuration (url, realm, opened token) to an adapter."""
    if not config.url or not config.realm or not config.token:
        raise PermanentDirectoryError("privacyIDEA directory needs a URL, a realm and a service token")
    return PrivacyIDEADirectory(url=config.url, realm=config.realm, token=config.token,
                                policy=policy or OutboundPolicy.from_env())
