"""`rekey demo` as a newcomer runs it: against a real `rekey run` (web, worker, beat) in a
subprocess, on the embedded broker so no server is needed; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.test_devserver import (  # noqa: F401  (start_runner is a fixture)
    REKEY,
    Runner,
    closed_redis_url,
    path_without,
    start_runner,
)

pytestmark = pytest.mark.worker

DEMO_TIMEOUT = 75.0  # the whole demo, hard limit (each of its own waits is bounded at 20 s)
BUDGET = 90.0  # start, demo and stop together
STEPS = ("Provisioning (what `rekey tenant create`", "The ticket:", "-> 202 ",
         "-> awaiting_verification", "Step 1 - Verify identity out of band",
         "-> 422 unacceptable_evidence", "-> 409 invalid_state", "-> verified",
         "Step 2 - Check backup codes", "Step 3 - Force MFA reset", "-> awaiting_enrolment",
         "Step 4 - The user signs in and enrols", "-> enrolment_required",
         "a new TOTP factor is enrolled", "Step 5 - Follow-up and close", "-> closed",
         "Audit trail for the case", "mfa.factor_admin_reset", "mfa.factor_enrolled",
         "recovery.closed")


def embedded_runner(start_runner) -> Runner:  # noqa: F811
    runner: Runner = start_runner(REDIS_URL=closed_redis_url(), PATH=path_without("redis-server"))
    runner.wait_ready()
    runner.wait_for_line(r"^worker \| .*ready\.$")
    return runner


def demo(runner: Runner, *args: str) -> subprocess.CompletedProcess[str]:
    """`rekey demo` with the environment and working directory of `rekey run`."""
    env = {k: v for k, v in os.environ.items() if k not in ("REKEY_BROKER_URL", "REKEY_PUBLIC_URL")}
    env.update({"REKEY_ENV": "development", "REKEY_INSTANCE_DIR": str(runner.instance),
                "DATABASE_URL": f"sqlite:///{runner.instance / 'rekey.sqlite3'}"})
    return subprocess.run([REKEY, "demo", "--url", runner.url, "--timeout", "20", *args], env=env,
                          cwd=runner.instance.parent, capture_output=True, text=True,
                          timeout=DEMO_TIMEOUT)


def test_demo_runs_the_whole_runbook_and_ends_with_the_chain_verified(start_runner):  # noqa: F811
    started = time.monotonic()
    runner = embedded_runner(start_runner)

    done = demo(runner)

    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}\n--- rekey run ---\n{runner.output()}"
    at = 0
    for step in STEPS:  # each step, told in the runbook's order
        assert step in out[at:], f"{step!r} missing after position {at}:\n{out}"
        at = out.index(step, at)
    assert out.rstrip().splitlines()[-1].startswith("Chain verified"), out
    assert out.rstrip().endswith("every hash links: ok"), out
    # Nothing secret is printed: no password, token or code, and the phone only masked.
    assert "rk_agent" not in out and "whsec_" not in out and "+14155552671" not in out
    assert "otpauth://" not in out
    assert runner.stop(signal.SIGINT) == 0, runner.output()  # Ctrl-C, as a developer stops it
    assert time.monotonic() - started < BUDGET


def test_demo_json_summary_and_a_second_run_beside_the_first(start_runner):  # noqa: F811
    runner = embedded_runner(start_runner)

    first, second = demo(runner, "--json"), demo(runner, "--json")

    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    assert a["ok"] is b["ok"] is True
    assert a["tenant"] != b["tenant"] and a["case_id"] != b["case_id"]
    steps = {s["step"]: s for s in a["steps"]}
    assert steps["step5_follow_up"]["state"] == "closed"
    assert steps["audit"]["chain"]["ok"] is True
    assert "mfa.factor_admin_reset" in [e["action"] for e in steps["audit"]["case_events"]]
    assert runner.stop(signal.SIGINT) == 0, runner.output()


BROWSER_STEPS = ("Step 4 - The user signs in and enrols a security key, in a browser", "/t/",
                 "/signin, the page the reset notice names", "(a session that may only enrol",
                 "registers the key", "recovery.recovered", "makes 10 backup codes", "signs out",
                 "signs in again with email, password and the security key", "Step 5 - Follow-up and close",
                 "-> closed", "mfa.factor_enrolled", "every hash links: ok")


def test_demo_in_the_browser_finishes_with_a_security_key(start_runner, tmp_path: Path):  # noqa: F811
    from tests.browser.conftest import need_browser

    need_browser()
    runner = embedded_runner(start_runner)
    shots = tmp_path / "shots"

    done = demo(runner, "--browser", "--screenshots", str(shots))

    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}\n--- rekey run ---\n{runner.output()}"
    at = 0
    for step in BROWSER_STEPS:
        assert step in out[at:], f"{step!r} missing after position {at}:\n{out}"
        at = out.index(step, at)
    pictures = sorted(p.name for p in shots.iterdir())
    assert pictures == ["01-signin.png", "02-enrol.png", "03-enrol-key.png", "04-enrol-done.png",
                        "05-signin-second-factor.png", "06-account.png"], pictures
    assert all((shots / name).stat().st_size > 10_000 for name in pictures)
    assert "rk_web" not in out and "rk_pend" not in out and "otpauth://" not in out
    assert runner.stop(signal.SIGINT) == 0, runner.output()


def test_demo_without_a_service_fails_fast_and_says_what_to_start(tmp_path: Path):
    env = {**os.environ, "REKEY_INSTANCE_DIR": str(tmp_path)}
    done = subprocess.run([REKEY, "demo", "--url", f"http://127.0.0.1:{_closed_port()}", "--timeout", "2"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)

    assert done.returncode == 1
    assert "rekey demo FAILED" in done.stderr and "rekey run" in done.stderr
    assert not (tmp_path / "rekey.sqlite3").exists()  # nothing provisioned anywhere


def _closed_port() -> int:
    from app.devserver import free_port

    return free_port()
