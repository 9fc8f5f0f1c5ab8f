"""The baselines of the intake benchmark (bench/intake_http.py), served by the same gunicorn
setup as Rekey: (a) one INSERT and commit on the same PostgreSQL database, (b) a bare 202.

    gunicorn "bench.bare_apps:insert_app()"   # BENCH_DATABASE_URL names the database
    gunicorn "bench.bare_apps:accept_app()"
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from flask import Flask, jsonify, request


def insert_app() -> Flask:
    """A Flask endpoint that reads the body and writes one row (INSERT + commit), as small as a
    durable write gets through the same driver and pool Rekey uses."""
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["BENCH_DATABASE_URL"], pool_pre_ping=False)
    app = Flask("bench_insert")

    @app.post("/v1/webhooks/<integration_id>")
    def receive(integration_id: str) -> Any:
        body = request.get_data(cache=False)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO bench_rows (id, integration_id, body) VALUES (:id, :i, :b)"),
                         {"id": uuid.uuid4(), "i": integration_id, "b": body.decode()})
        response = jsonify({"status": "received"})
        response.status_code = 202
        return response

    return app


def accept_app() -> Flask:
    """A Flask endpoint that answers 202 and does nothing: what the framework alone costs."""
    app = Flask("bench_accept")

    @app.post("/v1/webhooks/<integration_id>")
    def receive(integration_id: str) -> Any:
        request.get_data(cache=False)
        response = jsonify({"status": "received"})
        response.status_code = 202
        return response

    return app
