"""The development channel: a JSON-lines outbox, idempotent per key, safe for many workers."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from integrations.channels.dev import DevChannel, DevChannelConfig, read_messages


def _write_many(path: str, worker: int) -> None:
    channel = DevChannel(DevChannelConfig(path=path))
    for n in range(15):
        # Every worker sends the same 15 keys, as retried copies of one task would.
        channel.send_sms("+14155550100", f"code {n} from {worker}", idempotency_key=f"case-1:{n}")


class TestDevChannel:
    def test_conformance_every_method_stores_one_message(self, tmp_path: Path) -> None:
        channel = DevChannel(DevChannelConfig(path=tmp_path / "out.jsonl"))
        sms = channel.send_sms("+14155550100", "Your code is 123456", idempotency_key="k-sms")
        call = channel.place_call("+14155550100", "Your code is 1 2 3", idempotency_key="k-call")
        mail = channel.send_email("jane@example.com", "Hello", "Body", idempotency_key="k-mail")
        kinds = (channel.kind, sms.channel, call.channel, mail.channel)
        assert kinds == ("dev", "sms", "voice", "email")
        stored = read_messages(tmp_path / "out.jsonl")
        assert [(m["id"], m["channel"], m["to"]) for m in stored] == [
            (sms.provider_id, "sms", "+14155550100"),
            (call.provider_id, "voice", "+14155550100"),
            (mail.provider_id, "email", "jane@example.com"),
        ]
        assert stored[0]["body"] == "Your code is 123456"
        assert stored[2]["subject"] == "Hello"

    def test_send_same_key_twice_stores_once(self, tmp_path: Path) -> None:
        channel = DevChannel(DevChannelConfig(path=tmp_path / "out.jsonl"))
        first = channel.send_sms("+14155550100", "Your code is 111111", idempotency_key="case:1")
        again = channel.send_sms("+14155550100", "Your code is 111111", idempotency_key="case:1")
        other = channel.send_sms("+14155550100", "Your code is 222222", idempotency_key="case:2")
        assert first == again and other != first
        assert [m["body"] for m in read_messages(tmp_path / "out.jsonl")] == [
            "Your code is 111111", "Your code is 222222",
        ]

    def test_send_from_concurrent_processes_stores_each_key_once(self, tmp_path: Path) -> None:
        path = str(tmp_path / "out.jsonl")
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_write_many, args=(path, w)) for w in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        keys = [m["idempotency_key"] for m in read_messages(path)]
        assert sorted(keys) == sorted(f"case-1:{n}" for n in range(15))

    def test_read_messages_filters_by_destination_and_keeps_newest(self, tmp_path: Path) -> None:
        channel = DevChannel(DevChannelConfig(path=tmp_path / "out.jsonl"))
        for n in range(3):
            channel.send_sms("+14155550100", f"a{n}", idempotency_key=f"a{n}")
            channel.send_sms("+14155550199", f"b{n}", idempotency_key=f"b{n}")
        assert [m["body"] for m in read_messages(tmp_path / "out.jsonl", to="+14155550199")] == [
            "b0", "b1", "b2",
        ]
        newest = read_messages(tmp_path / "out.jsonl", to="+14155550100", limit=1)
        assert [m["body"] for m in newest] == ["a2"]
        assert read_messages(tmp_path / "missing.jsonl") == []

    def test_outbox_path_from_environment_and_private_mode(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        target = tmp_path / "nested" / "dev.jsonl"
        monkeypatch.setenv("REKEY_DEV_OUTBOX", str(target))
        DevChannel().send_email("jane@example.com", "s", "b", idempotency_key="k")
        assert [m["to"] for m in read_messages()] == ["jane@example.com"]
        assert stat.S_IMODE(target.stat().st_mode) == 0o600

    def test_read_messages_skips_torn_line(self, tmp_path: Path) -> None:
        path = tmp_path / "out.jsonl"
        DevChannel(DevChannelConfig(path=path)).send_sms("+14155550100", "x", idempotency_key="1")
        with open(path, "a") as handle:
            handle.write('{"id": "torn\n')
        DevChannel(DevChannelConfig(path=path)).send_sms("+14155550100", "y", idempotency_key="2")
        assert [m["body"] for m in read_messages(path)] == ["x", "y"]
