"""Prometheus metrics in this process: /metrics behind its bearer token, webhook deliveries by kind
and outcome, HTTP latency by route template, committed audit events, task runs, and the state
gauges read from the database. No label carries an id."""

from __future__ import annotations

import re
import uuid

import pytest
from prometheus_client import REGISTRY

from tests.signing import body_of, standard_headers

TOKEN = "metrics-token-for-tests"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client) -> str:
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    assert answer.mimetype == "text/plain"
    return answer.get_data(as_text=True)


def value_in(text: str, name: str, **labels: str) -> float:
    """The value of one sample line of the exposition text (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0] if "{" not in line else
                                line[line.index("{"):line.index("}")]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{labels} in:\n{text[:2000]}")


class TestExposure:
    def test_without_a_configured_token_metrics_is_not_served(self, client, tune):
        tune(metrics_token="")
        answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 404
        assert answer.get_json()["error"]["code"] == "not_found"

    @pytest.mark.parametrize("header", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
    def test_a_missing_or_wrong_token_is_401(self, client, tune, header):
        tune(metrics_token=TOKEN)
        answer = client.get("/metrics", headers={"Authorization": header} if header else {})
        assert answer.status_code == 401
        assert answer.get_json()["error"]["code"] == "unauthenticated"
        assert "rekey_" not in answer.get_data(as_text=True)

    def test_the_right_bearer_token_gets_the_exposition(self, client, tune):
        tune(metrics_token=TOKEN)
        text = scrape(client)
        assert "# TYPE rekey_http_request_duration_seconds histogram" in text
        assert "# TYPE rekey_outbox_backlog gauge" in text


class TestCounts:
    def test_a_delivery_counts_by_kind_and_outcome_and_its_audit_events_once_committed(self, client, factory,
                                                                                       tune):
        tune(metrics_token=TOKEN)
        tenant = factory.tenant()
        user = factory.user(tenant)
        integration, secret = factory.integration(tenant)
        accepted = sample("rekey_webhook_deliveries_total", kind="standard", outcome="accepted")
        refused = sample("rekey_webhook_deliveries_total", kind="standard", outcome="invalid_signature")
        requested = sample("rekey_audit_events_total", action="recovery.requested")
        route = dict(route="/v1/webhooks/<integration_id>", method="POST", status_class="2xx")
        timed = sample("rekey_http_request_duration_seconds_count", **route)

        answer = factory.request_recovery(client, integration, secret, user.email)
        assert answer.status_code == 202, answer.get_json()
        body = body_of({"type": "recovery.requested", "data": {"user_email": user.email}})
        forged = client.post(f"/v1/webhooks/{integration.id}", data=body,
                             headers=standard_headers("whsec_" + "A" * 32, body))
        assert forged.status_code == 401

        assert sample("rekey_webhook_deliveries_total", kind="standard", outcome="accepted") == accepted + 1
        assert sample("rekey_webhook_deliveries_total", kind="standard", outcome="invalid_signature") == refused + 1
        assert sample("rekey_audit_events_total", action="recovery.requested") == requested + 1
        assert sample("rekey_http_request_duration_seconds_count", **route) == timed + 1

        text = scrape(client)
        assert value_in(text, "rekey_webhook_deliveries_total", kind="standard", outcome="accepted") >= 1
        assert sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("rekey_cases{")) >= 1
        assert value_in(text, "rekey_outbox_backlog") >= 0
        labels = "\n".join(line.split(" ")[0] for line in text.splitlines() if not line.startswith("#"))
        assert not UUID.search(labels), UUID.search(labels)
        for secret_or_id in (str(tenant.id), tenant.slug, str(integration.id), user.email):
            assert secret_or_id not in text

    def test_an_unknown_integration_counts_as_kind_unknown(self, client):
        before = sample("rekey_webhook_deliveries_total", kind="unknown", outcome="not_found")
        answer = client.post(f"/v1/webhooks/{uuid.uuid4()}", data=b"{}", headers={"Content-Type": "application/json"})
        assert answer.status_code == 404
        assert sample("rekey_webhook_deliveries_total", kind="unknown", outcome="not_found") == before + 1

    def test_a_failed_signin_and_a_lockout_count(self, app, client, factory, tune):
        tune(signin_max_failures=2)
        tenant = factory.tenant()
        user = factory.user(tenant)
        failures, lockouts = sample("rekey_signin_failures_total"), sample("rekey_lockouts_total")
        for _ in range(3):
            answer = client.post("/v1/auth/signin", headers={"X-Rekey-Tenant": tenant.slug},
                                 json={"email": user.email, "password": "not the password"})
            assert answer.status_code in (401, 423, 429), answer.get_json()
        assert sample("rekey_signin_failures_total") >= failures + 2
        assert sample("rekey_lockouts_total") == lockouts + 1

    def test_a_task_run_counts_with_its_duration_and_the_beat_heartbeat_shows(self, app, client, tune):
        tune(metrics_token=TOKEN)
        runs = sample("rekey_task_runs_total", task="rekey.ops.heartbeat", outcome="success")
        timed = sample("rekey_task_duration_seconds_count", task="rekey.ops.heartbeat")

        result = app.extensions["celery"].tasks["rekey.ops.heartbeat"].apply()
        assert result.successful(), result.traceback

        assert sample("rekey_task_runs_total", task="rekey.ops.heartbeat", outcome="success") == runs + 1
        assert sample("rekey_task_duration_seconds_count", task="rekey.ops.heartbeat") == timed + 1
        import time

        assert time.time() - value_in(scrape(client), "rekey_beat_heartbeat_timestamp_seconds") < 60


def test_the_example_alert_rules_name_only_metrics_rekey_exposes(client, tune):
    """docs/prometheus-alerts.yml: every rekey_* series an alert reads is in the exposition."""
    from pathlib import Path

    import yaml

    tune(metrics_token=TOKEN)
    client.get("/healthz")
    exposed = {line.split("{")[0].split(" ")[0] for line in scrape(client).splitlines()
               if line and not line.startswith("#")}
    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "prometheus-alerts.yml").read_text())
    alerts = {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    assert {"RekeyDeadLetters", "RekeyOutboxLagging", "RekeyBeatHeartbeatMissing",
            "RekeyAuditChainBroken"} <= set(alerts)
    for alert, expr in alerts.items():
        names = re.findall(r"rekey_\w+", expr)
        assert names, alert
        assert set(names) <= exposed, (alert, set(names) - exposed)
