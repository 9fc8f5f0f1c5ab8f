"""Configuration: every setting comes from an environment variable (README lists them all)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# Development-only secrets. `create_app` refuses to start in production while any is in use,
# so a forgotten variable can never ship a publicly known key.
DEV_SECRET_KEY = "dev-insecure-secret-key-change-me"
DEV_ENCRYPTION_KEY = "ZGV2LWluc2VjdXJlLWVuY3J5cHRpb24ta2V5LTMyYnk="  # base64 of 32 bytes
DEV_CODE_PEPPER = "dev-insecure-pepper"

INSTANCE_DIR = Path(os.environ.get("REKEY_INSTANCE_DIR", Path.cwd() / "instance"))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def url_host_problem(url: str) -> str | None:
    """What keeps `url` from naming a web origin by a host name, or None. WebAuthn needs one:
    the relying-party id is the host, and an IP address can never be a relying-party id."""
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return "is not an http(s) URL with a host"
    if parts.username is not None or parts.password is not None:
        return "carries credentials"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return "has an IP address for its host; WebAuthn needs a host name (e.g. localhost)"


class ConfigError(ValueError):
    """A setting Rekey cannot use. The message is one line that names the variable."""


# The drivers Rekey installs: psycopg 3 for PostgreSQL, the standard library's sqlite3.
DATABASE_DRIVERS = ("postgresql+psycopg", "sqlite", "sqlite+pysqlite")


def database_url_from(raw: str, variable: str = "DATABASE_URL") -> str:
    """`raw` as a URL SQLAlchemy can open with the drivers Rekey installs. The `postgres://` and
    `postgresql://` URLs hosts hand out (Heroku, Render, Railway...) name no driver, and SQLAlchemy
    would reach for psycopg2: they are mapped to psycopg 3. Anything else unusable is a ConfigError
    whose one-line message names `variable` (never the URL itself: it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme:
        raise ConfigError(f"{variable} is not a database URL (expected postgresql://user:password@host/name)")
    if scheme.lower() in ("postgres", "postgresql"):
        value = f"postgresql+psycopg://{rest}"
    try:
        url = make_url(value)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError(f"{variable} is not a usable database URL ({type(exc).__name__})") from None
    if url.drivername not in DATABASE_DRIVERS:
        raise ConfigError(f"{variable} names the driver {url.drivername!r}, which Rekey does not install: "
                          "use postgresql://, postgresql+psycopg:// or sqlite:///")
    return value


@dataclass(frozen=True)
class Settings:
    """The settings a process reads once at start; tests build their own."""

    env: str = field(default_factory=lambda: _env("REKEY_ENV", "development"))
    secret_key: str = field(default_factory=lambda: _env("REKEY_SECRET_KEY", DEV_SECRET_KEY))
    database_url: str = field(
        default_factory=lambda: _env(
            "DATABASE_URL", f"sqlite:///{INSTANCE_DIR / 'rekey.sqlite3'}"
        )
    )
    broker_url: str = field(default_factory=lambda: _env("REKEY_BROKER_URL", ""))
    redis_url: str = field(default_factory=lambda: _env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    # Fernet keys, comma separated, newest first: the first encrypts, all decrypt (rotation).
    encryption_keys: str = field(
        default_factory=lambda: _env("REKEY_ENCRYPTION_KEYS", DEV_ENCRYPTION_KEY)
    )
    # Pepper for the non-secret lookup prefix of backup codes and for token digests.
    code_pepper: str = field(default_factory=lambda: _env("REKEY_CODE_PEPPER", DEV_CODE_PEPPER))
    # Where users and links reach Rekey; its host is the WebAuthn relying-party id, so a
    # development URL names `localhost`, never 127.0.0.1 (an IP cannot be a relying party).
    public_url: str = field(default_factory=lambda: _env("REKEY_PUBLIC_URL", "http://localhost:5000"))
    max_body_bytes: int = field(default_factory=lambda: _int("REKEY_MAX_BODY_BYTES", 256 * 1024))
    log_level: str = field(default_factory=lambda: _env("REKEY_LOG_LEVEL", "INFO"))
    trusted_proxies: int = field(default_factory=lambda: _int("REKEY_TRUSTED_PROXIES", 0))
    # Throttling: per account (consecutive failures lock the account's factors) and per IP.
    signin_max_failures: int = field(default_factory=lambda: _int("REKEY_SIGNIN_MAX_FAILURES", 10))
    signin_lockout_seconds: int = field(
        default_factory=lambda: _int("REKEY_SIGNIN_LOCKOUT_SECONDS", 900)
    )
    ip_max_failures: int = field(default_factory=lambda: _int("REKEY_IP_MAX_FAILURES", 50))
    ip_window_seconds: int = field(default_factory=lambda: _int("REKEY_IP_WINDOW_SECONDS", 900))
    session_ttl_seconds: int = field(default_factory=lambda: _int("REKEY_SESSION_TTL_SECONDS", 8 * 3600))
    restricted_session_ttl_seconds: int = field(
        default_factory=lambda: _int("REKEY_RESTRICTED_SESSION_TTL_SECONDS", 900)
    )
    # A browser session unused this long ends (on top of the absolute lifetimes above).
    web_idle_timeout_seconds: int = field(default_factory=lambda: _int("REKEY_WEB_IDLE_TIMEOUT_SECONDS", 1800))
    # Where `rekey run` serves the web process (production binds gunicorn to $PORT instead).
    host: str = field(default_factory=lambda: _env("REKEY_HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: _int("REKEY_PORT", 5000))

    # Where messages go: phones through `dev` or `twilio`, email through `dev` or `smtp`.
    phone_channel: str = field(default_factory=lambda: _env("REKEY_PHONE_CHANNEL", "dev"))
    email_channel: str = field(default_factory=lambda: _env("REKEY_EMAIL_CHANNEL", "dev"))
    # Production refuses the `dev` channel unless this says a human accepted it (a local stack).
    allow_dev_channel: bool = field(default_factory=lambda: _env("REKEY_ALLOW_DEV_CHANNEL", "0") == "1")
    dev_outbox: str = field(default_factory=lambda: _env("REKEY_DEV_OUTBOX", str(INSTANCE_DIR / "dev-messages.jsonl")))
    twilio_account_sid: str = field(default_factory=lambda: _env("REKEY_TWILIO_ACCOUNT_SID", ""))
    twilio_auth_token: str = field(default_factory=lambda: _env("REKEY_TWILIO_AUTH_TOKEN", ""), repr=False)
    twilio_from: str = field(default_factory=lambda: _env("REKEY_TWILIO_FROM", ""))
    twilio_base_url: str = field(default_factory=lambda: _env("REKEY_TWILIO_BASE_URL", "https://api.twilio.com"))
    smtp_host: str = field(default_factory=lambda: _env("REKEY_SMTP_HOST", ""))
    smtp_port: int = field(default_factory=lambda: _int("REKEY_SMTP_PORT", 587))
    smtp_username: str = field(default_factory=lambda: _env("REKEY_SMTP_USERNAME", ""))
    smtp_password: str = field(default_factory=lambda: _env("REKEY_SMTP_PASSWORD", ""), repr=False)
    smtp_from: str = field(default_factory=lambda: _env("REKEY_SMTP_FROM", "rekey@localhost"))
    smtp_starttls: bool = field(default_factory=lambda: _env("REKEY_SMTP_STARTTLS", "1") == "1")

    # Accepted deliveries per integration per minute before the intake answers 429.
    webhook_rate_per_minute: int = field(default_factory=lambda: _int("REKEY_WEBHOOK_RATE_PER_MINUTE", 120))
    # Tasks: retries with exponential backoff from this base (seconds), then a dead letter.
    task_retry_base_seconds: float = field(default_factory=lambda: float(_env("REKEY_TASK_RETRY_BASE_SECONDS", "2")))
    task_max_retries: int = field(default_factory=lambda: _int("REKEY_TASK_MAX_RETRIES", 8))
    # Optional SIEM sink for audit events (Standard Webhooks-signed POSTs).
    siem_url: str = field(default_factory=lambda: _env("REKEY_SIEM_URL", ""))
    siem_secret: str = field(default_factory=lambda: _env("REKEY_SIEM_SECRET", ""), repr=False)
    # Modules imported at start that register directory kinds (integrations/directory/registry.py)
    # beyond the built-in ones, comma separated (a deployment's own adapter; the tests' `memory`).
    directory_modules: str = field(default_factory=lambda: _env("REKEY_DIRECTORY_MODULES", ""))
    # The agent console: a session unused this long ends, none lives longer than the absolute
    # lifetime, and a destructive action needs a second factor passed within the step-up window.
    console_idle_timeout_seconds: int = field(
        default_factory=lambda: _int("REKEY_CONSOLE_IDLE_TIMEOUT_SECONDS", 900))
    console_session_ttl_seconds: int = field(
        default_factory=lambda: _int("REKEY_CONSOLE_SESSION_TTL_SECONDS", 8 * 3600))
    console_step_up_seconds: int = field(default_factory=lambda: _int("REKEY_CONSOLE_STEP_UP_SECONDS", 300))
    # Signed audit checkpoints: the Ed25519 private key (PEM text, a file holding it, or base64 of
    # its 32 raw bytes; only the checkpoint writer needs it), the public key verifiers use
    # (default: the private key's), and the directory of append-only checkpoint files.
    audit_signing_key: str = field(default_factory=lambda: _env("REKEY_AUDIT_SIGNING_KEY", ""), repr=False)
    audit_public_key: str = field(default_factory=lambda: _env("REKEY_AUDIT_PUBLIC_KEY", ""))
    audit_checkpoint_dir: str = field(
        default_factory=lambda: _env("REKEY_AUDIT_CHECKPOINT_DIR", str(INSTANCE_DIR / "audit-checkpoints")))
    # Where development keeps its generated signing key (never used in production).
    audit_dev_key_path: str = field(
        default_factory=lambda: _env("REKEY_AUDIT_DEV_KEY_PATH", str(INSTANCE_DIR / "audit-signing-key.pem")))
    # The database owner's URL, for migrations only; the app connects with DATABASE_URL as a role
    # with only the privileges it needs. Empty: one URL for both (development).
    database_migration_url: str = field(default_factory=lambda: _env("DATABASE_MIGRATION_URL", ""), repr=False)
    # The application role `rekey db upgrade` creates and grants (default: DATABASE_URL's user).
    database_app_role: str = field(default_factory=lambda: _env("REKEY_DATABASE_APP_ROLE", ""))

    def __post_init__(self) -> None:
        # Every way a Settings is built (the environment, `replace` in tests) gets a usable URL.
        object.__setattr__(self, "database_url", database_url_from(self.database_url))

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    @property
    def secure_cookies(self) -> bool:
        """Cookies are `Secure` (and `__Host-` prefixed) everywhere but development, where
        `rekey run` serves plain http (browsers accept Secure cookies from http://localhost)."""
        return self.env != "development"

    def development_secrets_in_use(self) -> list[str]:
        """Names of the variables still holding their public development value."""
        found = []
        if self.secret_key == DEV_SECRET_KEY:
            found.append("REKEY_SECRET_KEY")
        if DEV_ENCRYPTION_KEY in self.encryption_keys.split(","):
            found.append("REKEY_ENCRYPTION_KEYS")
        if self.code_pepper == DEV_CODE_PEPPER:
            found.append("REKEY_CODE_PEPPER")
        # The development channel writes verification codes and temporary passwords to a file.
        if not self.allow_dev_channel:
            found += [name for name, kind in (("REKEY_PHONE_CHANNEL", self.phone_channel),
                                              ("REKEY_EMAIL_CHANNEL", self.email_channel)) if kind == "dev"]
        return found

    def public_url_problem(self) -> str | None:
        """Why REKEY_PUBLIC_URL cannot serve production (https and a host name), or None."""
        problem = url_host_problem(self.public_url)
        if problem is None and urlsplit(self.public_url).scheme != "https":
            problem = "is not https"
        return problem

    def flask_config(self) -> dict[str, object]:
        # hide_parameters: a database error's text (logged, kept in a dead letter) never carries
        # the bound values: hashes, ciphertexts of pending secrets, users' emails.
        engine_options: dict[str, object] = {"pool_pre_ping": True, "hide_parameters": True}
        if self.database_url.startswith("sqlite"):
            engine_options = {"connect_args": {"timeout": 30}, "hide_parameters": True}
        return {
            "SECRET_KEY": self.secret_key,
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
            "MAX_CONTENT_LENGTH": self.max_body_bytes,
            "API_TITLE": "Rekey",
            "API_VERSION": "v1",
            "OPENAPI_VERSION": "3.0.3",
            "OPENAPI_URL_PREFIX": "/",
            "OPENAPI_JSON_PATH": "openapi.json",
            "JSON_SORT_KEYS": False,
        }
