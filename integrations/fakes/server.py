"""A small scriptable HTTP server on 127.0.0.1 that the vendor fakes build on.

A fake records every request, answers with the vendor's documented shapes, and can be told
how to answer the next requests: `fake.script([500, Reply.hang(2.0), 200])`.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `status=None` (or a 2xx without a body) answers as the vendor
    would; any other status, or a 2xx with a body, is sent as given without processing.
    `delay` holds the answer that long after processing: the ambiguous-timeout case."""

    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """Process the request, then answer only after `seconds` (past the client's timeout)."""
        return cls(delay=seconds)

    @classmethod
    def rate_limited(cls, retry_after: str = "7") -> Reply:
        """429 with a Retry-After header."""
        return cls(status=429, headers={"Retry-After": retry_after},
                   body={"error": "TooManyRequests"})

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        """A redirect the client must not follow."""
        return cls(status=status, headers={"Location": location})


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def basic_auth(self) -> tuple[str, str] | None:
        """The (user, password) of a Basic Authorization header."""
        value = self.headers.get("authorization", "")
        if not value.lower().startswith("basic "):
            return None
        user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        return user, password


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeServer:
    """Base of the fakes: subclasses implement `handle(request) -> Answer`."""

    def __init__(self, *, tls: ssl.SSLContext | None = None):
        self.requests: list[RecordedRequest] = []
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tls = tls
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:43121."""
        assert self._server is not None, "start() the fake first"
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def script(self, replies: Iterable[Reply | int]) -> Self:
        """Answer the next requests with these, in order; then answer normally again."""
        with self._lock:
            self._script.extend(r if isinstance(r, Reply) else Reply(status=r) for r in replies)
        return self

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 in a daemon thread."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and release any request held by a scripted hang."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def handle(self, request: RecordedRequest) -> Answer:
        """The vendor's answer to an unscripted request."""
        raise NotImplementedError

    def _respond(self, request: RecordedRequest) -> tuple[Answer, float]:
        with self._lock:
            self.requests.append(request)
            reply = self._script.pop(0) if self._script else Reply()
        if reply.status is None or (200 <= reply.status < 300 and reply.body is None):
            answer = self.handle(request)
            answer.headers.update(reply.headers)
            return answer, reply.delay
        body = reply.body if reply.body is not None else {"error": f"scripted {reply.status}"}
        return Answer(reply.status, body, dict(reply.headers)), reply.delay


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = RecordedRequest(
                method=self.command, path=parts.path, query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()}, body=body,
            )
            answer, delay = fake._respond(request)
            if delay and fake._stopping.wait(delay):
                return
            payload = b"" if answer.body is None else (
                answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
            )
            try:
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if payload and "content-type" not in {k.lower() for k in answer.headers}:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timed out): that is what a hang is for

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean; requests are in `fake.requests`

    return Handler
