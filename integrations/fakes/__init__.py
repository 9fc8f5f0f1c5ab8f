"""Local fake servers that speak the vendors' documented APIs, for unit and end-to-end tests.

    with FakeZendesk() as zendesk:
        zendesk.script([500, Reply.hang(2.0), Reply.rate_limited("7")])
        ...  # point the client at zendesk.url, allow-list 127.0.0.1
        assert zendesk.comments["123"]
"""

from integrations.fakes.callbacks import CallbackReceiver
from integrations.fakes.server import FakeServer, RecordedRequest, Reply
from integrations.fakes.ticketing import FakeJira, FakeZendesk
from integrations.fakes.twilio import FakeTwilio

__all__ = [
    "CallbackReceiver",
    "FakeJira",
    "FakeServer",
    "FakeTwilio",
    "FakeZendesk",
    "RecordedRequest",
    "Reply",
]
