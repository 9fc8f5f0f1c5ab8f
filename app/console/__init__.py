"""The agent console under `/console/` (issue 10): the runbook as pages for support agents and
senior admins, on the same service functions as the admin API (so every rule the API enforces
holds here by construction). Sign-in and the console session live in signin.py and session.py,
the pages in views.py (sign-in, enrolment, step-up) and cases.py (queue, case, user, audit)."""

from __future__ import annotations

from flask import Flask

from app.webui import PageBlueprint

console = PageBlueprint("console", __name__, url_prefix="/console")


def register_console(app: Flask) -> None:
    """Register the console pages and the console session cookie."""
    from app.console import cases, session, views  # noqa: F401  (routes register on import)

    app.register_blueprint(console)
    app.after_request(session.send_console_cookie)
