"""Rekey: account recovery that enforces the support runbook."""

from __future__ import annotations

import logging
from typing import Any

import structlog
from flask import Flask, jsonify
from sqlalchemy import text
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import Settings
from app.errors import error_response, register_error_handlers
from app.extensions import api, db
from app.web import init_api, install_request_lifecycle
from app.webui import init_webui, install_security_headers


class InsecureConfiguration(RuntimeError):
    """Production mode with a development secret or a public URL browsers cannot trust:
    refusing to start."""


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(message)s")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the Flask application from `settings` (default: the environment)."""
    if settings is None:
        from app.config import ConfigError

        try:
            settings = Settings()
        except ConfigError as exc:
            # gunicorn and celery load the app from the environment: one line, no traceback.
            raise SystemExit(f"rekey: {exc}") from None
    if settings.is_production and settings.development_secrets_in_use():
        raise InsecureConfiguration(
            "REKEY_ENV=production but these still hold development values: "
            + ", ".join(settings.development_secrets_in_use())
        )
    if settings.is_production and settings.public_url_problem():
        # Links in notices and the WebAuthn relying party both hang on it: plain http would
        # let a network attacker rewrite a "this wasn't me" page, and an IP host has no RP id.
        raise InsecureConfiguration(
            f"REKEY_ENV=production but REKEY_PUBLIC_URL {settings.public_url_problem()}: "
            "set it to the https:// URL (with a host name) users reach Rekey at"
        )
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.config.update(settings.flask_config())
    app.config.update(overrides)
    app.extensions["rekey.settings"] = settings
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]

    db.init_app(app)
    from flask_sqlalchemy.session import Session as FlaskSession

    from app.jobs import services as jobs

    jobs.install(FlaskSession)
    init_api(api, app)
    register_error_handlers(app)  # after Api, so our error shape wins over flask-smorest's
    install_security_headers(app)  # before the lifecycle, so its answers get the headers too
    install_request_lifecycle(app)
    init_webui(app)  # after the lifecycle: CSRF checks run once the request has its id

    from app.accounts.views import admin_users, auth
    from app.audit.views import blp as audit_blp
    from app.intake.views import blp as webhooks_blp
    from app.recovery.views import blp as cases_blp
    from app.recovery.views import links as links_blp

    for blueprint in (auth, admin_users, audit_blp, cases_blp, webhooks_blp, links_blp):
        api.register_blueprint(blueprint)
    from app.pages import register_pages

    register_pages(app)
    from app.console import register_console

    register_console(app)
    from app.accounts import hooks
    from app.recovery.closing import EnrolmentPort

    hooks.register(app, EnrolmentPort())
    from app.accounts import directory as _builtin  # noqa: F401  (registers the built-in directory kind)

    _import_directory_modules(settings)

    _register_health(app)

    from tasks import celery_init_app

    celery_init_app(app, settings)
    return app


def _register_health(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Any:
        checks: dict[str, str] = {}
        try:
            db.session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception:  # any failure means not ready; the reason goes to the log
            checks["database"] = "unreachable"
        try:
            with app.extensions["celery"].connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception:
            checks["broker"] = "unreachable"
        if all(v == "ok" for v in checks.values()):
            return jsonify({"status": "ready", "checks": checks})
        return error_response(503, "not_ready", "A dependency is unreachable.", {"checks": checks})


def _import_directory_modules(settings: Settings) -> None:
    """Import the modules that register more directory kinds (REKEY_DIRECTORY_MODULES)."""
    import importlib

    for name in filter(None, (part.strip() for part in settings.directory_modules.split(","))):
        importlib.import_module(name)
