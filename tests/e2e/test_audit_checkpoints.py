"""Beat's checkpoint task on a real worker: it signs the tenant's chain head into the checkpoint
directory, and the SIEM sink (the witness of the newest lines) receives the same signed line once.
"""

from __future__ import annotations

import base64
import time
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from app.audit.checkpoints import parse_log, private_key_pem
from integrations.fakes.callbacks import CallbackReceiver
from tests.e2e.conftest import E2E_ENV, wait_idle
from tests.integration.conftest import CeleryWorker, worker_env

SIEM_SECRET = "whsec_" + base64.b64encode(b"siem-test-secret-32-bytes-long!!").decode()
pytestmark = pytest.mark.worker


@pytest.fixture
def sink():
    with CallbackReceiver(SIEM_SECRET, path="/siem") as receiver:
        yield receiver


def _wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_the_beat_task_signs_a_checkpoint_on_the_worker_and_the_siem_gets_it_once(settings, broker, sink,
                                                                                 factory, tmp_path):
    from app import create_app
    from app.extensions import db

    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "signing.pem"
    key_file.write_bytes(private_key_pem(key))
    directory = tmp_path / "checkpoints"
    # The app (publisher) holds no private key: only the worker does.
    app = create_app(replace(settings, broker_url=broker.url, redis_url=broker.url, siem_url=sink.callback_url,
                             siem_secret=SIEM_SECRET, audit_checkpoint_dir=str(directory)), TESTING=True)
    env = {**worker_env(settings, broker_url=broker.url, instance_dir=tmp_path), **E2E_ENV,
           "REKEY_SIEM_URL": sink.callback_url, "REKEY_SIEM_SECRET": SIEM_SECRET,
           "REKEY_AUDIT_SIGNING_KEY": str(key_file), "REKEY_AUDIT_CHECKPOINT_DIR": str(directory)}
    worker = CeleryWorker(env, tmp_path, pool="prefork", concurrency=2).start()
    try:
        factory.app = app
        tenant = factory.tenant()
        factory.agent(tenant)  # seq 2
        path = directory / f"{tenant.id}.jsonl"

        app.extensions["celery"].send_task("rekey.audit.checkpoint")
        _wait_for(lambda: path.is_file() and path.read_bytes().endswith(b"\n"))

        [point] = parse_log(path.read_bytes(), key.public_key(), tenant.id).points
        assert (point.number, point.seq) == (1, 2)

        def witnessed() -> list[dict]:
            return [d["data"] for d in sink.deliveries
                    if d.get("type") == "audit.checkpoint" and d["data"]["body"]["tenant_id"] == str(tenant.id)]

        _wait_for(lambda: witnessed())
        app.extensions["celery"].send_task("rekey.audit.checkpoint")  # nothing moved: no new line
        wait_idle(broker.url)
        assert witnessed() == [point.as_dict()]
        assert len(path.read_bytes().splitlines()) == 1
    finally:
        worker.stop()
        with app.app_context():
            db.engine.dispose()
