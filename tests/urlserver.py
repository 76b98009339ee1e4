"""A misbehaving HTTP server on 127.0.0.1 for the download tests (tests/test_urls.py).

The server answers by path from a route table (``UrlServer.routes``: path -> behaviour) that each test
fills with exactly what it needs, and counts the requests of every path (thread-safe), so a test can say
what was fetched and how often. It speaks HTTP/1.0 (one request per connection, no keep-alive), so a
request count is a connection count and a closed socket is always a fresh failure.

Behaviours:

* ``Body(data, content_type)``: 200 with the bytes (``delay`` seconds before answering; ``length=False``
  sends no Content-Length, the body then ends when the connection closes).
* ``Status(code, headers)``: that status with a short text body (404, 410, 500, 429 + Retry-After ...).
* ``FailFirst(times, fail, then)``: ``fail`` for the first ``times`` requests of the path, then ``then``.
* ``Redirect(location)``: 302 to ``location`` (a path of this server or a whole URL).
* ``Stall(seconds, sent)``: sends nothing (or the status line, headers and ``sent`` bytes of a longer
  body) and waits ``seconds`` (or until the server stops) before closing.
* ``CutShort(data, announced)``: 200 with Content-Length ``announced``, then ``data`` (shorter) and close.
* ``Reset()``: reads the request and resets the connection (SO_LINGER 0, close) without answering.

A path with no route answers 404 (and is counted too).
"""
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Behaviour:
    def serve(self, handler: "_Handler", number: int) -> None:
        """Answer ``handler``'s request, the ``number``-th (1-based) of its path."""
        raise NotImplementedError


def _answer(handler: "_Handler", code: int, body: bytes, headers: dict, length: bool = True) -> None:
    handler.send_response(code)
    for name, value in headers.items():
        handler.send_header(name, value)
    if length:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@dataclass
class Body(Behaviour):
    data: bytes
    content_type: str = "image/jpeg"
    delay: float = 0.0
    length: bool = True

    def serve(self, handler, number):
        if self.delay:
            handler.owner.closing.wait(self.delay)
        _answer(handler, 200, self.data, {"Content-Type": self.content_type}, self.length)


@dataclass
class Status(Behaviour):
    code: int
    headers: dict = field(default_factory=dict)
    delay: float = 0.0

    def serve(self, handler, number):
        if self.delay:
            handler.owner.closing.wait(self.delay)
        _answer(handler, self.code, f"status {self.code}\n".encode(), {"Content-Type": "text/plain", **self.headers})


@dataclass
class FailFirst(Behaviour):
    times: int
    fail: Behaviour
    then: Behaviour

    def serve(self, handler, number):
        (self.fail if number <= self.times else self.then).serve(handler, number)


@dataclass
class Redirect(Behaviour):
    location: str
    code: int = 302

    def serve(self, handler, number):
        _answer(handler, self.code, b"", {"Location": self.location})


@dataclass
class Stall(Behaviour):
    seconds: float
    sent: bytes | None = None  # None: not even a status line

    def serve(self, handler, number):
        if self.sent is not None:
            handler.send_response(200)
            handler.send_header("Content-Type", "image/jpeg")
            handler.send_header("Content-Length", str(2 * len(self.sent) + 10))
            handler.end_headers()
            handler.wfile.write(self.sent)
            handler.wfile.flush()
        handler.owner.closing.wait(self.seconds)


@dataclass
class CutShort(Behaviour):
    data: bytes
    announced: int

    def serve(self, handler, number):
        assert self.announced > len(self.data)
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(self.announced))
        handler.end_headers()
        handler.wfile.write(self.data)


@dataclass
class Reset(Behaviour):
    def serve(self, handler, number):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    owner: "UrlServer"

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        path = urlsplit(self.path).path
        number = self.owner.hit(path)
        self.owner.routes.get(path, Status(404)).serve(self, number)

    def log_message(self, format, *args):  # quiet
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a download opens dozens of connections at once: none waits for a SYN retry
    owner: "UrlServer"

    def handle_error(self, request, client_address):
        import sys

        error = sys.exc_info()[1]
        # a client that gave up (timeout, size cap) closes its end while the body is being sent
        if not isinstance(error, OSError):
            self.owner.errors.append(repr(error))


class UrlServer:
    """The server; ``with UrlServer() as server:`` or ``start()``/``stop()``."""

    def __init__(self):
        self.routes: dict[str, Behaviour] = {}
        self.errors: list[str] = []  # exceptions in a handler other than a client hanging up
        self.closing = threading.Event()
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "UrlServer":
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="urlserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.closing.set()  # stalled and delayed answers end now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> "UrlServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, behaviour: Behaviour) -> str:
        """Serve ``behaviour`` at ``path``; its URL."""
        self.routes[path] = behaviour
        return self.url(path)

    def hit(self, path: str) -> int:
        with self._lock:
            self._counts[path] += 1
            return self._counts[path]

    def count(self, path: str) -> int:
        with self._lock:
            return self._counts[path]

    def counts(self) -> dict[str, int]:
        """Requests so far per path (paths asked at least once)."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
