"""A fake of Keycloak's Admin REST API (the subset the Keycloak directory adapter calls), as documented for
Keycloak 26 (https://www.keycloak.org/docs-api/latest/rest-api/):

- POST /realms/{realm}/protocol/openid-connect/token  (grant_type=client_credentials, client_id, client_secret)
- GET  /admin/realms/{realm}/users?email=|username=&exact=true, GET/PUT /admin/realms/{realm}/users/{id}
- GET  /users/{id}/credentials, DELETE /users/{id}/credentials/{credentialId}
- PUT  /users/{id}/reset-password  ({"type": "password", "value": ..., "temporary": true})
- POST /users/{id}/logout, GET /users/{id}/sessions, GET /users/{id}/federated-identity
- GET  /admin/realms/{realm}/events?user=&type=LOGIN&type=LOGIN_ERROR, GET /admin/realms/{realm}/events/config

Access tokens are opaque here (Keycloak's are JWTs the admin API verifies; the adapter never reads them) and expire
after `token_lifetime` seconds. Everything lives in memory; tests look at `.users`, `.credentials`, `.sessions`.
"""
from __future__ import annotations

import json
import re
import secrets
import ssl
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from integrations.fakes.server import Answer, FakeServer, RecordedRequest

_TOKEN = re.compile(r"^/realms/(?P<realm>[^/]+)/protocol/openid-connect/token$")
_ADMIN = re.compile(r"^/admin/realms/(?P<realm>[^/]+)(?P<rest>/.*)?$")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class KeycloakUser:
    id: str
    username: str
    email: str
    first_name: str = ""
    last_name: str = ""
    enabled: bool = True
    attributes: dict[str, list[str]] = field(default_factory=dict)
    created: int = field(default_factory=_now_ms)
    required_actions: list[str] = field(default_factory=list)
    password: str | None = None
    password_temporary: bool = False
    federated: list[dict[str, str]] = field(default_factory=list)

    def representation(self) -> dict[str, Any]:
        return {
            "id": self.id, "username": self.username, "email": self.email, "emailVerified": True,
            "firstName": self.first_name, "lastName": self.last_name, "enabled": self.enabled,
            "createdTimestamp": self.created, "attributes": self.attributes,
            "requiredActions": self.required_actions, "totp": False,
        }


class FakeKeycloak(FakeServer):
    """One realm, one service-account client with the realm-management roles the adapter needs."""

    def __init__(self, realm: str = "acme", client_id: str = "rekey",
                 client_secret: str = "kc-client-secret",  # noqa: S107 - a fake's test credential
                 *, token_lifetime: int = 300, events_enabled: bool = True, tls: ssl.SSLContext | None = None):
        super().__init__(tls=tls)
        self.realm = realm
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.events_enabled = events_enabled
        self.access_tokens: dict[str, float] = {}
        self.users: dict[str, KeycloakUser] = {}
        self.credentials: dict[str, list[dict[str, Any]]] = {}
        self.sessions: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.token_requests = 0

    # --- seeding (what an admin or the user would have done in Keycloak) -------------------------------------------

    def add_user(self, username: str, email: str, *, phone: str | None = None, first_name: str = "",
                 last_name: str = "") -> KeycloakUser:
        user = KeycloakUser(id=str(uuid.uuid4()), username=username, email=email, first_name=first_name,
                            last_name=last_name, attributes={"phone_number": [phone]} if phone else {})
        self.users[user.id] = user
        self.credentials[user.id] = [self._credential("password", "My password")]
        self.sessions[user.id] = []
        return user

    def add_credential(self, user_id: str, type_: str, label: str = "", *, created_ms: int | None = None,
                       data: dict[str, Any] | None = None) -> str:
        credential = self._credential(type_, label, created_ms=created_ms, data=data)
        self.credentials[user_id].append(credential)
        return str(credential["id"])

    def add_session(self, user_id: str, ip: str) -> str:
        session = {"id": str(uuid.uuid4()), "username": self.users[user_id].username, "userId": user_id,
                   "ipAddress": ip, "start": _now_ms(), "lastAccess": _now_ms(), "clients": {}}
        self.sessions[user_id].append(session)
        return str(session["id"])

    def add_login_event(self, user_id: str, ip: str, *, error: str | None = None) -> None:
        self.events.insert(0, {"time": _now_ms(), "type": "LOGIN_ERROR" if error else "LOGIN",
                               "realmId": self.realm, "clientId": "account-console", "userId": user_id,
                               "ipAddress": ip, **({"error": error} if error else {})})

    @staticmethod
    def _credential(type_: str, label: str, *, created_ms: int | None = None,
                    data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "type": type_, "userLabel": label,
                "createdDate": created_ms if created_ms is not None else _now_ms(),
                "credentialData": json.dumps(data or {}), "priority": 10}

    # --- the API ---------------------------------------------------------------------------------------------------

    def handle(self, request: RecordedRequest) -> Answer:
        token = _TOKEN.match(request.path)
        if token:
            return self._token(request, token["realm"])
        admin = _ADMIN.match(request.path)
        if not admin or admin["realm"] != self.realm:
            return Answer(404, {"error": "Realm not found."})
        auth = request.headers.get("authorization", "")
        expires = self.access_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if expires is None or expires < time.time():
            return Answer(401, {"error": "HTTP 401 Unauthorized"})
        return self._admin(request, admin["rest"] or "/")

    def _token(self, request: RecordedRequest, realm: str) -> Answer:
        self.token_requests += 1
        form = request.form
        if realm != self.realm:
            return Answer(404, {"error": "Realm does not exist"})
        if form.get("grant_type") != "client_credentials":
            return Answer(400, {"error": "unsupported_grant_type"})
        if (form.get("client_id"), form.get("client_secret")) != (self.client_id, self.client_secret):
            return Answer(401, {"error": "unauthorized_client",
                                "error_description": "Invalid client or Invalid client credentials"})
        access = secrets.token_urlsafe(32)
        self.access_tokens[access] = time.time() + self.token_lifetime
        return Answer(200, {"access_token": access, "expires_in": self.token_lifetime, "token_type": "Bearer",
                            "not-before-policy": 0, "scope": "profile email"})

    def _admin(self, request: RecordedRequest, rest: str) -> Answer:  # noqa: PLR0911 - one route per branch
        method, query = request.method, request.query
        if rest in ("/users", "/users/") and method == "GET":
            return Answer(200, self._search(query))
        if rest == "/events/config" and method == "GET":
            return Answer(200, {"eventsEnabled": self.events_enabled, "eventsListeners": ["jboss-logging"],
                                "enabledEventTypes": [], "adminEventsEnabled": False})
        if rest == "/events" and method == "GET":
            wanted = set(query.get("type", []))
            found = [e for e in self.events if (not query.get("user") or e["userId"] == query["user"][0])
                     and (not wanted or e["type"] in wanted)]
            return Answer(200, found[: int(query.get("max", ["100"])[0])])
        match = re.match(r"^/users/(?P<id>[^/]+)(?P<sub>/.*)?$", rest)
        if not match or match["id"] not in self.users:
            return Answer(404, {"error": "User not found"})
        user, sub = self.users[match["id"]], match["sub"] or ""
        if sub == "" and method == "GET":
            return Answer(200, user.representation())
        if sub == "" and method == "PUT":
            body = request.json or {}
            if "enabled" in body:
                user.enabled = bool(body["enabled"])
            if "attributes" in body:
                user.attributes = {k: list(v) for k, v in (body["attributes"] or {}).items()}
            return Answer(204)
        if sub == "/credentials" and method == "GET":
            return Answer(200, self.credentials[user.id])
        cred = re.match(r"^/credentials/(?P<cid>[^/]+)$", sub)
        if cred and method == "DELETE":
            before = self.credentials[user.id]
            after = [c for c in before if c["id"] != cred["cid"]]
            if len(after) == len(before):
                return Answer(404, {"error": "Credential not found"})
            self.credentials[user.id] = after
            return Answer(204)
        if sub == "/reset-password" and method == "PUT":
            body = request.json or {}
            if body.get("type", "password") != "password" or not body.get("value"):
                return Answer(400, {"error": "invalid_request", "error_description": "Missing password value"})
            user.password, user.password_temporary = str(body["value"]), bool(body.get("temporary"))
            if user.password_temporary and "UPDATE_PASSWORD" not in user.required_actions:
                user.required_actions.append("UPDATE_PASSWORD")
            return Answer(204)
        if sub == "/logout" and method == "POST":
            self.sessions[user.id] = []
            return Answer(204)
        if sub == "/sessions" and method == "GET":
            return Answer(200, self.sessions[user.id])
        if sub == "/federated-identity" and method == "GET":
            return Answer(200, user.federated)
        return Answer(405, {"error": "HTTP 405 Method Not Allowed"})

    def _search(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        exact = query.get("exact", ["false"])[0] == "true"
        found = list(self.users.values())
        for param, attr in (("email", "email"), ("username", "username")):
            if param in query:
                wanted = query[param][0].lower()
                found = [u for u in found if (getattr(u, attr).lower() == wanted if exact
                                              else wanted in getattr(u, attr).lower())]
        return [u.representation() for u in found[: int(query.get("max", ["100"])[0])]]
