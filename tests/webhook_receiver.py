"""A tiny webhook receiver for the tests: an HTTP server on 127.0.0.1 in a thread that answers with
scripted statuses (then 200) and records every request it got (arrival time, path, headers, body)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    at: float  # time.time() at arrival
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    url: str  # base URL, e.g. http://127.0.0.1:PORT
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    delay_seconds: float = 0.0  # wait this long before answering (timeouts)
    redirect_to: str | None = None  # the Location of 3xx answers
    on_request: Callable[[], None] | None = None  # run before answering (e.g. delete the endpoint)
    requests: list[Received] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            self.arrived.wait(0.05)
            self.arrived.clear()
        assert len(self.requests) >= count, f"got {len(self.requests)} of {count} webhook requests"
        return list(self.requests)


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {key.lower(): value for key, value in self.headers.items()}
            receiver.requests.append(Received(time.time(), self.path, headers, body))
            receiver.arrived.set()
            if receiver.on_request is not None:
                receiver.on_request()
            if receiver.delay_seconds:
                time.sleep(receiver.delay_seconds)
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            self.send_response(status)
            if 300 <= status < 400 and receiver.redirect_to:
                self.send_header("Location", receiver.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence access logs
            return

    return Handler


@contextmanager
def running_receiver(**options: object) -> Iterator[Receiver]:
    receiver = Receiver(url="", **options)  # type: ignore[arg-type]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(receiver))
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
